"""SandboxPool: warm, health-checked sandboxes, one episode each (one that an episode left
untouched serves another)."""

from __future__ import annotations

import asyncio

import pytest

from gymbox.runtime import (
    DockerBackend,
    EngineUnavailable,
    ImageMissing,
    InstanceState,
    InvalidRequest,
    SandboxPool,
    SandboxSpec,
)
from gymbox.runtime.faults import FaultKind, FaultPlan, inject_faults
from gymbox.runtime.retry import Backoff
from tests.runtime.conftest import FAST, own_containers


async def wait_ready(pool: SandboxPool, count: int) -> None:
    for _ in range(200):
        if pool.ready >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the pool did not refill to {count}")


async def gone(instance, *, within_s: float = 10.0) -> bool:
    """Whether the instance stops running within ``within_s`` (removal is in the background)."""
    deadline = asyncio.get_running_loop().time() + within_s
    while await instance.state() is InstanceState.RUNNING:
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_each_episode_gets_a_fresh_sandbox_that_is_destroyed_after(backend):
    async with SandboxPool(FAST, size=2, backend=backend) as pool:
        assert pool.ready == 2
        async with pool.acquire() as first:
            await first.write_file("secret.txt", "episode 1")
            first_instance = first.instance
        with pytest.raises(InvalidRequest, match="closed"):
            await first.exec("true", timeout=5)
        assert await gone(first_instance)
        async with pool.acquire() as second:
            assert second.id != first.id
            with pytest.raises(FileNotFoundError):
                await second.read_file("secret.txt")
        await wait_ready(pool, 2)


async def test_a_sandbox_its_episode_never_used_serves_a_later_episode(backend):
    """An episode that sent its sandbox no request (it answered without a tool) left nothing
    in it: the sandbox goes back to the pool, saving a start and a removal, under a new handle,
    so the old holder cannot reach the next episode's sandbox. One that ran anything is not."""
    async with SandboxPool(FAST, size=1, backend=backend) as pool:
        async with pool.acquire() as unused:
            await unused.ping()  # the health check's request does not count
            await wait_ready(pool, 1)  # its replacement has started
        with pytest.raises(InvalidRequest, match="closed"):
            await unused.exec("true", timeout=5)
        assert pool.ready == 2
        async with pool.acquire() as first, pool.acquire() as second:
            (again,) = [s for s in (first, second) if s.id == unused.id]
            assert again is not unused
            assert (await again.exec("echo hi", timeout=5)).stdout == "hi\n"
            touched = again.instance
        assert await gone(touched)
        async with pool.acquire() as later:
            assert later.id != unused.id


async def test_a_sandbox_sent_any_request_is_never_handed_on(backend):
    """A request counts from the moment it is sent, whatever it answers: a failed one (a file
    that is not there) still touched the sandbox, so it is removed, not reused."""
    async with SandboxPool(FAST, size=1, backend=backend) as pool:
        async with pool.acquire() as sandbox:
            with pytest.raises(FileNotFoundError):
                await sandbox.read_file("missing.txt")
            assert not sandbox.untouched
            with pytest.raises(InvalidRequest, match="untouched"):
                sandbox.hand_on()
            instance = sandbox.instance
        assert await gone(instance)


@pytest.mark.docker
async def test_released_container_is_removed_before_the_pool_closes(engine_client):
    pool = SandboxPool(FAST, size=1, backend=DockerBackend())
    async with pool, pool.acquire() as sandbox:
        container_id = sandbox.id
        assert (await sandbox.exec("echo hi", timeout=5)).ok
    assert not engine_client.api.containers(all=True, filters={"id": container_id})


@pytest.mark.docker
async def test_unhealthy_pooled_sandbox_is_replaced(engine_client):
    async with SandboxPool(FAST, size=1, backend=DockerBackend()) as pool:
        (pooled,) = own_containers(engine_client)
        engine_client.api.kill(pooled["Id"])  # behind the pool's back
        async with pool.acquire() as sandbox:
            assert sandbox.id != pooled["Id"]
            assert (await sandbox.exec("echo healthy", timeout=5)).stdout == "healthy\n"


@pytest.mark.docker
async def test_start_failures_reach_the_acquirer_instead_of_hanging():
    pool = SandboxPool(SandboxSpec(image="gymbox-sandbox:no-such-tag"), size=1,
                       backend=DockerBackend())
    await pool.start()
    with pytest.raises(ImageMissing):
        async with pool.acquire():
            pass
    await pool.close()


async def test_concurrent_episodes(backend):
    async with SandboxPool(FAST, size=4, backend=backend) as pool:
        async def episode(i: int) -> str:
            async with pool.acquire() as sandbox:
                return (await sandbox.exec(f"echo {i}", timeout=10)).stdout

        assert await asyncio.gather(*(episode(i) for i in range(8))) == [f"{i}\n"
                                                                          for i in range(8)]


def test_bad_pool_arguments():
    with pytest.raises(InvalidRequest):
        SandboxPool(FAST, size=0, backend=DockerBackend())


@pytest.mark.docker
async def test_failed_starts_are_told_to_waiters_then_forgotten(caplog):
    """While the engine is down, an acquirer with nothing ready gets the failure; once it is
    back, the next acquirer gets a sandbox, not an old error; the log has two lines, not one
    per failed start."""
    plan = FaultPlan(scripted={1: FaultKind.ENGINE_OUTAGE}, outage_s=1.5)
    async with (inject_faults(plan) as faults,
                SandboxPool(FAST, size=1, backend=faults,
                            start_backoff=Backoff(initial_s=0.05, max_s=0.1)) as pool):
        async with pool.acquire() as struck:
            with pytest.raises(EngineUnavailable):
                await struck.exec("echo hi", timeout=5)  # the engine goes away for 1.5 s
        await wait_ready(pool, 1)  # the replacement started before the outage
        async with pool.acquire():  # held, and its own replacement cannot start now
            with pytest.raises(EngineUnavailable, match="injected engine_outage"):
                async with pool.acquire():
                    pass
            assert faults.engine_down
            await faults.wait_for_engine()
        async with pool.acquire() as after:
            assert (await after.exec("echo back", timeout=5)).stdout == "back\n"
    assert pool.start_failures.count == 0
    streak = [r.getMessage() for r in caplog.records if "pooled sandboxes" in r.getMessage()]
    assert len(streak) == 2 and "fail to start" in streak[0] and "start again" in streak[1]
    failed_starts = int(streak[1].split("after ")[1].split()[0])
    assert failed_starts >= 3  # several failed starts, one line each way
