"""Finding, converting and caching models: local files only, clear errors, no stale cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gymbox.agents.models import (
    InvalidModel,
    ModelNotFound,
    default_cache_dir,
    embedded_gguf_path,
    load_model,
    resolve_model_dir,
)
from gymbox.agents.policy import SamplingParams, TransformersPolicy
from gymbox.runtime.errors import ConfigurationError

pytestmark = pytest.mark.model


def _snapshot(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}


def test_embedded_gguf_is_converted_to_a_plain_transformers_directory(smollm2_dir: Path):
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(
        p.name for p in smollm2_dir.iterdir()
    )
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert "quantization_config" not in config, "a GGUF marker would force re-quantized loads"


def test_second_resolve_reuses_the_cache_without_converting(smollm2_dir: Path, model_cache):
    before = _snapshot(smollm2_dir)
    assert resolve_model_dir(cache_dir=model_cache) == smollm2_dir
    assert _snapshot(smollm2_dir) == before
    assert [p for p in model_cache.iterdir() if p.name.startswith(".")] == []


def test_an_explicit_gguf_path_with_the_same_content_shares_the_cache_entry(
    smollm2_dir: Path, model_cache
):
    assert resolve_model_dir(embedded_gguf_path(), cache_dir=model_cache) == smollm2_dir
    assert resolve_model_dir(str(embedded_gguf_path()), cache_dir=model_cache) == smollm2_dir


def test_a_transformers_directory_is_loaded_as_is(smollm2_dir: Path, model_cache):
    assert resolve_model_dir(smollm2_dir, cache_dir=model_cache) == smollm2_dir
    model, tokenizer = load_model(smollm2_dir)
    assert not model.training
    assert tokenizer.pad_token_id is not None


def test_converted_model_answers_like_smollm2(smollm2: TransformersPolicy):
    tokenizer = smollm2.tokenizer
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}], add_generation_prompt=True,
        return_dict=False,
    )
    [completion] = smollm2.generate([prompt], SamplingParams(max_new_tokens=32, temperature=0))
    assert completion.finish_reason == "eos"
    assert "4" in completion.text


@pytest.mark.parametrize("source", ["/no/such/model", "HuggingFaceTB/SmolLM2-135M-Instruct"])
def test_a_missing_source_is_a_typed_error_and_never_a_download(source: str, tmp_path: Path):
    with pytest.raises(ModelNotFound, match="never downloads") as caught:
        resolve_model_dir(source, cache_dir=tmp_path)
    assert isinstance(caught.value, ConfigurationError)
    assert isinstance(caught.value, FileNotFoundError)
    assert list(tmp_path.iterdir()) == []


def test_a_directory_without_config_is_rejected(tmp_path: Path):
    with pytest.raises(InvalidModel, match=r"config\.json"):
        resolve_model_dir(tmp_path)


def test_a_file_that_is_not_gguf_is_rejected(tmp_path: Path):
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"\0" * 16)
    with pytest.raises(InvalidModel, match=r"\.gguf"):
        resolve_model_dir(weights)


def test_a_corrupt_gguf_fails_cleanly_and_leaves_no_cache_entry(tmp_path: Path):
    corrupt = tmp_path / "broken.gguf"
    corrupt.write_bytes(b"GGUF" + b"\x07" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(InvalidModel, match=r"broken\.gguf"):
        resolve_model_dir(corrupt, cache_dir=cache)
    assert list(cache.iterdir()) == []
    assert corrupt.read_bytes() == b"GGUF" + b"\x07" * 64


def test_cache_location_follows_gymbox_cache(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("GYMBOX_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "models"
