"""What both experiments share: one training arm on the real loop, statistics, progress lines.

An *arm* is one training run: a warmed-up policy, an env factory, a scorer (groups →
:class:`~gymbox.rewards.mix.MixedAdvantages`), run for ``steps`` optimiser steps of the real
:func:`gymbox.agents.loop.run_loop` with :class:`gymbox.agents.trainer.PolicyTrainer`, and
evaluated greedily on held-out seeds before the first step and every ``eval_every`` steps. It
returns one row per step (the experiment's own metrics of the step's groups) and one row per
evaluation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gymbox.agents.groups import GroupFailurePolicy
from gymbox.agents.loop import Group, LoopConfig, StepReport, SyncedPolicy, run_loop
from gymbox.agents.loss import ClipRange
from gymbox.agents.memory import tune_malloc
from gymbox.agents.policy import SamplingParams, TransformersPolicy
from gymbox.agents.rollout import TURN_STOPS, Budget, Trajectory, rollout
from gymbox.agents.trainer import PolicyTrainer, TrainerConfig
from gymbox.envs.core import ToolEnv
from gymbox.rewards.advantages import Advantages

EVAL_FIRST_SEED = 1_000_000_000
"""Held-out task seeds start here; training draws ``seed · 1_000_003 + group``."""


@dataclass(frozen=True)
class Schedule:
    """The shape of one arm's training."""

    steps: int = 20
    groups_per_step: int = 2
    group_size: int = 8
    eval_every: int = 5
    eval_episodes: int = 32
    eval_temperature: float = 0.0
    learning_rate: float = 1e-3
    max_new_tokens: int = 48
    max_turns: int = 2
    max_tokens: int = 1024

    @property
    def budget(self) -> Budget:
        return Budget(max_tokens=self.max_tokens, max_turns=self.max_turns)


def say(message: str) -> None:
    """A progress line that reads well in a log file: time-stamped, flushed at once."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stdout, flush=True)


Evaluate = Callable[[list[Trajectory]], dict[str, float]]
"""The experiment's metrics of the held-out episodes."""
StepMetrics = Callable[[StepReport], dict[str, float]]
"""The experiment's metrics of one training step."""


async def held_out(policy: TransformersPolicy, make_env: Callable[[], ToolEnv],
                   schedule: Schedule) -> list[Trajectory]:
    """Episodes on the held-out seeds, greedy or sampled at ``schedule.eval_temperature``
    (with a fixed seed, so every evaluation draws alike)."""
    seeds = [EVAL_FIRST_SEED + i for i in range(schedule.eval_episodes)]
    greedy = SamplingParams(max_new_tokens=schedule.max_new_tokens,
                            temperature=schedule.eval_temperature, stop=TURN_STOPS,
                            seed=EVAL_FIRST_SEED)
    envs = [make_env() for _ in seeds]
    try:
        return await rollout(policy, envs, seeds=seeds, sampling=greedy, budget=schedule.budget)
    finally:
        for env in envs:
            await env.aclose()


async def evaluation(policy: TransformersPolicy, make_env: Callable[[], ToolEnv],
                     evaluate: Evaluate, schedule: Schedule, *, step: int = 0) -> dict[str, float]:
    """One evaluation row: ``evaluate``'s metrics of the held-out episodes, at ``step``."""
    return {"step": float(step), **evaluate(await held_out(policy, make_env, schedule))}


