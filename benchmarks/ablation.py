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

    python benchmarks/ablation.py                         # 3 seeds, 32 held-out tasks each
    python benchmarks/ablation.py --seeds 0 1 --episodes 16 --set loop.steps=4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _imitation_only(config) -> float:
    """W + S imitation steps through the run's own warm-up phase; its held-out accuracy."""
    from gymbox.agents.supply import env_supply
    from gymbox.agents.train import Log, Run

    run = Run.start(config, Log())

    async def session() -> float:
        at_once = max(config.loop.group_size * config.loop.rollout_workers, config.eval.episodes)
        async with env_supply(config, episodes_at_once=at_once) as supply:
            run.supply = supply
            await run.warm_up()
        return run.results["after warm-up"].accuracy

    with run.files():
        return asyncio.run(session())


def _rl(config) -> float:
    from gymbox.agents.train import train

    summary = train(config, evaluate_before=False)
    assert summary.after is not None
    return summary.after.accuracy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs/quickstart.toml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--episodes", type=int, default=32, help="held-out tasks per eval")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override the main job's config in every arm")
    args = parser.parse_args()

    from gymbox.agents.run_config import TrainConfig
    from gymbox.config import apply_overrides, load_config

    base = load_config(TrainConfig, args.config, [*args.set, f"eval.episodes={args.episodes}",
                                                  "eval.every=0"])
    warm, rl = base.warmup.sft_steps, base.loop.steps
    arms = {
        "imitation": (_imitation_only, [f"warmup.sft_steps={warm + rl}"]),
        "gold RL": (_rl, ['reward.terms={"gold": {}}', 'reward.mixing="additive"',
                          "reward.labelled_fraction=1.0", "reward.guard.enabled=false"]),
        "main job": (_rl, []),
    }
    results: dict[str, dict[int, float]] = {name: {} for name in arms}
    started = time.perf_counter()
    for seed in args.seeds:
        for name, (run, overrides) in arms.items():
            run_dir = tempfile.mkdtemp(prefix=f"gymbox-ablation-{name.replace(' ', '-')}-")
            config = apply_overrides(base, [*overrides, f"loop.seed={seed}",
                                            f"run_dir={json.dumps(run_dir)}"])
            t0 = time.perf_counter()
            results[name][seed] = run(config)
            print(f"[ablation] seed {seed} {name}: accuracy {results[name][seed]:.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)

    n = len(args.seeds)
    print(f"\n{len(arms)} arms × {n} seeds, {args.episodes} held-out tasks each; W = {warm} "
          f"imitation + S = {rl} RL steps ({warm + rl} steps per arm); "
          f"{time.perf_counter() - started:.0f} s in all")
    print(f"{'arm':<10} {'accuracy (mean ± s.e.)':>24} {'Δ vs imitation (± s.e.)':>26}  verdict")
    for name in arms:
        values = [results[name][s] for s in args.seeds]
        mean = statistics.fmean(values)
        se = statistics.stdev(values) / math.sqrt(n) if n > 1 else float("nan")
        line = f"{name:<10} {mean:>14.3f} ± {se:<7.3f}"
        if name != "imitation":
            diffs = [results[name][s] - results["imitation"][s] for s in args.seeds]
            d = statistics.fmean(diffs)
            d_se = statistics.stdev(diffs) / math.sqrt(n) if n > 1 else float("nan")
            verdict = ("larger than its noise" if abs(d) > 2 * d_se else "within noise")
            line += f" {d:>+16.3f} ± {d_se:<7.3f}  {verdict}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
