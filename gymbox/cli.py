"""The ``gymbox`` command.

Every failure the user can fix is a :class:`~gymbox.runtime.errors.GymboxError` whose message
says what to do; :func:`main` prints it on one line and exits non-zero, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from rich.console import Console
from rich.table import Table

from gymbox.runtime import engine, image
from gymbox.runtime.errors import GymboxError

# soft_wrap: an error must stay one line, however narrow the terminal.
console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line that says where help is."""

    def error(self, message: str) -> NoReturn:
        err_console.print(f"{self.prog}: error: {message} (see `{self.prog} --help`)")
        raise SystemExit(2)


def cmd_doctor(args: argparse.Namespace) -> int:
    """Say which engine and backend gymbox will use, and what to do when something is missing."""
    found = engine.probe()
    if found.reachable:
        console.print(f"engine   ok: Docker {found.server_version} at {found.address}")
        console.print("backend  docker (isolated containers, network none)")
        client = engine.connect()
        try:
            image.require_image(client, args.image)
        except GymboxError as exc:
            console.print(f"image    missing: {exc}")
            return 1
        finally:
            client.close()
        console.print(f"image    ok: {args.image}")
        return 0
    bwrap = shutil.which("bwrap")
    local = "bubblewrap" if bwrap else "a plain host subprocess"
    console.print(f"engine   [red]unreachable[/]: no Docker engine answers at {found.address}")
    console.print(f"         ({found.error})")
    console.print("backend  none: gymbox will not run sandboxes (EngineUnavailable); it never "
                  "falls back to the host on its own")
    console.print(f"fix      {engine.START_HINT}")
    console.print(f"         or ask for the local backend by name, GYMBOX_BACKEND=local ({local}"
                  "): NOT a security boundary, for trusted code only")
    return 1


def cmd_image_build(args: argparse.Namespace) -> int:
    """Build the sandbox image (Debian packages by default, or FROM --base), or reuse it."""
    client = engine.connect()
    say = lambda msg: console.print(f"[dim]·[/] {msg}")  # noqa: E731
    if args.base:
        tag = image.build_from_base(client, args.base, pull=args.pull, say=say)
    else:
        if args.pull:
            raise GymboxError("--pull only applies with --base IMAGE")
        tag = image.ensure_image(client, image.ImageRecipe(suite=args.suite), say=say)
    console.print(f"image {tag} (also {image.DEFAULT_IMAGE})")
    return 0


def cmd_image_list(args: argparse.Namespace) -> int:
    """List the gymbox images on the engine."""
    infos = image.list_images(engine.connect())
    if not infos:
        console.print("no gymbox images; run `gymbox image build`")
        return 0
    table = Table("tags", "id", "size (MB)", "created")
    for info in infos:
        table.add_row(", ".join(info.tags), info.image_id, f"{info.size_mb:.0f}", info.created)
    console.print(table)
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    """Remove gymbox containers whose owner process has exited (or all of them with --all), on
    the local engine, or on every engine of a run config's ``[scale]`` section."""
    from gymbox.runtime.cleanup import reap

    if args.config is not None:
        from gymbox.agents.run_config import TrainConfig
        from gymbox.config import load_config

        scale = load_config(TrainConfig, args.config, []).scale
        if not scale.enabled:
            raise GymboxError(f"{args.config} has no [scale] section with a ray_address; "
                              "run `gymbox gc` without --config for the local engine")
        from gymbox.distributed import gc_engines  # the [ray] extra, only for scaled-out runs

        removed = gc_engines(scale, everything=args.all)
        for engine, items in removed.items():
            for item in items:
                console.print(f"{engine}: removed {item}")
        console.print(f"{sum(map(len, removed.values()))} container(s) removed on "
                      f"{len(removed)} engine(s)")
        return 0
    reaped = reap(everything=args.all)
    for item in reaped:
        console.print(f"removed {item.container_id[:12]}: {item.reason}")
    console.print(f"{len(reaped)} container(s) removed")
    return 0