async def train_arm(
    *,
    label: str,
    policy: TransformersPolicy,
    make_env: Callable[[], ToolEnv],
    make_eval_env: Callable[[], ToolEnv],
    score: Callable[[Sequence[Group], int], Advantages],
    step_metrics: StepMetrics,
    evaluate: Evaluate,
    schedule: Schedule,
    seed: int,
    summary: Callable[[dict[str, float]], str],
    extra: Callable[[], dict[str, float]] = dict,
    group_failures: GroupFailurePolicy | None = None,
    start: dict[str, float] | None = None,
) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """Train ``policy`` in place for ``schedule.steps`` steps; returns (step rows, eval rows).

    ``summary`` turns a step row into the few numbers of its progress line; ``extra`` adds
    counters read after each step (recovery metrics...); ``group_failures`` goes to
    :func:`~gymbox.agents.loop.run_loop` (its default re-plays a failed member). ``start`` is
    the starting policy's :func:`evaluation` when the caller has it: arms that start from the
    same policy share it, since the evaluation samples with a fixed seed, so it is measured once
    rather than once per arm (each evaluation costs as much as a few training steps).
    """
    torch.manual_seed(seed)
    trainer = PolicyTrainer(policy.model, TrainerConfig(
        learning_rate=schedule.learning_rate, clip=ClipRange(0.2, 0.28), micro_batch_size=8))
    generator = SyncedPolicy(policy)
    sampling = SamplingParams(max_new_tokens=schedule.max_new_tokens, temperature=1.0,
                              stop=TURN_STOPS, seed=seed)
    steps: list[dict[str, float]] = []
    evals: list[dict[str, float]] = []
    started = time.perf_counter()

    def record(row: dict[str, float]) -> None:
        evals.append(row)
        say(f"{label} eval at step {row['step']:.0f}: "
            + "  ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "step"))

    async def evaluate_now(step: int) -> None:
        record(await evaluation(policy, make_eval_env, evaluate, schedule, step=step))

    def on_step(report: StepReport) -> None:
        row = {"step": float(report.step), **step_metrics(report), **extra(),
               "loss": report.update.loss, "wall_s": report.wall_s}
        steps.append(row)
        say(f"{label} step {report.step + 1}/{schedule.steps}: {summary(row)} "
            f"({time.perf_counter() - started:.0f}s)")

    if start is None:
        await evaluate_now(0)
    else:
        record(dict(start))
    done = 0
    while done < schedule.steps:
        chunk = min(schedule.eval_every, schedule.steps - done)
        config = LoopConfig(steps=chunk, groups_per_step=schedule.groups_per_step,
                            group_size=schedule.group_size, rollout_workers=1, seed=seed)
        done += await run_loop(generator=generator, trainer=trainer, make_env=make_env,
                               score=score, config=config, sampling=sampling,
                               budget=schedule.budget, on_step=on_step, first_step=done,
                               group_failures=group_failures)
        await evaluate_now(done)
    return steps, evals


def masked_mean(values: torch.Tensor, mask: Sequence[int]) -> float:
    """The mean of ``values`` over the model's tokens (``mask`` 1); 0 when there are none."""
    keep = torch.tensor(mask, dtype=torch.bool)
    return float(values[keep].mean()) if keep.any() else 0.0


def batch_entropy(trajectories: Sequence[Trajectory]) -> float:
    """The mean token entropy of the valid episodes' model tokens (0 when none is valid)."""
    values = [masked_mean(t.entropy, t.loss_mask) for t in trajectories if t.valid]
    return sum(values) / len(values) if values else 0.0


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """The mean and the half-width of its Student-t confidence interval (0 for one value)."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)


def curve(runs: Sequence[Sequence[dict[str, float]]], key: str) -> tuple[list[float], list[float],
                                                                           list[float]]:
    """Steps, mean and CI half-width over ``runs`` (one list of rows per seed) of ``key``."""
    by_step: dict[float, list[float]] = {}
    for rows in runs:
        for row in rows:
            if row.get(key) is not None and math.isfinite(row[key]):
                by_step.setdefault(row["step"], []).append(row[key])
    xs = sorted(by_step)
    stats = [mean_ci(by_step[x]) for x in xs]
    return xs, [m for m, _ in stats], [h for _, h in stats]


def fmt_ci(values: Sequence[float]) -> str:
    """``mean ± half-width``; a single run has no interval, so it prints the value alone."""
    mean, half = mean_ci(values)
    return f"{mean:.3f}" if len(values) < 2 else f"{mean:.3f} ± {half:.3f}"


def seeds_caption(n: int) -> str:
    """What a plot's curves are: one run, or the mean ± 95 % CI of ``n``."""
    return "1 seed" if n == 1 else f"{n} seeds, mean ± 95% CI"


def json_safe(value: Any) -> Any:
    """Rows as JSON: NaN becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def save_partial(args: Any, results: dict, started: float) -> None:
    """Write the runs finished so far to ``args.out/results.json`` (marked ``partial``), so that
    an experiment stopped early (a deadline, Ctrl-C) keeps every arm it finished."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    partial = {**results, "partial": True, "wall_s": time.perf_counter() - started}
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(json_safe(partial), indent=1))
    tmp.replace(out / "results.json")


