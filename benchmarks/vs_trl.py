"""``gymbox train`` next to TRL's ``GRPOTrainer`` with the gymbox adapter, on the same run.

Same env, model, group size, steps, sampling, optimiser and clip range; one GRPO group per
step; no warm-up, no KL. Each side runs in a subprocess of its own (so peak RSS is its own) and
prints, side by side:

* episodes/s and model tokens/s over the training loop (model loading and evaluation left out;
  model tokens are the ones the policy sampled, not the prompt or the env's replies);
* peak RSS of the process;
* held-out accuracy after training: the same greedy evaluation (``gymbox.agents.train.evaluate``
  on the same held-out seeds) of each trained model.

The gymbox side is ``gymbox.agents.train.train`` (what ``gymbox train`` runs); its loop is timed
by wrapping ``run_loop``. The TRL side is ``GRPOTrainer(rollout_func=GymboxRollout(...))``,
timed around ``trainer.train()``. Both play episodes through the same gymbox rollout code and
sandboxes, so the difference is the trainer: TRL's padded forward passes, its optimiser step
and its bookkeeping against gymbox's.

Usage: ``python benchmarks/vs_trl.py [--env gymbox/PythonCalc-v0] [--model DIR] [--steps 2]
[--group-size 4] [--eval-episodes 8] [--rounds 2]`` (needs ``pip install trl==1.16.0``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="gymbox/PythonCalc-v0")
    parser.add_argument("--model", help="transformers model dir (default: embedded SmolLM2)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--max-turns", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=768)
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument("--eval-episodes", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the pair this many times, alternating which side goes first")
    parser.add_argument("--start-with", choices=["gymbox", "trl"], default="gymbox",
                        help="the side that runs first in the first round")
    parser.add_argument("--side", choices=["gymbox", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def say(message: str) -> None:
    print(f"[vs_trl {time.strftime('%H:%M:%S')}] {message}", flush=True)


def train_config(args: argparse.Namespace, run_dir: str):
    from gymbox.agents.run_config import TrainConfig
    from gymbox.config import from_mapping

    return from_mapping(TrainConfig, {
        "env": args.env, "run_dir": run_dir, "policy": {"model": args.model},
        "loop": {"steps": args.steps, "groups_per_step": 1, "group_size": args.group_size,
                 "seed": args.seed},
        "budget": {"max_turns": args.max_turns, "max_tokens": args.max_tokens},
        "sampling": {"temperature": 1.0, "max_new_tokens": args.max_new_tokens},
        "optim": {"learning_rate": args.learning_rate, "micro_batch_size": args.group_size},
        "eval": {"episodes": args.eval_episodes},
    })


def run_gymbox(args: argparse.Namespace, run_dir: str) -> dict[str, Any]:
    import importlib

    train_module = importlib.import_module("gymbox.agents.train")  # the module, not train()

    counts = {"episodes": 0, "model_tokens": 0, "valid": 0}
    loop_s = [0.0]
    real_loop = train_module.run_loop

    async def timed_loop(**kwargs: Any) -> int:
        on_step = kwargs["on_step"]

        def counting(report: Any) -> None:
            for group in report.groups:
                for t in group.trajectories:
                    counts["episodes"] += 1
                    counts["valid"] += t.valid
                    counts["model_tokens"] += t.model_tokens
            on_step(report)

        started = time.perf_counter()
        try:
            return await real_loop(**{**kwargs, "on_step": counting})
        finally:
            loop_s[0] = time.perf_counter() - started

    train_module.run_loop = timed_loop
    summary = train_module.train(train_config(args, run_dir), evaluate_before=False)
    return {**counts, "loop_s": loop_s[0], "accuracy": summary.after.accuracy,
            "eval_valid": summary.after.valid_fraction}


def run_trl(args: argparse.Namespace, run_dir: str) -> dict[str, Any]:
    import asyncio

    from trl import GRPOConfig, GRPOTrainer

    from gymbox.agents.models import resolve_model_dir
    from gymbox.agents.policy import TransformersPolicy
    from gymbox.agents.train import env_supply, evaluate
    from gymbox.integrations.trl import GymboxRollout

    config = train_config(args, run_dir)
    model_dir = args.model or str(resolve_model_dir())
    counts = {"episodes": 0, "model_tokens": 0, "valid": 0}
    with GymboxRollout(args.env, max_turns=args.max_turns, max_tokens=args.max_tokens,
                       max_new_tokens=args.max_new_tokens, temperature=1.0,
                       pool_size=min(16, args.group_size)) as rollout:

        def counting(prompts: list[Any], trainer: Any) -> dict[str, list[Any]]:
            out = rollout(prompts, trainer)
            counts["episodes"] += len(prompts)
            counts["valid"] += sum(s != "infra_failed" for s in out["gymbox_status"])
            counts["model_tokens"] += sum(sum(mask) for mask in out["env_mask"])
            return out

        trl_args = GRPOConfig(
            output_dir=str(Path(run_dir) / "trl"), per_device_train_batch_size=args.group_size,
            num_generations=args.group_size, max_steps=args.steps,
            learning_rate=args.learning_rate, lr_scheduler_type="constant", warmup_steps=0,
            temperature=1.0, beta=0.0, epsilon=0.2, epsilon_high=0.28, loss_type="dapo",
            max_grad_norm=1.0, weight_decay=0.0, logging_steps=1, report_to=[], use_cpu=True,
            save_strategy="no", seed=args.seed, max_completion_length=args.max_new_tokens,
        )
        trainer = GRPOTrainer(model=model_dir, args=trl_args, rollout_func=counting,
                              reward_funcs=[rollout.reward_func],
                              train_dataset=rollout.dataset(args.steps * 4, first_seed=args.seed))
        started = time.perf_counter()
        trainer.train()
        loop_s = time.perf_counter() - started

    policy = TransformersPolicy(trainer.model, trainer.processing_class)

    async def held_out():
        async with env_supply(config, episodes_at_once=args.eval_episodes) as supply:
            return await evaluate(policy, supply.make, config.eval, max_turns=args.max_turns,
                                  max_tokens=args.max_tokens, max_new_tokens=args.max_new_tokens)

    result = asyncio.run(held_out())
    return {**counts, "loop_s": loop_s, "accuracy": result.accuracy,
            "eval_valid": result.valid_fraction}


def child(args: argparse.Namespace) -> None:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    with tempfile.TemporaryDirectory(prefix=f"vs_trl-{args.side}-") as run_dir:
        result = (run_gymbox if args.side == "gymbox" else run_trl)(args, run_dir)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(args.out).write_text(json.dumps(result))


def run_side(side: str, argv: list[str], scratch: str) -> dict[str, Any]:
    out = Path(scratch) / f"{side}.json"
    load = os.getloadavg()[0]
    say(f"{side}: training in a subprocess (load {load:.1f})")
    subprocess.run([sys.executable, __file__, *argv, "--side", side, "--out", str(out)],
                   check=True)
    result = json.loads(out.read_text())
    result["load"] = (load + os.getloadavg()[0]) / 2
    say(f"{side}: {result['loop_s']:.0f} s of training (load {os.getloadavg()[0]:.1f})")
    return result


def print_table(results: dict[str, dict[str, Any]]) -> None:
    print(f"{'':24}{'gymbox train':>16}{'TRL GRPOTrainer':>18}")
    rows = [
        ("episodes/s", lambda r: f"{r['episodes'] / r['loop_s']:.3f}"),
        ("model tokens/s", lambda r: f"{r['model_tokens'] / r['loop_s']:.1f}"),
        ("training loop (s)", lambda r: f"{r['loop_s']:.1f}"),
        ("episodes (valid)", lambda r: f"{r['episodes']} ({r['valid']})"),
        ("peak RSS (MiB)", lambda r: f"{r['peak_rss_mib']:.0f}"),
        ("held-out accuracy", lambda r: f"{r['accuracy']:.3f}"),
        ("machine load (1 min)", lambda r: f"{r['load']:.1f}"),
    ]
    for name, cell in rows:
        print(f"{name:24}{cell(results['gymbox']):>16}{cell(results['trl']):>18}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.side:
        child(args)
        return
    own = list(argv if argv is not None else sys.argv[1:])
    say(f"env {args.env}, model {args.model or 'embedded SmolLM2-135M'}, {args.steps} steps of "
        f"one group of {args.group_size}, {args.eval_episodes} held-out episodes, "
        f"{args.rounds} round(s)")
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            # Alternate the order, so a load that drifts during the run favours neither side.
            first = args.start_with if round_ % 2 == 0 else {"gymbox": "trl", "trl": "gymbox"}[
                args.start_with]
            order = (first, "trl" if first == "gymbox" else "gymbox")
            results = {side: run_side(side, own, scratch) for side in order}
            print(f"\nround {round_ + 1} of {args.rounds} ({' first, then '.join(order)})")
            print_table(results)
            print(flush=True)


if __name__ == "__main__":
    main()
