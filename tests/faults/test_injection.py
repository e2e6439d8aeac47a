"""Each fault kind, injected for real into a real sandbox, and what the sandbox makes of it."""

from __future__ import annotations

import asyncio
import contextlib
import time

import docker.errors
import pytest

from gymbox.runtime import (
    AmbiguousExecution,
    DockerBackend,
    EngineUnavailable,
    InfraError,
    LocalBackend,
    Sandbox,
    SandboxDied,
    SandboxUnresponsive,
    SupervisorFault,
)
from gymbox.runtime.faults import FaultKind, FaultPlan, inject_faults
from tests.faults.workload import SPEC, containers_left

pytestmark = pytest.mark.docker


def container_state(docker_client, container_id: str) -> dict | None:
    """The container's state, or None once it is gone (auto-removal may win any race)."""
    try:
        return docker_client.api.inspect_container(container_id)["State"]
    except docker.errors.NotFound:
        return None


@contextlib.asynccontextmanager
async def first_call_struck(kind: FaultKind):
    """A sandbox behind an injector that strikes its first call with ``kind``: yields the
    failure, how long the call took, the sandbox and the injector; cleans up after."""
    async with inject_faults(FaultPlan(scripted={1: kind})) as faults:
        sandbox = await Sandbox.open(SPEC, backend=faults)
        try:
            started = time.monotonic()
            with pytest.raises(InfraError) as caught:
                await sandbox.exec("echo hi", timeout=1)
            yield caught.value, time.monotonic() - started, sandbox, faults
        finally:
            await sandbox.close()


async def test_kill_container_kills_it_mid_call(docker_client):
    async with first_call_struck(FaultKind.KILL_CONTAINER) as (error, _, sandbox, faults):
        assert isinstance(error, SandboxDied) and not error.retry_safe
        state = container_state(docker_client, sandbox.id)
        assert state is None or not state["Running"]
        [logged] = faults.log.on(sandbox.id)
        assert (logged.kind, logged.sandbox, logged.request) == (
            FaultKind.KILL_CONTAINER, sandbox.id, "exec: /bin/sh -c echo hi")


async def test_pause_container_hangs_the_call_until_the_liveness_probe_finds_it(docker_client):
    plan = FaultPlan(scripted={1: FaultKind.PAUSE_CONTAINER})
    async with inject_faults(plan) as faults, await Sandbox.open(SPEC, backend=faults) as sandbox:
        started = time.monotonic()
        with pytest.raises(SandboxUnresponsive, match="paused"):
            await sandbox.exec("echo hi", timeout=30)  # a 31.2 s backstop
        assert time.monotonic() - started < SPEC.liveness_probe_s + 1.5
        assert container_state(docker_client, sandbox.id)["Paused"]
    assert not await containers_left(docker_client)  # unpaused, then removed


async def test_kill_supervisor_leaves_a_running_container_without_its_supervisor(docker_client):
    async with first_call_struck(FaultKind.KILL_SUPERVISOR) as (error, _, sandbox, _):
        assert isinstance(error, AmbiguousExecution)  # it may have run; its answer is lost
        assert container_state(docker_client, sandbox.id)["Running"]
        top = docker_client.api.top(sandbox.id, ps_args="-eo pid,args")["Processes"]
        assert not any("gymbox-supervisor" in " ".join(p) for p in top), top
        # and the engine saw who did it: an exec into the container, from outside
        assert "exec_start" in error.evidence.outside()


async def test_garbled_and_truncated_responses():
    async with first_call_struck(FaultKind.GARBLE_RESPONSE) as (error, _, _, _):
        assert isinstance(error, SupervisorFault) and "unreadable frame" in str(error)
    async with first_call_struck(FaultKind.TRUNCATE_RESPONSE) as (error, _, _, _):
        assert isinstance(error, AmbiguousExecution)


