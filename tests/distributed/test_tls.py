"""A remote engine over TCP with TLS client verification (scripts/engines.sh makes a test CA):
episodes run on it through its worker, a client without a certificate is refused with a
ConfigurationError, and nothing is left on it."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from gymbox.agents.rollout import Budget, demonstrate
from gymbox.distributed import (
    EngineConfig,
    EngineSet,
    ScaleConfig,
    TLSFiles,
    containers_on_engines,
    gc_engines,
)
from gymbox.envs.builtin.python_calc import PythonCalc
from gymbox.runtime.errors import ConfigurationError
from gymbox.runtime.recovery import RecoveringSandboxes

ENGINES_SH = Path(__file__).resolve().parents[2] / "scripts" / "engines.sh"

pytestmark = [pytest.mark.ray, pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def tls_engine(rig):
    """Engine 1 of its own directory, also on tcp://127.0.0.1:<free port> with TLS."""
    directory = Path(f"{rig.engines_dir}-tls")
    port = _free_port() - 1
    env = {**os.environ, "GYMBOX_ENGINES_DIR": str(directory),
           "GYMBOX_ENGINE_TLS_PORT": str(port)}
    try:
        subprocess.run([str(ENGINES_SH), "start", "1"], env=env, check=True, timeout=180)
        certs = directory / "1" / "tls"
        yield EngineConfig("tls", docker_host=f"tcp://127.0.0.1:{port + 1}", pool_size=2,
                           tls=TLSFiles(str(certs / "ca.pem"), str(certs / "cert.pem"),
                                        str(certs / "key.pem")))
    finally:
        subprocess.run([str(ENGINES_SH), "stop"], env=env, check=True, timeout=180)
        shutil.rmtree(directory, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_episodes_run_on_a_tls_engine(rig, tls_engine, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)

    async def main():
        async with EngineSet([tls_engine]) as pool:
            sandboxes = RecoveringSandboxes(pool)
            envs = [PythonCalc(sandboxes=sandboxes) for _ in range(3)]
            try:
                return await demonstrate(tokenizer, envs, seeds=[1, 2, 3],
                                         budget=Budget(max_tokens=512, max_turns=2))
            finally:
                for env in envs:
                    await env.aclose()

    played = asyncio.run(main())
    assert [(t.valid, t.reward.value) for t in played] == [(True, 1.0)] * 3
    scale = ScaleConfig(ray_address=rig.cluster.address, engines=(tls_engine,))
    gc_engines(scale)
    assert containers_on_engines(scale) == {"tls": []}


def test_a_client_without_a_certificate_is_refused_as_a_configuration_error(tls_engine):
    anonymous = EngineConfig("anonymous", docker_host=tls_engine.docker_host,
                             tls=TLSFiles(ca_cert=tls_engine.tls.ca_cert))
    with pytest.raises(ConfigurationError, match="refused the TLS handshake"):
        anonymous.connect(timeout=10)
