"""Cost of the token-level intrinsic terms against the log-softmax the trainer computes anyway.

Prints, for float32 logits of shape [B, T, V] (default [8, 512, 49152], SmolLM2's vocabulary),
with torch's default thread count and with one thread:

* the median wall time of ``torch.log_softmax(logits, -1)`` (the baseline) and of
  ``gymbox.rewards.token_stats`` (entropy + self-certainty + sampled-token log-probs), and
  their ratio (target: at most 1.5x);
* the peak extra memory of each beyond the logits: the growth of the peak resident set size
  (VmHWM, reset just before the call) of a fresh child process that runs the call once.

The machine's load average is printed too: on a shared machine, other processes stall torch's
thread barriers, which hurts many small chunked ops far more than one large op, so read the
one-thread line as the cost of the arithmetic itself.

    python3 benchmarks/reward_overhead.py            # [8, 512, 49152], 1-2 minutes on 2 cores
    python3 benchmarks/reward_overhead.py --quick    # [2, 128, 49152]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable

import torch

from gymbox.rewards import token_stats


def _log_softmax(logits: torch.Tensor, tokens: torch.Tensor) -> object:
    return torch.log_softmax(logits, dim=-1)


def _token_stats(logits: torch.Tensor, tokens: torch.Tensor) -> object:
    return token_stats(logits, tokens)


CANDIDATES: dict[str, Callable[[torch.Tensor, torch.Tensor], object]] = {
    "log_softmax (baseline)": _log_softmax,
    "token_stats (entropy + self-certainty + logprobs)": _token_stats,
}


def _inputs(shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.empty(shape).normal_(std=4.0, generator=generator)  # no temporary copy
    tokens = torch.randint(0, shape[2], shape[:2], generator=generator)
    return logits, tokens


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as refs:  # "5" resets VmHWM to the current RSS
        refs.write("5")


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError("no VmHWM in /proc/self/status: peak memory needs Linux")


def _extra_memory_child(
    name: str, shape: tuple[int, int, int], queue: multiprocessing.Queue
) -> None:
    logits, tokens = _inputs(shape)
    _reset_peak_rss()
    before = _peak_rss_bytes()
    result = CANDIDATES[name](logits, tokens)
    queue.put(_peak_rss_bytes() - before)
    del result


def peak_extra_memory(name: str, shape: tuple[int, int, int]) -> int:
    """Bytes the call added to the peak RSS of a fresh process that already holds the logits."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_extra_memory_child, args=(name, shape, queue))
    child.start()
    extra = queue.get()
    child.join()
    return extra


def median_seconds(
    candidates: dict[str, Callable[[torch.Tensor, torch.Tensor], object]],
    logits: torch.Tensor,
    tokens: torch.Tensor,
    repeats: int,
) -> dict[str, float]:
    """Median wall time of each candidate; runs alternate so machine load hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for fn in candidates.values():
        fn(logits, tokens)  # warm-up: first-touch page faults and thread-pool start
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            result = fn(logits, tokens)
            times[name].append(time.perf_counter() - start)
            del result
    return {name: statistics.median(samples) for name, samples in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="use [2, 128, 49152] logits")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    shape = (2, 128, 49152) if args.quick else (8, 512, 49152)

    logits, tokens = _inputs(shape)
    mib = 2**20
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"logits {list(shape)} float32 ({logits.numel() * 4 / mib:.0f} MiB), "
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {load}; "
        f"median of {args.repeats} alternating runs"
    )
    ratios = {}
    for threads in sorted({torch.get_num_threads(), 1}, reverse=True):
        torch.set_num_threads(threads)
        timings = median_seconds(CANDIDATES, logits, tokens, args.repeats)
        baseline, candidate = timings.values()
        ratios[threads] = candidate / baseline
        for name, seconds in timings.items():
            print(
                f"{threads} thread(s)  {name:50s} {seconds * 1e3:8.1f} ms  "
                f"{seconds / baseline:5.2f}x"
            )
    del logits, tokens
    for name in CANDIDATES:
        print(f"peak extra memory  {name:50s} {peak_extra_memory(name, shape) / mib:8.1f} MiB")
    for threads, ratio in ratios.items():
        verdict = "PASS" if ratio <= 1.5 else "MISS"
        print(f"overhead ratio with {threads} thread(s): {ratio:.2f}x (target <= 1.50x): {verdict}")


if __name__ == "__main__":
    main()
