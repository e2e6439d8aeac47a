"""Sandboxes on an engine other than the default socket: one reached over TCP with TLS, and one
that is restarted while a call runs."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from gymbox.runtime import DockerBackend, Sandbox, SandboxPool, SandboxSpec
from gymbox.runtime.attribution import Cause, attribute
from gymbox.runtime.cleanup import gymbox_containers, owner_labels
from gymbox.runtime.docker_backend import EngineWatch
from gymbox.runtime.errors import InfraError
from gymbox.runtime.recovery import RecoveringSandboxes, RecoveryPolicy
from tests.runtime.conftest import OWNER_FILTER

RESTART_CLEANUP_S = 60.0
"""A restarted engine removes its dead auto-remove containers itself, in its own time."""

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(600)]


async def test_a_sandbox_runs_on_a_tls_engine_with_its_fast_path(extra_engine):
    client = extra_engine.tls_client()
    try:
        async with await Sandbox.open(SandboxSpec(), backend=DockerBackend(client)) as sandbox:
            result = await sandbox.exec(["sh", "-c", "echo over tls; id -u"], timeout=30)
            cell = await sandbox.run_python("6 * 7", timeout=30)
            sandbox_id = sandbox.id
        assert (result.exit_code, result.stdout) == (0, "over tls\n1000\n")
        assert cell.stdout == "42\n"
        # The supervisor ran attached (no per-call `docker exec`): run_python needs it.
        assert not client.api.containers(all=True, filters={"id": sandbox_id})
    finally:
        client.close()


class Verdicts(logging.Handler):
    """The recovery's log lines (each failure's verdict and its reason)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


async def test_an_engine_restarted_mid_call_is_infra_recovered_never_scored(extra_engine):
    """The engine is SIGKILLed while a command runs and started again: the failure is seen as
    the engine going away (its event stream broke), attributed INFRA, and the episode goes on
    in a fresh sandbox on the restarted engine with its journal replayed, or ends masked;
    never scored as the agent's. Nothing is left on the engine."""
    client = extra_engine.client()
    spec = SandboxSpec()
    policy = RecoveryPolicy(deadline_s=120.0)
    verdicts = Verdicts()
    logger = logging.getLogger("gymbox.runtime.recovery")
    logger.addHandler(verdicts)
    level, logger.level = logger.level, logging.INFO
    try:
        async with SandboxPool(spec, size=1, backend=DockerBackend(client)) as pool:
            sandboxes = RecoveringSandboxes(pool, policy)
            async with sandboxes.acquire() as sandbox:
                await sandbox.exec(["sh", "-c", "echo before > state"], timeout=30)
                call = asyncio.create_task(
                    sandbox.exec(["sh", "-c", "sleep 3; cat state"], timeout=60))
                await asyncio.sleep(1.0)
                await asyncio.to_thread(extra_engine.script, "kill", "1")
                await asyncio.sleep(1.0)
                await asyncio.to_thread(extra_engine.script, "restart", "1")
                try:
                    result = await call
                except InfraError as exc:  # masked: allowed, and must be infra
                    assert attribute(exc, exc.evidence).cause is Cause.INFRA
                else:
                    assert (result.exit_code, result.stdout) == (0, "before\n")
                    assert sandbox.journal[-1].duration_s >= 0
            metrics = sandboxes.metrics
        assert sum(metrics.agent_caused.values()) == 0, metrics
        assert sum(metrics.recovered.values()) + sum(metrics.masked.values()) >= 1, metrics
        assert any("the engine went away" in v for v in verdicts.lines), verdicts.lines
        deadline = time.monotonic() + RESTART_CLEANUP_S
        while gymbox_containers(client, OWNER_FILTER) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        assert gymbox_containers(client, OWNER_FILTER) == []
    finally:
        logger.removeHandler(verdicts)
        logger.level = level
        client.close()


def test_a_sandbox_launched_before_the_watch_connected_still_sees_its_engine_go(extra_engine):
    """On a loaded host the engine watch can connect after a sandbox was launched (it waits
    WATCH_CONNECT_S, no longer): that sandbox has no generation, yet any break the watch sees
    later came after its launch, and is the evidence that its engine went away."""
    client = extra_engine.client()
    watch = EngineWatch(client)
    try:
        watch.wait_connected(60.0)
        assert watch.generation is not None and watch.lost_since(None) is None
        extra_engine.script("kill", "1")
        give_up = time.monotonic() + 60.0
        while watch.lost_since(None) is None and time.monotonic() < give_up:
            time.sleep(0.1)
        assert watch.lost_since(None) is not None
        assert watch.lost_since(watch.generation) == watch.lost_since(None)
    finally:
        watch.close()
        extra_engine.script("restart", "1")
        client.close()


async def test_the_first_launch_after_an_engine_restart_reaps_what_the_restart_left(
        extra_engine):
    """A restart can leave stopped containers that the engine did not auto-remove (it was down
    when they stopped); the backend reaps again once it sees the engine come back."""
    client = extra_engine.client()
    backend = DockerBackend(client)
    try:
        await (await backend.launch(SandboxSpec())).destroy()  # the first launch reaps
        await asyncio.to_thread(extra_engine.script, "kill", "1")
        await asyncio.to_thread(extra_engine.script, "restart", "1")
        left = client.api.create_container(
            "gymbox-sandbox:latest", command=["true"], labels=owner_labels(60),
            host_config=client.api.create_host_config(network_mode="none"))["Id"]
        client.api.start(left)
        client.api.wait(left, timeout=30)
        # The backend learns of the restart from its event stream, which reconnects within a
        # second or two of the engine answering.
        deadline = time.monotonic() + 30
        while client.api.containers(all=True, filters={"id": left}) and \
                time.monotonic() < deadline:
            await (await backend.launch(SandboxSpec())).destroy()
            await asyncio.sleep(1.0)
        assert client.api.containers(all=True, filters={"id": left}) == []
    finally:
        client.close()
