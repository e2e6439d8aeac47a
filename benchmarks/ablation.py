"""Does RL add to imitation? The main job against imitation alone and RL with gold only.

Three arms, each from the same base model with the same total number of optimiser steps
(warm-up W + RL S of the main job, ``configs/quickstart.toml``):

* ``imitation``  — W + S imitation steps on the scripted expert's demonstrations, no RL;
* ``gold RL``    — W imitation steps, then S GRPO steps on the gold reward of every task
                   (everything else as in the main job: async loop, faults);
* ``main job``   — W imitation steps, then S GRPO steps of the main job (semi-supervised gold +
                   majority vote, entropy guard, async loop, 10 % injected faults).

Each arm runs for every seed and is scored by greedy accuracy on the same held-out tasks (seeds
training never draws). The table gives each arm's mean over seeds with its standard error, and
each RL arm's difference to imitation with the standard error of the difference (seeds paired);
a difference is "larger than its noise" when it exceeds twice that standard error.

Each arm's run directory (metrics, samples, plot) is kept under ``--out`` (default
``runs/ablation``), with ``ablation.json`` (every figure), ``ablation.md`` (the table) and
``ablation.png`` (each arm's accuracy per seed and mean ± s.e., beside the accuracy after the
W imitation steps that the RL arms start from).

    python benchmarks/ablation.py                         # 3 seeds, 32 held-out tasks each
    python benchmarks/ablation.py --seeds 0 1 --episodes 16 --set loop.steps=4
    # an expert the student cannot copy and succeed (docs/training.md)
    python benchmarks/ablation.py --set 'env_kwargs={"expert": "mental"}' --out runs/ablation-mental
    # three imitation steps, then GRPO at a tenth of the main job's learning rate (docs/training.md)
    python benchmarks/ablation.py --set 'env_kwargs={"expert": "mental"}' --set warmup.sft_steps=3 \
        --set loop.steps=5 --set optim.learning_rate=2e-6 --seeds 0 1 2 3 4 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from gymbox.agents.evaluate import EvalResult


ARMS = ("main job", "gold RL", "imitation")
Outcome = tuple["EvalResult", "EvalResult | None"]
"""An arm's held-out evaluation at the end, and after the first W imitation steps (RL arms)."""


def _imitation_only(config) -> Outcome:
    """W + S imitation steps through the run's own warm-up phase; its held-out evaluation."""
    from gymbox.agents.supply import env_supply
    from gymbox.agents.train import Log, Run

    run = Run.start(config, Log())

    async def session() -> EvalResult:
        at_once = max(config.loop.group_size * config.loop.rollout_workers, config.eval.episodes)
        async with env_supply(config, episodes_at_once=at_once) as supply:
            run.supply = supply
            await run.warm_up()
        return run.results["after warm-up"]

    with run.files():
        return asyncio.run(session()), None


def _rl(config) -> Outcome:
    from gymbox.agents.train import train

    summary = train(config, evaluate_before=False)
    assert summary.after is not None and summary.after_warmup is not None
    return summary.after, summary.after_warmup


def _mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    se = statistics.stdev(values) / math.sqrt(n) if n > 1 else float("nan")
    return statistics.fmean(values), se


def _pm(mean: float, se: float) -> str:
    return f"{mean:+.3f}" if math.isnan(se) else f"{mean:+.3f} ± {se:.3f}"


def _table(results: dict[str, dict[int, float]], tool_use: dict[str, dict[int, float]],
           seeds: list[int]) -> list[str]:
    lines = ["| arm | accuracy (mean ± s.e.) | Δ vs imitation (± s.e.) | verdict | a tool ran in |",
             "|---|---|---|---|---|"]
    for name, by_seed in results.items():
        mean, se = _mean_se([by_seed[s] for s in seeds])
        delta, verdict = "", ""
        if name != "imitation" and "imitation" in results:
            d, d_se = _mean_se([by_seed[s] - results["imitation"][s] for s in seeds])
            delta = _pm(d, d_se)
            verdict = ("larger than its noise" if abs(d) > 2 * d_se else
                       "within noise" if len(seeds) > 1 else "one seed: noise unknown")
        used = statistics.fmean(tool_use[name][s] for s in seeds)
        lines.append(f"| {name} | {_pm(mean, se).lstrip('+')} | {delta} | {verdict} "
                     f"| {used:.0%} |")
    return lines


