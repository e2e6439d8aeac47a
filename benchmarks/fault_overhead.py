"""What real faults cost: episodes/s of one workload at 0%, 10% and 30% injected faults.

The workload is the fault tests' deterministic env (``tests/faults/workload.py``): a scripted
agent makes three sandbox calls that build state (a file, an interpreter variable) and answers
with what it saw. Before each turn it "thinks" for ``--think-ms`` (a sleep standing in for the
policy's generation, which in training dominates a turn); with ``--think-ms 0`` episodes are
pure sandbox work, container starts dominate, and every recovery (one more container start)
shows at full weight. Every configuration plays the same seeds over a warm pool on the local
engine:

* ``plain pool``       — no recovery at all (the cost of the journal shows against it);
* ``recovery, 0%``     — the baseline the ratios are taken against;
* ``recovery, 10%``    — ``FaultPlan.uniform(0.10)``: every request kind, real faults;
* ``recovery, 30%``    — the same at 30%.

For each it prints episodes/s, faults injected, episodes recovered and masked, how long each
kind of failure stalled the call it struck (``RecoveryMetrics.stalled_s``), and the count of
**corrupted rewards**: valid rewards (or observations) that differ from the same seed's
fault-free episode (target 0). Then the throughput ratio at 10% against 0% (target >= 0.8).

    python3 benchmarks/fault_overhead.py               # 60 episodes per configuration
    python3 benchmarks/fault_overhead.py --think-ms 0  # no policy time: the worst case
    python3 benchmarks/fault_overhead.py --episodes 20 --concurrency 4
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "faults"))
from workload import (  # the workload lives with the tests that check it
    EPISODE_DEADLINE_S,
    SPEC,
    Episode,
    play_many,
    recovering,
)

from gymbox.runtime import DockerBackend, SandboxPool
from gymbox.runtime.faults import FaultPlan

TARGET_RATIO = 0.8


async def plain(seeds: range, concurrency: int, think_s: float
                ) -> tuple[list[Episode], float, dict]:
    async with SandboxPool(SPEC, size=concurrency, backend=DockerBackend()) as pool:
        started = time.monotonic()
        episodes = await play_many(pool, seeds, concurrency=concurrency,
                                   deadline_s=EPISODE_DEADLINE_S, think_s=think_s)
        return episodes, time.monotonic() - started, {}


async def with_recovery(seeds: range, concurrency: int, think_s: float, rate: float
                        ) -> tuple[list[Episode], float, dict]:
    plan = FaultPlan.uniform(rate, seed=1) if rate else None
    async with recovering(plan, pool_size=concurrency) as (sandboxes, faults):
        started = time.monotonic()
        episodes = await play_many(sandboxes, seeds, concurrency=concurrency,
                                   deadline_s=EPISODE_DEADLINE_S, think_s=think_s)
        elapsed = time.monotonic() - started
    metrics = sandboxes.metrics
    stalls = [
        f"  at {rate:.0%}: {failures:2d} x {kind:22s} stalled their call "
        f"{seconds / failures:.2f} s each (noticing it, a fresh sandbox, the replay, the re-run)"
        for kind, seconds in sorted(metrics.stalled_s.items())
        if (failures := metrics.recovered[kind] + metrics.masked[kind]
            + metrics.agent_caused[kind])
    ]
    counts = {
        "injected": len(faults.log) if faults else 0,
        "recovered": sum(metrics.recovered.values()),
        "masked": sum(metrics.masked.values()) + sum(metrics.start_failed.values()),
        "blamed": sum(metrics.agent_caused.values()),
        "stalls": stalls,
    }
    return episodes, elapsed, counts


def corrupted(episodes: list[Episode], reference: list[Episode]) -> int:
    """Valid episodes whose reward or observations differ from the fault-free ones."""
    return sum(
        1 for got, want in zip(episodes, reference, strict=True)
        if got.record.valid and (got.record != want.record or got.messages != want.messages)
    )


async def main(episodes: int, concurrency: int, think_s: float) -> int:
    seeds = range(episodes)
    runs = {
        "plain pool (no recovery)": await plain(seeds, concurrency, think_s),
        "recovery, 0% faults (baseline)": await with_recovery(seeds, concurrency, think_s, 0.0),
        "recovery, 10% faults": await with_recovery(seeds, concurrency, think_s, 0.10),
        "recovery, 30% faults": await with_recovery(seeds, concurrency, think_s, 0.30),
    }
    reference = runs["recovery, 0% faults (baseline)"][0]
    baseline_rate = episodes / runs["recovery, 0% faults (baseline)"][1]
    print(f"{episodes} episodes x 3 sandbox calls, {think_s * 1e3:.0f} ms of policy time per "
          f"turn, concurrency {concurrency}, Docker engine, {SPEC.memory_mb} MiB / {SPEC.cpus} "
          "CPU sandboxes")
    print(f"{'configuration':34s} {'episodes/s':>10s} {'ratio':>6s} {'faults':>6s} "
          f"{'recov.':>6s} {'masked':>6s} {'blamed':>6s} {'corrupted':>9s}")
    for name, (played, elapsed, counts) in runs.items():
        rate = episodes / elapsed
        print(f"{name:34s} {rate:10.2f} {rate / baseline_rate:6.2f} "
              f"{counts.get('injected', 0):6d} {counts.get('recovered', 0):6d} "
              f"{counts.get('masked', 0):6d} {counts.get('blamed', 0):6d} "
              f"{corrupted(played, reference):9d}")
    print("what each failure kind cost the call it struck:")
    for _, _, counts in runs.values():
        for line in counts.get("stalls", []):
            print(line)
    ratio = (episodes / runs["recovery, 10% faults"][1]) / baseline_rate
    total_corrupted = sum(corrupted(played, reference) for played, _, _ in runs.values())
    print(f"corrupted rewards: {total_corrupted} (target 0): "
          f"{'PASS' if total_corrupted == 0 else 'MISS'}")
    print(f"throughput at 10% faults: {ratio:.2f}x of fault-free (target >= {TARGET_RATIO}): "
          f"{'PASS' if ratio >= TARGET_RATIO else 'MISS'}")
    return 0 if total_corrupted == 0 and ratio >= TARGET_RATIO else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=6)
    parser.add_argument("--think-ms", type=float, default=250.0,
                        help="policy generation time per turn (0: sandbox-bound worst case)")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.episodes, args.concurrency, args.think_ms / 1e3)))
