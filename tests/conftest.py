"""Fixtures every layer's tests share: the real engine, and a check that nothing leaked."""

from __future__ import annotations

from collections.abc import Iterator

import docker
import pytest

from gymbox.runtime import engine
from gymbox.runtime.errors import EngineUnavailable

LABEL = "gymbox"


def _gymbox_containers(client: docker.DockerClient) -> set[str]:
    return {c.id for c in client.containers.list(all=True, filters={"label": LABEL})}


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
    before = _gymbox_containers(client)
    yield
    leaked = _gymbox_containers(client) - before
    for container_id in leaked:
        client.containers.get(container_id).remove(force=True)
    client.close()
    assert not leaked, f"{len(leaked)} gymbox containers were left behind by the tests"
