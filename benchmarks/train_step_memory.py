"""Peak RSS of one optimiser step on the 135M model, by what the trainer does to keep it down.

Each variant runs in a fresh process: the embedded model and the sampler the main job's
asynchronous loop holds, then ``--steps`` trainer steps on synthetic trajectories shaped like
the main job's (``--trajectories`` of 380-512 tokens, 98 of them the model's, micro-batches of
2, temperature 0.5). The first step allocates AdamW's moments, so the peak is reached from the
second. With ``--generate`` a thread samples batches of 4 prompts of ~400 tokens from the
sampler for as long as the steps run, as the two rollout workers do during an update
(``max_staleness = 1``). Variants, from the baseline up:

* ``full``        — logits at every position (the trainer before), no gradient checkpointing;
* ``kept``        — the model's head only at the positions that predict a loss token;
* ``kept+gc``     — and gradient checkpointing (``optim.gradient_checkpointing``);
* ``kept+gc+mmap``— and glibc's mmap threshold fixed (:func:`gymbox.agents.memory.tune_malloc`);
* ``kept+gc+mmap+shared`` — and the sampler a module over the learner's own tensors
  (:meth:`gymbox.agents.loop.SyncedPolicy.sharing`) instead of a copy of the weights.

Every variant caps glibc's arenas, as ``gymbox train`` always has. For the whole main job's
peak, run ``benchmarks/train_memory.py``.

    python benchmarks/train_step_memory.py
    python benchmarks/train_step_memory.py --variants full kept+gc+mmap --steps 3
    python benchmarks/train_step_memory.py --variants kept+gc+mmap kept+gc+mmap+shared --generate
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import ctypes.util
import os
import random
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = ("full", "kept", "kept+gc", "kept+gc+mmap", "kept+gc+mmap+shared")


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _one(variant: str, steps: int, trajectories: int, model: str | None,
         generate: bool) -> None:
    """Run one variant in this process and print its RESULT line."""
    from gymbox.agents import memory

    if "+mmap" in variant:
        assert memory.tune_malloc(), "not glibc: nothing to tune"
    else:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallopt(memory.M_ARENA_MAX, 2)
    import torch

    from gymbox.agents import trainer as trainer_module
    from gymbox.agents.loop import SyncedPolicy
    from gymbox.agents.loss import token_logprobs
    from gymbox.agents.policy import SamplingParams, TransformersPolicy

    if variant == "full":
        def full_logits(model, batch, temperature):
            logits = model(input_ids=batch.token_ids, attention_mask=batch.attention_mask).logits
            return token_logprobs(logits, batch.token_ids, temperature=temperature)

        trainer_module._logprobs = full_logits
    torch.manual_seed(0)
    rng = random.Random(0)
    policy = TransformersPolicy.load(model)
    if variant.endswith("+shared"):
        sampler = SyncedPolicy.sharing(policy)
    else:  # a copy of the weights, as the async loop held before
        sampler = SyncedPolicy(TransformersPolicy(copy.deepcopy(policy.model), policy.tokenizer))
    trainer = trainer_module.PolicyTrainer(policy.model, trainer_module.TrainerConfig(
        learning_rate=1e-6, micro_batch_size=2, temperature=0.5,
        gradient_checkpointing="gc" in variant))
    if sampler.shares_weights_with(policy.model):
        trainer.weights_lock = sampler.lock
    stepping = threading.Event()

    def sample_meanwhile() -> None:
        params = SamplingParams(max_new_tokens=48, temperature=0.5)
        while stepping.is_set():
            prompts = [[rng.randrange(1000, 40000) for _ in range(rng.randint(350, 450))]
                       for _ in range(4)]
            sampler.generate(prompts, params)

    def batch() -> list[trainer_module.TrainingSample]:
        out = []
        for _ in range(trajectories):
            n = rng.randint(380, 512)
            ids = [rng.randrange(1000, 40000) for _ in range(n)]
            mask = [0] * n
            for a, b in ((n - 200, n - 150), (n - 48, n)):  # two model turns
                mask[a:b] = [1] * (b - a)
            out.append(trainer_module.TrainingSample(
                ids, mask, [-1.0 if m else 0.0 for m in mask], rng.uniform(-1, 1)))
        return out

    held = memory.release_memory()
    for step in range(steps):
        samples = batch()
        started = time.perf_counter()
        stepping.set()
        generating = threading.Thread(target=sample_meanwhile)
        if generate:
            generating.start()
        trainer.step(samples)
        stepping.clear()
        if generate:
            generating.join()
        after = memory.release_memory()
        print(f"  {variant}: step {step + 1}/{steps} in {time.perf_counter() - started:.1f} s, "
              f"RSS after {after / 2**30:.2f} GiB, peak so far {_peak_gib():.2f} GiB", flush=True)
    print(f"RESULT {variant} {_peak_gib():.3f} {held / 2**30:.3f}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--trajectories", type=int, default=8)
    parser.add_argument("--model", help="a model directory (default: the embedded 135M model)")
    parser.add_argument("--generate", action="store_true",
                        help="sample from the sampler on a thread during every step")
    parser.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        _one(args.one, args.steps, args.trajectories, args.model, args.generate)
        return 0

    results: dict[str, tuple[float, float]] = {}
    for variant in args.variants:
        print(f"[{variant}] starting ({len(results) + 1}/{len(args.variants)})", flush=True)
        proc = subprocess.run(
            [sys.executable, __file__, "--one", variant, "--steps", str(args.steps),
             "--trajectories", str(args.trajectories),
             *(["--model", args.model] if args.model else []),
             *(["--generate"] if args.generate else [])],
            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        for line in proc.stdout.splitlines():
            if line.startswith("RESULT"):
                _, name, peak, held = line.split()
                results[name] = (float(peak), float(held))
            else:
                print(line, flush=True)
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            return 1
    baseline = results.get("full")
    print(f"\n{args.steps} steps of {args.trajectories} trajectories"
          f"{', sampling meanwhile' if args.generate else ''}; load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'variant':<20} {'peak RSS (GiB)':>14} {'before a step':>13} {'vs full':>8}")
    for name, (peak, held) in results.items():
        ratio = f"{peak / baseline[0]:.2f}x" if baseline else ""
        print(f"{name:<20} {peak:>14.2f} {held:>13.2f} {ratio:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
