"""Peak RSS of a training run, where it happens, next to what the model itself needs.

Runs a config (default: the README's main job, ``configs/quickstart.toml``) in this process,
as ``gymbox train`` does (the same log lines), and prints:

* for every step, the process's RSS after the step and its peak so far;
* the bytes the model's own state takes: parameters + gradients + AdamW's two moments (fp32),
  plus a sampler's copy of the weights when the generator holds one;
* where the peak happens: a thread samples the RSS every ``--poll-ms`` and tags each sample
  with the phase (load, an evaluation, the warm-up, step N) and what was running at that
  moment (an optimiser step's forward, backward, clip or AdamW update; a generate call with
  its batch; a weight copy; a checkpoint save), so the table shows each phase's highest sample
  and who was alive at it. The sampled peak can miss the kernel's by what lives less than a
  poll; the kernel's high-water mark is printed beside it.

The target is a peak of at most 4 GB (3.73 GiB, the stricter reading of the issue's "4 GB")
for the 135M model, flat across steps.

The RSS is the training process's own: the learner, the policy, the env loop. Sandboxes are
Docker containers, outside it; an env's host tools run in worker processes (about 150 MB
each), reported on their own line, not added (PythonCalc's tool runs in the sandbox).

    python benchmarks/train_memory.py                      # the main job, 135M model
    python benchmarks/train_memory.py --set loop.steps=3   # any override
    python benchmarks/train_memory.py --no-malloc-tuning   # without the fix, for comparison
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import resource
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GiB = 2**30
GB = 10**9


@dataclass
class Sample:
    t: float
    rss: int
    phase: str
    running: tuple[str, ...]


@dataclass
class Tracker:
    """Samples the RSS on a thread, tagged with the phase and what runs (see the docstring)."""

    poll_s: float
    phase: str = "load"
    run: Any = None
    running: Counter[str] = field(default_factory=Counter)
    samples: list[Sample] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        from gymbox.agents.memory import rss_bytes

        def poll() -> None:
            started = time.perf_counter()
            while not self._stop.wait(self.poll_s):
                with self._lock:
                    running = tuple(sorted(f"{k}×{n}" if n > 1 else k
                                           for k, n in self.running.items() if n > 0))
                    self.samples.append(Sample(time.perf_counter() - started, rss_bytes(),
                                               self.phase, running))

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def enter(self, what: str) -> None:
        with self._lock:
            self.running[what] += 1

    def leave(self, what: str) -> None:
        with self._lock:
            self.running[what] -= 1

    def set_phase(self, phase: str) -> None:
        with self._lock:
            self.phase = phase


def _wrap(owner: Any, name: str, tracker: Tracker,
          label: Callable[..., str] | str, *, phase: bool = False) -> None:
    """Replace ``owner.name`` (sync or async) by a version that tags what runs while it does."""
    import inspect

    original = getattr(owner, name)

    def what(args: tuple, kwargs: dict) -> str:
        return label(*args, **kwargs) if callable(label) else label

    if inspect.iscoroutinefunction(original):
        @functools.wraps(original)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            w = what(args, kwargs)
            before = tracker.phase
            tracker.set_phase(w) if phase else tracker.enter(w)
            try:
                return await original(*args, **kwargs)
            finally:
                tracker.set_phase(before) if phase else tracker.leave(w)
        setattr(owner, name, async_wrapper)
    else:
        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            w = what(args, kwargs)
            tracker.enter(w)
            try:
                return original(*args, **kwargs)
            finally:
                tracker.leave(w)
        setattr(owner, name, wrapper)


def instrument(tracker: Tracker) -> None:
    """Tag the phases and the memory-heavy calls of a ``gymbox train`` run (see the docstring)."""
    import torch

    train_module = importlib.import_module("gymbox.agents.train")
    from gymbox.agents import trainer as trainer_module
    from gymbox.agents.loop import SyncedPolicy
    from gymbox.agents.policy import TransformersPolicy

    run = train_module.Run
    original_start = run.start.__func__

    def start(cls: Any, *args: Any, **kwargs: Any) -> Any:
        tracker.run = original_start(cls, *args, **kwargs)
        return tracker.run

    run.start = classmethod(start)  # type: ignore[method-assign,assignment]
    _wrap(run, "evaluate", tracker, lambda self, label, **_: f"eval {label}", phase=True)
    _wrap(run, "warm_up", tracker, "warm-up", phase=True)

    original_train_steps = run.train_steps

    async def train_steps(self: Any) -> int:
        tracker.set_phase(f"step {self.trainer.steps_done + 1}")
        try:
            return await original_train_steps(self)
        finally:
            tracker.set_phase("after training")

    run.train_steps = train_steps  # type: ignore[method-assign]
    original_on_step = run._on_step

    async def on_step(self: Any, report: Any) -> None:
        tracker.set_phase(f"step {report.step + 1} report")
        await original_on_step(self, report)
        tracker.set_phase(f"step {report.step + 2}")

    run._on_step = on_step  # type: ignore[method-assign]
    _wrap(run, "save", tracker, "checkpoint save")
    _wrap(train_module, "plot_metrics", tracker, "plot")
    _wrap(SyncedPolicy, "load_weights", tracker, "weight copy")

    def generate_label(self: Any, prompts: Any, sampling: Any) -> str:
        longest = max(len(p) for p in prompts)
        return f"generate {len(prompts)}x{(longest + 49) // 50 * 50}tok"

    _wrap(TransformersPolicy, "generate", tracker, generate_label)
    _wrap(trainer_module.PolicyTrainer, "step", tracker, "optimiser step")
    _wrap(trainer_module.PolicyTrainer, "imitation_step", tracker, "imitation step")
    # Within a step: forward (the loss), then backward until the next forward or the clip.
    original_logprobs = trainer_module._logprobs

    def logprobs(*args: Any, **kwargs: Any) -> Any:
        tracker.leave("backward") if tracker.running["backward"] > 0 else None
        tracker.enter("forward")
        try:
            return original_logprobs(*args, **kwargs)
        finally:
            tracker.leave("forward")
            tracker.enter("backward")

    trainer_module._logprobs = logprobs
    original_clip = torch.nn.utils.clip_grad_norm_

    def clip(*args: Any, **kwargs: Any) -> Any:
        while tracker.running["backward"] > 0:
            tracker.leave("backward")
        tracker.enter("clip")
        try:
            return original_clip(*args, **kwargs)
        finally:
            tracker.leave("clip")

    torch.nn.utils.clip_grad_norm_ = clip
    _wrap(torch.optim.AdamW, "step", tracker, "AdamW update")


def report_phases(tracker: Tracker, kernel_peak: int) -> None:
    """Each phase's highest sample and what ran at it, in the order the phases came."""
    by_phase: dict[str, list[Sample]] = {}
    for s in tracker.samples:
        by_phase.setdefault(s.phase, []).append(s)
    print(f"\n{'phase':<22} {'time (s)':>8} {'peak RSS (GiB)':>14}  running at the peak")
    for phase, samples in by_phase.items():
        top = max(samples, key=lambda s: s.rss)
        span = samples[-1].t - samples[0].t + tracker.poll_s
        print(f"{phase:<22} {span:>8.0f} {top.rss / GiB:>14.2f}  "
              f"{', '.join(top.running) or '(env and event loop only)'}")
    if tracker.samples:
        top = max(tracker.samples, key=lambda s: s.rss)
        print(f"highest sample: {top.rss / GiB:.2f} GiB at {top.t:.0f} s in {top.phase}, "
              f"running {', '.join(top.running) or 'nothing heavy'}; the kernel's high-water "
              f"mark {kernel_peak / GiB:.2f} GiB")


