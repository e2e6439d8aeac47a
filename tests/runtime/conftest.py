"""Fixtures for the runtime tests: real backends, real containers, and a leak check at the end."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from gymbox.runtime import DockerBackend, LocalBackend, Sandbox, SandboxSpec

ENGINES_SH = Path(__file__).resolve().parents[2] / "scripts" / "engines.sh"
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


@dataclass
class ExtraEngine:
    """An engine of its own, started by scripts/engines.sh, on a unix socket and on loopback TCP
    with TLS client verification (a test CA in ``tls_dir``)."""

    directory: Path
    tls_port: int

    @property
    def host(self) -> str:
        return f"unix://{self.directory}/1/docker.sock"

    @property
    def tls_host(self) -> str:
        return f"tcp://127.0.0.1:{self.tls_port + 1}"

    @property
    def tls_dir(self) -> Path:
        return self.directory / "1" / "tls"

    def script(self, *args: str) -> None:
        env = {**os.environ, "GYMBOX_ENGINES_DIR": str(self.directory),
               "GYMBOX_ENGINE_TLS_PORT": str(self.tls_port)}
        subprocess.run([str(ENGINES_SH), *args], env=env, check=True, timeout=180)

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.host)

    def tls_client(self) -> docker.DockerClient:
        certs = self.tls_dir
        tls = docker.tls.TLSConfig(client_cert=(str(certs / "cert.pem"), str(certs / "key.pem")),
                                   ca_cert=str(certs / "ca.pem"), verify=True)
        # requests would let REQUESTS_CA_BUNDLE replace the engine's CA (psf/requests#3829);
        # without the environment the API version must be given.
        client = docker.DockerClient(base_url=self.tls_host, tls=tls, version="1.41")
        client.api.trust_env = False
        return client


@pytest.fixture(scope="session")
def extra_engine() -> Iterator[ExtraEngine]:
    """A second engine for this session (restarted and killed by tests, never the main one)."""
    if os.geteuid() != 0 or shutil.which("dockerd") is None:
        pytest.skip("needs root and dockerd to start a second engine (scripts/engines.sh)")
    parent = "/work/engines" if os.path.isdir("/work/engines") else tempfile.gettempdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1] - 1
    engine = ExtraEngine(Path(f"{parent}/runtime-test-{os.getpid()}"), port)
    try:
        engine.script("start", "1")
        yield engine
    finally:
        engine.script("stop")
        shutil.rmtree(engine.directory, ignore_errors=True)