def cmd_play(args: argparse.Namespace) -> int:
    """Play an env by hand: you are the agent."""
    from gymbox.envs import play
    from gymbox.envs.registry import require_registered

    info = play(require_registered(args.env_id), seed=args.seed)
    return 0 if info.get("status") != "infra_failed" else 1


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve an env over the OpenEnv protocol until Ctrl-C (see docs/integrations.md)."""
    import asyncio

    try:
        from gymbox.integrations.openenv import GymboxServer
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("openenv"):
            raise
        raise GymboxError("`gymbox serve` needs openenv-core: pip install openenv-core==0.3.0"
                          ) from exc
    try:
        server = GymboxServer(args.env_id, host=args.host, port=args.port,
                              max_sessions=args.max_sessions, pool_size=args.pool_size)
    except ValueError as exc:
        raise GymboxError(str(exc)) from exc
    asyncio.run(server.serve(on_ready=lambda url: console.print(
        f"serving {server.env_id} on {url} (OpenEnv protocol, WebSocket {url}/ws); "
        "Ctrl-C stops")))
    if server.stopped_by is not None:
        err_console.print(f"gymbox: stopped by {server.stopped_by.name}; sandboxes removed")
        return 128 + server.stopped_by  # the shell's convention: 130 for Ctrl-C, as `gymbox train`
    return 0


_FLAGS = (("env", "env"), ("model", "policy.model"), ("run_dir", "run_dir"),
          ("steps", "loop.steps"), ("seed", "loop.seed"), ("max_staleness", "loop.max_staleness"))


def _train_config(args: argparse.Namespace, base=None):
    from gymbox.agents.run_config import TrainConfig
    from gymbox.config import apply_overrides, load_config
    from gymbox.envs.registry import require_registered

    overrides = list(args.set or [])
    for flag, key in _FLAGS:
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    if base is not None:
        config = apply_overrides(base, overrides)
    else:
        config = load_config(TrainConfig, args.config, overrides)
    require_registered(config.env)  # before a model is loaded: a typo costs nothing
    return config


def cmd_train(args: argparse.Namespace) -> int:
    """Train a policy on an env with GRPO-family updates; see `gymbox train --help`."""
    if args.explain_config:
        return _explain_config()
    from gymbox.agents.train import train

    summary = train(_train_config(args), console=console, resume=args.resume,
                    evaluate_before=not args.no_eval)
    return 130 if summary.interrupted else 0


def _explain_config() -> int:
    """Every run-config key with its default and its docstring, one per line."""
    from gymbox.agents.run_config import TrainConfig
    from gymbox.config import explain

    for key, default, doc in explain(TrainConfig):
        console.print(f"{key} = {default}" + (f"    # {doc}" if doc else ""), markup=False)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Held-out accuracy and pass@k of a model (or a training checkpoint, with its run's env
    and settings unless --config is given)."""
    from gymbox.agents.train import checkpoint_config, evaluate_config

    base = None
    if args.checkpoint is not None and args.config is None:
        from pathlib import Path

        if not (Path(args.checkpoint) / "trainer.pt").is_file():
            raise GymboxError(f"{args.checkpoint} is not a checkpoint (no trainer.pt in it)")
        base = checkpoint_config(args.checkpoint)
    config = _train_config(args, base)
    result = evaluate_config(config, checkpoint=args.checkpoint)
    console.print(
        f"{config.env}: accuracy {result.accuracy:.3f}, pass@{result.k} {result.pass_at_k:.3f} "
        f"on {result.episodes} held-out tasks (valid {result.valid_fraction:.0%})"
    )
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Draw a run's metrics as a PNG."""
    from gymbox.agents.metrics import plot_metrics

    try:
        out = plot_metrics(args.run_dir, args.output)
    except (FileNotFoundError, ValueError) as exc:
        raise GymboxError(str(exc)) from exc
    console.print(f"wrote {out}")
    return 0


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="a TOML or YAML config")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append",
                        help="override a config value, e.g. --set optim.learning_rate=1e-5")
    parser.add_argument("--env", help="a registered env id, or MODULE:ID to import MODULE first "
                        "(default: gymbox/Calculator-v0)")
    parser.add_argument("--model", help="a transformers model dir or a GGUF file "
                        "(default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--run-dir", dest="run_dir", help="where the run is written")
    parser.add_argument("--seed", type=int)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gymbox", description="RL for LLM agents in sandboxed tool environments.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    doctor = commands.add_parser("doctor", help="check the engine, the backend and the image")
    doctor.add_argument("--image", default=image.DEFAULT_IMAGE, help="image to look for")
    doctor.set_defaults(run=cmd_doctor)

    images = commands.add_parser("image", help="build or list the sandbox image")
    image_commands = images.add_subparsers(dest="image_command", required=True,
                                           parser_class=_Parser)
    build = image_commands.add_parser("build", help="build (or reuse) the sandbox image")
    build.add_argument("--suite", default=image.ImageRecipe().suite,
                       help="Debian release to bootstrap (default: %(default)s)")
    build.add_argument("--base", metavar="IMAGE",
                       help="build FROM this image instead of Debian packages")
    build.add_argument("--pull", action="store_true",
                       help="allow pulling --base from its registry (never done otherwise)")
    build.set_defaults(run=cmd_image_build)
    listing = image_commands.add_parser("list", help="list gymbox images")
    listing.set_defaults(run=cmd_image_list)

    gc = commands.add_parser("gc", help="remove containers that crashed runs left behind")
    gc.add_argument("--all", action="store_true",
                    help="remove every gymbox container, live runs' included")
    gc.add_argument("--config", metavar="FILE",
                    help="a run config whose [scale] section lists the engines to clean")
    gc.set_defaults(run=cmd_gc)

    play = commands.add_parser("play", help="play an env by hand, as the agent")
    play.add_argument("env_id", help="a registered id (gymbox/PythonMath-v0), or MODULE:ID to "
                      "import MODULE first (examples.sql_env:examples/ShopSQL-v0)")
    play.add_argument("--seed", type=int, help="task seed")
    play.set_defaults(run=cmd_play)

    serve = commands.add_parser("serve", help="serve an env over the OpenEnv protocol")
    serve.add_argument("env_id", help="e.g. gymbox/PythonCalc-v0, or module:Env-v0")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="port (%(default)s; 0: any free)")
    serve.add_argument("--max-sessions", dest="max_sessions", type=int, default=8,
                       help="concurrent client sessions (%(default)s)")
    serve.add_argument("--pool-size", dest="pool_size", type=int, default=4,
                       help="warm sandboxes (%(default)s)")
    serve.set_defaults(run=cmd_serve)

    train = commands.add_parser("train", help="train a policy with RL")
    _add_run_options(train)
    train.add_argument("--steps", type=int, help="optimiser steps (loop.steps)")
    train.add_argument("--max-staleness", dest="max_staleness", type=int,
                       help="0 = synchronous on-policy; more overlaps sampling and updates")
    train.add_argument("--explain-config", dest="explain_config", action="store_true",
                       help="print every config key with its default and meaning, then exit")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    train.add_argument("--no-eval", action="store_true", help="skip the evaluation before")
    train.set_defaults(run=cmd_train)

    evaluate = commands.add_parser("eval", help="held-out accuracy and pass@k")
    _add_run_options(evaluate)
    evaluate.add_argument("--checkpoint", metavar="DIR",
                          help="a checkpoints/step-N directory; its run's env and settings are "
                          "used unless --config is given")
    evaluate.set_defaults(run=cmd_eval)

    plot = commands.add_parser("plot", help="draw a run's metrics as a PNG")
    plot.add_argument("run_dir", help="a run directory (holds metrics.jsonl)")
    plot.add_argument("-o", "--output", help="PNG path (default: RUN_DIR/metrics.png)")
    plot.set_defaults(run=cmd_plot)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except GymboxError as exc:
        err_console.print(f"gymbox: error: {exc}", markup=False)  # messages name [sections]
        return 1
    except KeyboardInterrupt:
        err_console.print("gymbox: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