def _sampler_copy(generator: Any, learner: Any) -> bool:
    """Whether the generator samples from weights of its own (not the learner's tensors)."""
    model = getattr(getattr(generator, "policy", None), "model", None)
    if model is None or not hasattr(model, "parameters"):
        return True
    ours = {p.data_ptr() for p in learner.parameters()}
    return any(p.data_ptr() not in ours for p in model.parameters())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs/quickstart.toml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-malloc-tuning", action="store_true",
                        help="leave glibc's malloc as it is: arenas uncapped, dynamic mmap "
                             "threshold (the behaviour before)")
    parser.add_argument("--no-eval", action="store_true",
                        help="skip the evaluation before training (as gymbox train --no-eval)")
    parser.add_argument("--poll-ms", type=float, default=20.0,
                        help="how often the RSS is sampled for the by-phase table")
    args = parser.parse_args()

    from gymbox.agents import memory
    train_module = importlib.import_module("gymbox.agents.train")
    from gymbox.agents.run_config import TrainConfig
    from gymbox.config import load_config

    if args.no_malloc_tuning:
        train_module.tune_malloc = lambda *args, **kwargs: False  # type: ignore[assignment]
    run_dir = tempfile.mkdtemp(prefix="gymbox-memory-")
    config = load_config(TrainConfig, args.config, [*args.set, f"run_dir={json.dumps(run_dir)}"])
    tracker = Tracker(poll_s=args.poll_ms / 1000)
    instrument(tracker)
    start_rss = memory.rss_bytes()
    loads = []
    started = time.perf_counter()
    tracker.start()
    load_thread_stop = threading.Event()

    def watch_load() -> None:
        while not load_thread_stop.wait(10):
            loads.append(os.getloadavg()[0])

    threading.Thread(target=watch_load, daemon=True).start()
    try:
        summary = train_module.train(config, evaluate_before=not args.no_eval)
    finally:
        tracker.stop()
        load_thread_stop.set()
    wall = time.perf_counter() - started
    peak = memory.peak_rss_bytes()
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20

    from gymbox.agents.metrics import read_metrics

    rows = [r for r in read_metrics(run_dir) if "memory/rss_gb" in r]
    learner = tracker.run.learner.model
    params = sum(p.numel() for p in learner.parameters())
    copies = 4 + (1 if _sampler_copy(tracker.run.generator, learner) else 0)
    model_state = params * 4 * copies
    print(f"\nconfig {args.config} {' '.join(args.set)}; malloc tuning "
          f"{'off' if args.no_malloc_tuning else 'on'}; {summary.steps} steps in {wall:.0f} s; "
          f"load average {min(loads, default=0):.1f}-{max(loads, default=0):.1f} "
          f"(1-min, sampled every 10 s)")
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
    report_phases(tracker, peak)
    print(f"peak RSS of the whole run: {peak / GiB:.2f} GiB = {peak / GB:.2f} GB (target "
          f"<= 4 GB = 3.73 GiB); {peak / model_state:.2f}x the model's own state")
    print(f"largest child process that exited (host-tool workers), not counted above: "
          f"{children:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
