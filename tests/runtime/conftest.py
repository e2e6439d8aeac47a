"""Fixtures for the runtime tests: real backends, real containers, and a leak check at the end."""

from __future__ import annotations

import os
import time

import docker
import pytest

from gymbox.runtime import DockerBackend, LocalBackend, Sandbox, SandboxSpec

OWNER_FILTER = {"label": f"gymbox.owner_pid={os.getpid()}"}

BACKENDS = [
    pytest.param("docker", marks=pytest.mark.docker, id="docker"),
    pytest.param("local", id="local"),
]

# Short grace and backstop keep the fault tests quick; every other default is the product's.
FAST = SandboxSpec(grace_s=0.5, backstop_margin_s=2.0)


def make_backend(name: str):
    return DockerBackend() if name == "docker" else LocalBackend()


@pytest.fixture(params=BACKENDS)
def backend(request):
    return make_backend(request.param)


@pytest.fixture
async def sandbox(backend):
    sb = await Sandbox.open(FAST, backend=backend)
    yield sb
    await sb.close()


@pytest.fixture(scope="session")
def engine_client():
    """A client to the real engine (the docker-marked tests need one)."""
    client = docker.from_env()
    yield client
    client.close()


def own_containers(client) -> list[dict]:
    return client.api.containers(all=True, filters=OWNER_FILTER)


@pytest.fixture(scope="session", autouse=True)
def no_container_left_behind():
    """After the whole session, no container made by this test process may remain."""
    yield
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException:
        return  # no engine: the docker-marked tests did not run, so nothing could leak
    deadline = time.monotonic() + 15
    while own_containers(client) and time.monotonic() < deadline:
        time.sleep(0.2)  # auto-removal of just-closed containers is asynchronous
    left = own_containers(client)
    client.close()
    assert not left, f"containers left behind: {[c['Id'][:12] for c in left]}"