def add_seed_options(parser: argparse.ArgumentParser) -> None:
    """``--seeds``/``--first-seed`` (which seeds run) and ``--jobs`` (how many at once)."""
    parser.add_argument("--seeds", type=int, default=3, help="how many seeds")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds run are first-seed ... first-seed + seeds - 1")
    parser.add_argument("--jobs", type=int, default=1,
                        help="seeds run at once, one process each (the arms of a seed run in "
                             "order); 2 uses both cores of a 2-core machine")


def seeds_of(args: Any) -> range:
    return range(args.first_seed, args.first_seed + args.seeds)


def _in_parallel(module: str, argv: Sequence[str], args: Any) -> dict:
    """Run each seed of ``args`` as ``python -m module argv --seeds 1 --first-seed k`` in its
    own process, ``args.jobs`` at a time, and merge their results (runs in seed order)."""
    out = Path(args.out)
    started = time.perf_counter()
    pending = list(seeds_of(args))
    running: dict[int, subprocess.Popen] = {}
    failed: list[int] = []
    while pending or running:
        while pending and len(running) < args.jobs:
            seed = pending.pop(0)
            (out / f"seed{seed}" / "results.json").unlink(missing_ok=True)  # not a stale run's
            command = [sys.executable, "-m", module, *argv, "--seeds", "1",
                       "--first-seed", str(seed), "--jobs", "1",
                       "--out", str(out / f"seed{seed}"), "--plot", ""]
            running[seed] = subprocess.Popen(command)
        time.sleep(1.0)
        for seed, process in list(running.items()):
            if process.poll() is not None:
                del running[seed]
                if process.returncode:
                    failed.append(seed)
    parts = [json.loads(path.read_text()) for seed in seeds_of(args)
             if (path := out / f"seed{seed}" / "results.json").is_file()]
    if not parts:
        raise RuntimeError(f"every seed failed ({failed}); their output is above")
    merged = {**parts[0], "runs": [run for part in parts for run in part["runs"]]}
    merged["partial"] = bool(failed) or any(part.get("partial") for part in parts)
    if failed:  # what the failed seeds finished is kept, and said
        say(f"seeds {failed} failed (their output is above); reporting the arms they finished")
    merged["wall_s"] = time.perf_counter() - started
    merged["jobs"] = args.jobs
    return merged


def run_and_report(claim: str, args: Any, experiment: Callable[[Any], Awaitable[dict]],
                   table: Callable[[dict], str], plot: Callable[[dict, Path], None], *,
                   module: str, argv: Sequence[str] | None) -> dict:
    """Run one claim's ``experiment(args)`` (its seeds split over ``args.jobs`` processes of
    ``module`` when above 1); write ``results.json`` and ``table.md`` under ``args.out``, print
    the table, draw ``args.plot`` if given. The caller's torch thread count is restored
    afterwards: a test or a notebook in the same process keeps its own."""
    if args.jobs > 1:
        results = _in_parallel(module, sys.argv[1:] if argv is None else argv, args)
    else:
        # The settings `gymbox train` runs with: without them the embedded model's process
        # grew past 12 GB in a Claim A run (heap fragmentation, docs/training.md).
        tune_malloc()
        threads = torch.get_num_threads()
        try:
            results = asyncio.run(experiment(args))
        finally:
            torch.set_num_threads(threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(json_safe(results), indent=1))
    report = table(results)
    (out / "table.md").write_text(report + "\n")
    say(f"{claim} done in {results['wall_s']:.0f}s; policy {args.model}; results in {out}")
    print(report, flush=True)
    if args.plot:
        plot(results, Path(args.plot))
        say(f"plot: {args.plot}")
    return results
