"""Training throughput, and how long the policy sits idle waiting for slow envs, sync vs async.

Runs the real actor-learner loop (``gymbox.agents.loop.run_loop``: rollouts, GRPO advantages,
optimiser steps) twice on the same model, env and seed:

* **sync** (the baseline): one rollout worker, ``max_staleness=0`` — sampling, env steps and
  the update strictly alternate;
* **async**: two rollout workers, ``max_staleness=1``, sampling from a weight copy — one
  group's env waits and the update overlap another group's sampling.

The env is Calculator-v0 with a fixed delay added to every step, standing in for a slow
sandboxed tool. For each mode it prints rollout+update tokens/s (every token of every consumed
trajectory, over the loop's wall time) and the share of wall time the generator was idle.
Target: async idles at most half as much as sync.

Usage: ``python benchmarks/train_throughput.py [--model DIR_OR_GGUF] [--steps 2] [--delay 1.0]``
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import time

import torch

from gymbox.agents.loop import Group, LoopConfig, StepReport, SyncedPolicy, run_loop
from gymbox.agents.policy import SamplingParams, TransformersPolicy
from gymbox.agents.rollout import TURN_STOPS, Budget
from gymbox.agents.trainer import PolicyTrainer, TrainerConfig
from gymbox.envs.builtin.calculator import Calculator
from gymbox.rewards.advantages import GRPO


class SlowCalculator(Calculator):
    """Calculator whose every step first waits ``delay`` seconds, like a slow sandbox call."""

    delay = 1.0

    async def astep(self, action: str):
        await asyncio.sleep(self.delay)
        return await super().astep(action)


def score(groups: list[Group], step: int):
    del step
    flat = [t for g in groups for t in g.trajectories]
    rewards = torch.tensor([t.reward.value for t in flat], dtype=torch.float32)
    valid = torch.tensor([t.valid for t in flat])
    ids = torch.tensor([g.index for g in groups for _ in g.trajectories])
    return GRPO()(rewards, valid, ids)


def measure(base: TransformersPolicy, *, asynchronous: bool, args) -> tuple[float, float, float]:
    """(tokens/s, idle share, wall s) of one loop run from a fresh copy of ``base``."""
    learner = TransformersPolicy(copy.deepcopy(base.model), base.tokenizer)
    sampler = learner
    if asynchronous:
        sampler = TransformersPolicy(copy.deepcopy(learner.model), learner.tokenizer)
    trainer = PolicyTrainer(learner.model, TrainerConfig(learning_rate=1e-6, micro_batch_size=4))
    config = LoopConfig(
        steps=args.steps, groups_per_step=2, group_size=args.group_size,
        max_staleness=1 if asynchronous else 0, rollout_workers=2 if asynchronous else 1, seed=0,
    )
    reports: list[StepReport] = []
    start = time.perf_counter()
    asyncio.run(run_loop(
        generator=SyncedPolicy(sampler), trainer=trainer,
        make_env=lambda: SlowCalculator(max_turns=args.max_turns), score=score, config=config,
        sampling=SamplingParams(max_new_tokens=args.new_tokens, stop=TURN_STOPS, seed=0),
        budget=Budget(max_tokens=1024), on_step=reports.append,
    ))
    wall = time.perf_counter() - start
    tokens = sum(len(t.token_ids) for r in reports for g in r.groups for t in g.trajectories)
    idle = sum(r.generator_idle_s for r in reports) / sum(r.wall_s for r in reports)
    return tokens / wall, idle, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--max-turns", type=int, default=2)
    parser.add_argument("--delay", type=float, default=1.0, help="seconds added to each env step")
    args = parser.parse_args()
    SlowCalculator.delay = args.delay
    base = TransformersPolicy.load(args.model)
    print(f"torch threads: {torch.get_num_threads()}, env delay {args.delay}s per step, "
          f"{args.steps} steps x 2 groups x {args.group_size} episodes")
    results = {mode: measure(base, asynchronous=mode == "async", args=args)
               for mode in ("sync", "async")}
    for mode, (tokens_per_s, idle, wall) in results.items():
        label = "baseline, sync" if mode == "sync" else "async"
        print(f"  {label:15s} {tokens_per_s:7.1f} tokens/s   generator idle {idle:6.1%} of "
              f"{wall:.0f} s")
    ratio = results["async"][1] / max(results["sync"][1], 1e-9)
    print(f"async idle / sync idle = {ratio:.2f} (target <= 0.50)")


if __name__ == "__main__":
    main()