def _plot(results: dict[str, dict[int, float]], starts: list[float], seeds: list[int],
          title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for x, by_seed in enumerate(results.values()):
        values = [by_seed[s] for s in seeds]
        mean, se = _mean_se(values)
        ax.bar(x, mean, width=0.6, yerr=None if math.isnan(se) else se, capsize=6,
               color=("tab:green", "tab:blue", "tab:gray")[x % 3], alpha=0.7)
        ax.scatter([x] * len(values), values, color="black", zorder=3, s=18,
                   label="one seed" if x == 0 else None)
    if starts:
        ax.axhline(statistics.fmean(starts), color="tab:red", linestyle="--",
                   label="after the W imitation steps RL starts from")
    ax.set_xticks(range(len(results)), list(results))
    ax.set_ylabel("held-out accuracy (greedy)")
    ax.set_ylim(0, 1.05)
    ax.set_title("\n".join(textwrap.wrap(title, 70)), fontsize=9)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs/quickstart.toml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--episodes", type=int, default=32, help="held-out tasks per eval")
    parser.add_argument("--out", default="runs/ablation", help="where runs and results go")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override the main job's config in every arm")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS),
                        help="run only these arms (the table compares to imitation if run)")
    args = parser.parse_args()

    from gymbox.agents.run_config import TrainConfig
    from gymbox.config import apply_overrides, load_config

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = load_config(TrainConfig, args.config, [*args.set, f"eval.episodes={args.episodes}",
                                                  "eval.every=0"])
    warm, rl = base.warmup.sft_steps, base.loop.steps
    # The main job runs first: its metrics rows (per-step RSS and peak) are then its own,
    # measured before any other arm ran in this process.
    every_arm = {
        "main job": (_rl, []),
        "gold RL": (_rl, ['reward.terms={"gold": {}}', 'reward.mixing="additive"',
                          "reward.labelled_fraction=1.0", "reward.guard.enabled=false"]),
        "imitation": (_imitation_only, [f"warmup.sft_steps={warm + rl}"]),
    }
    arms = {name: every_arm[name] for name in ARMS if name in args.arms}
    results: dict[str, dict[int, float]] = {name: {} for name in arms}
    tool_use: dict[str, dict[int, float]] = {name: {} for name in arms}
    starts: list[float] = []
    started = time.perf_counter()
    total = len(arms) * len(args.seeds)
    for seed in args.seeds:
        for name, (run, overrides) in arms.items():
            done = sum(len(r) for r in results.values())
            print(f"[ablation] {done + 1}/{total}: seed {seed}, {name} "
                  f"({time.perf_counter() - started:.0f} s so far)", flush=True)
            run_dir = out / f"{name.replace(' ', '-')}-seed{seed}"
            config = apply_overrides(base, [*overrides, f"loop.seed={seed}",
                                            f"run_dir={json.dumps(str(run_dir))}"])
            t0 = time.perf_counter()
            end, start = run(config)
            results[name][seed], tool_use[name][seed] = end.accuracy, end.tool_use
            if start is not None:
                starts.append(start.accuracy)
            print(f"[ablation] seed {seed} {name}: accuracy {end.accuracy:.3f}, a tool ran in "
                  f"{end.tool_use:.0%} ({time.perf_counter() - t0:.0f} s)", flush=True)

    n = len(args.seeds)
    title = (f"{len(arms)} arms × {n} seed{'s' * (n > 1)}, {args.episodes} held-out tasks each; "
             f"W = {warm} imitation + S = {rl} RL steps ({warm + rl} steps per arm)")
    wall = time.perf_counter() - started
    table = _table(results, tool_use, args.seeds)
    print(f"\n{title}; {wall:.0f} s in all, load average {os.getloadavg()[0]:.1f}")
    print("\n".join(table))
    (out / "ablation.md").write_text(f"{title}; {wall:.0f} s in all\n\n" + "\n".join(table) + "\n")
    (out / "ablation.json").write_text(json.dumps(
        {"title": title, "seeds": args.seeds, "episodes": args.episodes, "wall_s": wall,
         "accuracy": results, "tool_use": tool_use, "start_after_imitation": starts},
        indent=2))
    _plot(results, starts, args.seeds, title, out / "ablation.png")
    print(f"table: {out / 'ablation.md'}; plot: {out / 'ablation.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
