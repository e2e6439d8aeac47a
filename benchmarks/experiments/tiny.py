"""The experiments' policy: a tiny Llama on SmolLM2's tokenizer, warmed up on the task family.

The embedded SmolLM2-135M takes seconds per sampled turn on two cores, too slow for tens of
steps × arms × seeds. A 2-layer Llama (hidden 128) built from the same tokenizer and chat
template samples in milliseconds; it is randomly initialised and then imitates the task's
scripted expert (:func:`gymbox.agents.warmup.imitate_expert`, the warm-up ``gymbox train``
runs) until it writes the task's turns, so that RL has a policy whose mechanism it can act on.
``embedded`` policies are the real SmolLM2-135M, warmed up the same way.

Warmed-up weights are cached per (task, model, seed, warm-up) under ``cache_dir``, so the arms
of one experiment start from the same policy, and reruns skip the warm-up. Processes that want
the same warm-up at once (the seeds of ``--jobs 2``) take turns: one trains, the others wait
for it and load what it saved.

Example:
    >>> policy = await warmed_up_policy("tiny", make_env, seed=0, cache_dir=Path("runs/cache"),
    ...                           warmup=Warmup(steps=60), name="stored_number")  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from gymbox.agents.models import resolve_model_dir
from gymbox.agents.policy import TransformersPolicy
from gymbox.agents.rollout import Budget
from gymbox.agents.trainer import PolicyTrainer, TrainerConfig
from gymbox.agents.warmup import imitate_expert
from gymbox.envs.core import ToolEnv

ModelKind = Literal["tiny", "embedded"]
DESCRIPTIONS = {
    "tiny": "tiny 2-layer Llama on SmolLM2's tokenizer, trained from scratch by imitation",
    "embedded": "embedded SmolLM2-135M-Instruct, warmed up by imitation",
}
"""What each policy kind is, for the experiments' output."""


@dataclass(frozen=True)
class Warmup:
    """Imitation before RL: ``steps`` steps of ``episodes`` expert demonstrations at ``lr``."""

    steps: int = 60
    episodes: int = 8
    lr: float = 2e-3


def tiny_policy(*, seed: int, hidden: int = 128, layers: int = 2) -> TransformersPolicy:
    """A randomly initialised Llama with SmolLM2's tokenizer and chat template."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(), local_files_only=True)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=2048, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
    )
    return TransformersPolicy(LlamaForCausalLM(config), tokenizer)


async def warmed_up_policy(
    kind: ModelKind, make_env: Callable[[], ToolEnv], *, seed: int, cache_dir: Path,
    warmup: Warmup, name: str, budget: Budget, log: Callable[[str], None] = print,
) -> TransformersPolicy:
    """The ``kind`` policy after ``warmup`` on ``make_env``'s expert, from the cache if there."""
    key = f"{name}-{kind}-seed{seed}-{warmup.steps}x{warmup.episodes}-lr{warmup.lr:g}"
    directory = cache_dir / key
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f"{key}.lock", "w") as lock:  # closing it releases the lock
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        return await _warmed_up(kind, make_env, seed=seed, directory=directory,
                                warmup=warmup, name=name, budget=budget, log=log)


async def _warmed_up(
    kind: ModelKind, make_env: Callable[[], ToolEnv], *, seed: int, directory: Path,
    warmup: Warmup, name: str, budget: Budget, log: Callable[[str], None],
) -> TransformersPolicy:
    if (directory / "warmup.json").is_file():
        log(f"warm-up: cached {directory}")
        return TransformersPolicy.load(directory)
    policy = tiny_policy(seed=seed) if kind == "tiny" else TransformersPolicy.load()
    if warmup.steps:
        started = time.perf_counter()
        trainer = PolicyTrainer(policy.model, TrainerConfig(learning_rate=warmup.lr,
                                                            micro_batch_size=8))

        def progress(step: int, nll: float) -> None:
            if step % 10 == 0 or step == warmup.steps - 1:
                log(f"warm-up {name} ({kind}, seed {seed}): step {step + 1}/{warmup.steps} "
                    f"nll {nll:.3f} ({time.perf_counter() - started:.0f}s)")

        nll = await imitate_expert(
            trainer, policy.tokenizer, make_env, steps=warmup.steps,
            episodes_per_step=warmup.episodes, first_seed=500_000_000 + seed * 1_000_003,
            budget=budget, on_step=progress)
        info = {"warmup": asdict(warmup), "nll": nll, "seconds": time.perf_counter() - started}
    else:
        info = {"warmup": asdict(warmup), "nll": [], "seconds": 0.0}
    directory.mkdir(parents=True, exist_ok=True)
    policy.model.save_pretrained(directory)
    policy.tokenizer.save_pretrained(directory)
    (directory / "warmup.json").write_text(json.dumps(info))
    return policy
