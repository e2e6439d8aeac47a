"""Fixtures every layer's tests share: the real engine, and a check that nothing leaked."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from gymbox.runtime import engine
from gymbox.runtime.cleanup import owner_alive
from gymbox.runtime.errors import EngineUnavailable

LABEL = "gymbox"


def _gymbox_containers(client: docker.DockerClient) -> dict[str, dict[str, str]]:
    """id → labels; ``sparse`` lists without inspecting each one, which races with removals."""
    listed = client.containers.list(all=True, sparse=True, filters={"label": LABEL})
    return {c.id: c.attrs.get("Labels") or {} for c in listed}


def _ours(labels: dict[str, str]) -> bool:
    """Made by this test process, or by a subprocess of it that has exited since. Containers of
    other live processes (another test run on the same engine) are not ours to judge."""
    return labels.get(f"{LABEL}.owner_pid") == str(os.getpid()) or not owner_alive(labels)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """A client to the real engine. The suite needs one: run `scripts/test.sh`, which starts it."""
    try:
        client = engine.connect()
    except EngineUnavailable as exc:
        pytest.fail(f"{exc} (the test suite runs against a real engine)", pytrace=False)
    yield client
    client.close()


@pytest.fixture(scope="session", autouse=True)
def no_leaked_containers() -> Iterator[None]:
    """Fail the session if a container labelled gymbox outlives the tests that made it."""
    try:
        client = engine.connect(timeout=10)
    except EngineUnavailable:
        yield
        return
    before = set(_gymbox_containers(client))
    yield
    leaked = [cid for cid, labels in _gymbox_containers(client).items()
              if cid not in before and _ours(labels)]
    for container_id in leaked:
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_container(container_id, force=True)
    client.close()
    assert not leaked, f"{len(leaked)} gymbox containers were left behind by the tests"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer randomly initialised Llama with SmolLM2's tokenizer and chat template, saved
    as a transformers model directory: real model code, fast enough for end-to-end runs."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from gymbox.agents.models import resolve_model_dir

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(), local_files_only=True)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    directory = tmp_path_factory.mktemp("tiny-model")
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
