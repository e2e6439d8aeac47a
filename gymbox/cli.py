"""The ``gymbox`` command.

Every failure the user can fix is a :class:`~gymbox.runtime.errors.GymboxError` whose message
says what to do; :func:`main` prints it on one line and exits non-zero, without a traceback.
"""

from __future__ import annotations

import argparse
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
    console.print(
        f"backend  local fallback ({local}) — NOT a security boundary; "
        "run untrusted agent code only with an engine"
    )
    console.print(f"fix      {engine.START_HINT}")
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gymbox", description=__doc__.splitlines()[0])
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except GymboxError as exc:
        err_console.print(f"gymbox: error: {exc}")
        return 1
    except KeyboardInterrupt:
        err_console.print("gymbox: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
