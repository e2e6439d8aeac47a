"""Peak RSS of a training run, per step, next to what the model itself needs.

Runs a config (default: the README's main job, ``configs/quickstart.toml``) in this process,
as ``gymbox train`` does, and prints, for every step, the process's RSS after the step and its
peak so far, next to the bytes the model's own state takes: parameters + gradients + AdamW's
two moments (fp32), plus a sampler's copy of the weights when ``loop.max_staleness > 0``. Flat
per-step RSS means no growth per step; the target is a peak of at most 4 GiB for the 135M model.

The RSS is the training process's own: the learner, the policy, the env loop. Sandboxes are
Docker containers, outside it; an env's host tools run in worker processes (about 150 MB
each), reported on their own line, not added (PythonCalc's tool runs in the sandbox).

    python benchmarks/train_memory.py                      # the main job, 135M model
    python benchmarks/train_memory.py --set loop.steps=3   # any override
    python benchmarks/train_memory.py --no-malloc-tuning   # without the fix, for comparison
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GiB = 2**30


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs/quickstart.toml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-malloc-tuning", action="store_true",
                        help="leave glibc's malloc as it is: arenas uncapped, dynamic mmap "
                             "threshold (the behaviour before)")
    parser.add_argument("--no-eval", action="store_true",
                        help="skip the evaluation before training (as gymbox train --no-eval)")
    args = parser.parse_args()

    from gymbox.agents import memory
    from gymbox.agents import train as train_module
    from gymbox.agents.run_config import TrainConfig
    from gymbox.config import load_config

    if args.no_malloc_tuning:
        train_module.tune_malloc = lambda *args, **kwargs: False  # type: ignore[assignment]
    run_dir = tempfile.mkdtemp(prefix="gymbox-memory-")
    config = load_config(TrainConfig, args.config, [*args.set, f"run_dir={json.dumps(run_dir)}"])
    start_rss = memory.rss_bytes()
    started = time.perf_counter()
    summary = train_module.train(config, evaluate_before=not args.no_eval)
    wall = time.perf_counter() - started
    peak = memory.peak_rss_bytes() / GiB  # before the parameter count below loads a model
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20

    from gymbox.agents.metrics import read_metrics

    rows = [r for r in read_metrics(run_dir) if "memory/rss_gb" in r]
    from gymbox.agents.train import load_learner

    params = sum(p.numel() for p in load_learner(config.policy).model.parameters())
    copies = 4 + (1 if config.loop.max_staleness > 0 else 0)  # weights, grads, 2 moments, sampler
    model_state = params * 4 * copies
    print(f"\nconfig {args.config} {' '.join(args.set)}; malloc tuning "
          f"{'off' if args.no_malloc_tuning else 'on'}; {summary.steps} steps in {wall:.0f} s")
    print(f"model: {params / 1e6:.1f}M parameters; weights + grads + AdamW moments"
          f"{' + sampler copy' if copies == 5 else ''} = {model_state / GiB:.2f} GiB "
          f"(baseline: the process before loading, {start_rss / GiB:.2f} GiB)")
    print(f"{'step':>4}  {'RSS after step (GiB)':>20}  {'peak so far (GiB)':>17}")
    for row in rows:
        rss, high = row["memory/rss_gb"], row["memory/peak_gb"]
        print(f"{row['step'] + 1:>4}  {rss:>20.2f}  {high:>17.2f}")
    if len(rows) >= 2:
        growth = (rows[-1]["memory/rss_gb"] - rows[0]["memory/rss_gb"]) / (len(rows) - 1)
        print(f"growth per step after the first: {growth * 1024:+.0f} MiB")
    print(f"peak RSS of the whole run: {peak:.2f} GiB (target <= 4 GiB); "
          f"{peak / (model_state / GiB):.2f}x the model's own state")
    print(f"largest child process that exited (host-tool workers), not counted above: "
          f"{children:.2f} GiB; load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
