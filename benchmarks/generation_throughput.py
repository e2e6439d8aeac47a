"""The embedded model's costs: first conversion, cached load, and batched sampling speed.

Each figure is printed next to a baseline measured in the same run on the same machine:

* conversion (GGUF → cached safetensors, once) vs loading the GGUF directly (every time,
  without the cache);
* cached load vs loading the GGUF directly;
* ``TransformersPolicy.generate`` (KV cache, finished rows dropped, per-token log-prob, entropy
  and self-certainty) vs ``model.generate`` from transformers with ``output_logits=True``, the
  statistics then computed from those logits — the same outputs the other way.

Usage: ``python benchmarks/generation_throughput.py [--batch 8] [--new-tokens 64] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM

from gymbox.agents.models import embedded_gguf_path, resolve_model_dir
from gymbox.agents.policy import SamplingParams, TransformersPolicy
from gymbox.rewards.tokens import token_stats

QUESTIONS = [
    "Write a long story about a lighthouse keeper.",
    "Explain how a bicycle works, in detail.",
    "Describe your ideal city, street by street.",
    "List many uses for a paperclip and explain each.",
]


def seconds(fn) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def hf_generate(policy: TransformersPolicy, prompts: list[list[int]], new_tokens: int) -> int:
    """The baseline: transformers' own sampling loop, then the statistics from its logits."""
    tokenizer = policy.tokenizer
    longest = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (longest - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
    out = policy.model.generate(
        input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0,
        top_k=0, max_new_tokens=new_tokens, output_logits=True, return_dict_in_generate=True,
        pad_token_id=pad,
    )
    sampled = out.sequences[:, longest:]
    logits = torch.stack(out.logits, dim=1)
    token_stats(logits, sampled, temperature=1.0)
    eos = tokenizer.eos_token_id
    return sum(
        (row.tolist().index(eos) + 1) if eos in row.tolist() else len(row) for row in sampled
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")

    gguf = embedded_gguf_path()
    with tempfile.TemporaryDirectory() as cache:
        convert_s, directory = seconds(lambda: resolve_model_dir(cache_dir=cache))
        gguf_s, _ = seconds(lambda: AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, local_files_only=True))
        load_s, policy = seconds(lambda: TransformersPolicy.load(directory))
        print(f"first conversion (GGUF -> cache): {convert_s:6.1f} s")
        print(f"cached load:                      {load_s:6.1f} s   "
              f"baseline, GGUF loaded directly: {gguf_s:.1f} s")

        tokenizer = policy.tokenizer
        prompts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                add_generation_prompt=True, return_dict=False,
            )
            for i in range(args.batch)
        ]
        sampling = SamplingParams(max_new_tokens=args.new_tokens, temperature=1.0)
        policy.generate(prompts, sampling)  # warm-up
        ours, theirs = [], []
        for repeat in range(args.repeats):
            torch.manual_seed(repeat)
            dt, completions = seconds(lambda: policy.generate(prompts, sampling))
            ours.append(sum(len(c.token_ids) for c in completions) / dt)
            torch.manual_seed(repeat)
            dt, tokens = seconds(lambda: hf_generate(policy, prompts, args.new_tokens))
            theirs.append(tokens / dt)
        print(f"generation, batch {args.batch} x {args.new_tokens} new tokens, "
              f"median of {args.repeats}:")
        print(f"  TransformersPolicy.generate:          {statistics.median(ours):7.1f} tokens/s")
        print(f"  baseline, transformers model.generate: {statistics.median(theirs):7.1f} tokens/s")


if __name__ == "__main__":
    main()