async def test_engine_outage_drops_the_call_and_refuses_launches_for_a_while():
    plan = FaultPlan(scripted={1: FaultKind.ENGINE_OUTAGE}, outage_s=1.5)
    async with inject_faults(plan) as faults:
        sandbox = await Sandbox.open(SPEC, backend=faults)
        with pytest.raises(EngineUnavailable):
            await sandbox.exec("echo hi", timeout=1)
        with pytest.raises(EngineUnavailable, match="injected engine_outage"):
            await Sandbox.open(SPEC, backend=faults)
        closing = time.monotonic()
        await sandbox.close()  # waits for the engine to come back, then removes the container
        assert time.monotonic() - closing > 0.5
        async with await Sandbox.open(SPEC, backend=faults) as again:
            assert (await again.exec("echo back", timeout=2)).stdout == "back\n"


async def test_slow_start_delays_the_launch():
    plan = FaultPlan({FaultKind.SLOW_START: 1.0}, slow_start_s=1.0)
    async with inject_faults(plan) as faults:
        started = time.monotonic()
        async with await Sandbox.open(SPEC, backend=faults) as sandbox:
            assert time.monotonic() - started >= 1.0
            assert (await sandbox.exec("echo up", timeout=2)).ok
        assert [f.kind for f in faults.log] == [FaultKind.SLOW_START]


async def test_pings_and_leases_are_never_struck_and_faults_are_transient():
    plan = FaultPlan({FaultKind.GARBLE_RESPONSE: 1.0}, spare_s=30)
    async with inject_faults(plan, DockerBackend()) as faults:
        async with await Sandbox.open(SPEC, backend=faults) as first:
            await first.ping()
            with pytest.raises(SupervisorFault):
                await first.exec("echo same", timeout=2)
        async with await Sandbox.open(SPEC, backend=faults) as second:
            assert (await second.exec("echo same", timeout=2)).stdout == "same\n"
            with pytest.raises(SupervisorFault):
                await second.exec("echo different", timeout=2)
        assert faults.log.as_dict() == {"faults/injected": 2.0,
                                        "faults/injected/garble_response": 2.0}
        assert faults.requests == 3


async def test_faults_at_random_are_logged_with_their_sandbox_and_time():
    plan = FaultPlan.uniform(0.5, seed=4, kinds=frozenset({FaultKind.GARBLE_RESPONSE,
                                                           FaultKind.TRUNCATE_RESPONSE}))
    outcomes = []
    async with inject_faults(plan) as faults:
        for n in range(6):
            async with await Sandbox.open(SPEC, backend=faults) as sandbox:
                try:
                    await sandbox.exec(f"echo {n}", timeout=2)
                    outcomes.append(None)
                except InfraError:
                    outcomes.append(sandbox.id)
            await asyncio.sleep(0)
    struck = [f.sandbox for f in faults.log]
    assert struck == [o for o in outcomes if o is not None]
    assert [f.request for f in faults.log] == [
        f"exec: /bin/sh -c echo {n}" for n, o in enumerate(outcomes) if o is not None]
    times = [f.at_s for f in faults.log]
    assert times == sorted(times)
    assert any(outcomes) and not all(outcomes)
    drawn = plan.draw_sequence(6)  # the plan alone says which calls fail, and how
    assert [o is not None for o in outcomes] == [d is not None for d in drawn]
    assert [str(f.kind) for f in faults.log] == [d for d in drawn if d is not None]


@pytest.mark.filterwarnings("ignore:gymbox LocalBackend runs agent code")
async def test_wire_faults_work_on_any_backend():
    plan = FaultPlan(scripted={1: FaultKind.GARBLE_RESPONSE, 2: FaultKind.TRUNCATE_RESPONSE})
    async with inject_faults(plan, LocalBackend()) as faults:
        async with await Sandbox.open(SPEC, backend=faults) as sandbox:
            with pytest.raises(SupervisorFault):
                await sandbox.exec("echo one", timeout=2)
        async with await Sandbox.open(SPEC, backend=faults) as sandbox:
            with pytest.raises(AmbiguousExecution):
                await sandbox.exec("echo two", timeout=2)
        async with await Sandbox.open(SPEC, backend=faults) as sandbox:
            assert (await sandbox.exec("echo three", timeout=2)).stdout == "three\n"
    assert [f.kind for f in faults.log] == [FaultKind.GARBLE_RESPONSE,
                                            FaultKind.TRUNCATE_RESPONSE]
