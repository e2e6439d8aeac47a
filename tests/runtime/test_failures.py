"""Infrastructure failures are typed exceptions, never agent outcomes, and never hang.

The faults here are real: the container is killed or paused through the engine, the supervisor
is SIGKILLed inside the container, the engine address points nowhere.
"""

from __future__ import annotations

import asyncio
import time

import docker
import docker.errors
import pytest
import requests.exceptions

from gymbox.runtime import (
    AmbiguousExecution,
    ConfigurationError,
    DockerBackend,
    EngineUnavailable,
    ImageMissing,
    Sandbox,
    SandboxDied,
    SandboxSpec,
    SandboxStartError,
    SandboxUnresponsive,
)
from gymbox.runtime.classify import control_call
from tests.runtime.conftest import FAST, own_containers

pytestmark = pytest.mark.docker

@pytest.fixture
async def sandbox():
    sb = await Sandbox.open(FAST, backend=DockerBackend())
    yield sb
    await sb.close()


async def test_container_killed_mid_call_is_sandbox_died(sandbox, engine_client):
    running = asyncio.create_task(sandbox.exec("sleep 30", timeout=60))
    await asyncio.sleep(0.3)
    engine_client.api.kill(sandbox.id)
    with pytest.raises(SandboxDied) as caught:
        await running
    assert not caught.value.retry_safe
    with pytest.raises(SandboxDied) as later:
        await sandbox.exec("true", timeout=5)
    assert later.value.retry_safe  # nothing was sent to a sandbox known to be broken


async def test_paused_container_is_unresponsive_not_a_hang(sandbox, engine_client):
    engine_client.api.pause(sandbox.id)
    start = time.monotonic()
    with pytest.raises(SandboxUnresponsive):
        await sandbox.exec("true", timeout=0.5)
    backstop = 0.5 + FAST.grace_s + FAST.backstop_margin_s
    assert time.monotonic() - start < backstop + 1.5


async def test_container_paused_mid_call_is_found_long_before_the_backstop(sandbox,
                                                                           engine_client):
    running = asyncio.create_task(sandbox.exec("sleep 60", timeout=30))  # backstop: 32.5 s
    await asyncio.sleep(0.3)
    engine_client.api.pause(sandbox.id)
    paused = time.monotonic()
    with pytest.raises(SandboxUnresponsive, match="paused"):
        await running
    assert time.monotonic() - paused < FAST.liveness_probe_s + 1.5
    with pytest.raises(SandboxDied) as later:
        await sandbox.exec("true", timeout=5)
    assert later.value.retry_safe
    engine_client.api.unpause(sandbox.id)  # so that the fixture can remove it


async def test_slow_silent_commands_are_not_taken_for_hangs(sandbox):
    started = time.monotonic()
    slept = await sandbox.exec("sleep 3", timeout=30)  # silent for six liveness probes
    assert slept.ok and time.monotonic() - started >= 3
    spun = await sandbox.run_python("while True: pass", timeout=2)  # a CPU hog, also silent
    assert spun.timed_out and spun.interpreter_reset
    assert (await sandbox.exec("echo alive", timeout=5)).stdout == "alive\n"


async def test_killed_supervisor_with_live_container_is_ambiguous(sandbox, engine_client):
    running = asyncio.create_task(sandbox.exec("sleep 30", timeout=60))
    await asyncio.sleep(0.3)
    killer = ("import os\nfor p in filter(str.isdigit, os.listdir('/proc')):\n"
              "    if int(p) != os.getpid() and b'gymbox-supervisor' in "
              "open(f'/proc/{p}/cmdline', 'rb').read():\n        os.kill(int(p), 9)\n")
    exec_id = engine_client.api.exec_create(sandbox.id, ["python3", "-c", killer], user="0")
    engine_client.api.exec_start(exec_id)
    with pytest.raises(AmbiguousExecution):
        await running


async def test_unreachable_engine_is_engine_unavailable():
    client = docker.DockerClient(base_url="unix:///nonexistent/docker.sock", version="1.41")
    backend = DockerBackend(client, control_deadline_s=0.5)
    with pytest.raises(EngineUnavailable) as caught:
        await Sandbox.open(FAST, backend=backend)
    assert caught.value.retry_safe and caught.value.kind == "engine_unavailable"


async def test_missing_image_says_how_to_build_it(engine_client):
    before = own_containers(engine_client)
    with pytest.raises(ImageMissing, match="gymbox image build"):
        await Sandbox.open(SandboxSpec(image="gymbox-sandbox:no-such-tag"),
                           backend=DockerBackend())
    assert own_containers(engine_client) == before


async def test_control_calls_retry_transient_failures_only():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise requests.exceptions.ConnectionError("engine restarting")
        return "created"

    assert await control_call(flaky, doing="creating", deadline_s=10) == "created"
    assert len(calls) == 3

    refused = []

    def bad_request():
        refused.append(1)
        raise docker.errors.APIError("400 Client Error", explanation="invalid mount")

    with pytest.raises(SandboxStartError, match="invalid mount"):
        await control_call(bad_request, doing="creating", deadline_s=10)
    assert len(refused) == 1

    def always_down():
        raise requests.exceptions.ConnectionError("connection refused")

    start = time.monotonic()
    with pytest.raises(EngineUnavailable):
        await control_call(always_down, doing="creating", deadline_s=0.5)
    assert time.monotonic() - start < 3


async def test_settings_the_engine_rejects_are_a_configuration_error(engine_client):
    with pytest.raises(ConfigurationError, match="SandboxSpec"):
        await Sandbox.open(SandboxSpec(cpus=4096), backend=DockerBackend())
    assert own_containers(engine_client) == []


async def test_container_that_fails_to_start_is_removed(engine_client):
    with pytest.raises(SandboxStartError, match=r"rlimit|ulimit|OCI"):
        await Sandbox.open(SandboxSpec(nofile=2**40), backend=DockerBackend())
    assert own_containers(engine_client) == []
