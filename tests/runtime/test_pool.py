"""SandboxPool: warm, health-checked sandboxes, one episode each."""

from __future__ import annotations

import asyncio

import pytest

from gymbox.runtime import (
    DockerBackend,
    ImageMissing,
    InstanceState,
    InvalidRequest,
    SandboxPool,
    SandboxSpec,
)
from tests.runtime.conftest import FAST, own_containers


async def wait_ready(pool: SandboxPool, count: int) -> None:
    for _ in range(200):
        if pool.ready >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the pool did not refill to {count}")


async def test_each_episode_gets_a_fresh_sandbox_that_is_destroyed_after(backend):
    async with SandboxPool(FAST, size=2, backend=backend) as pool:
        assert pool.ready == 2
        async with pool.acquire() as first:
            await first.write_file("secret.txt", "episode 1")
            first_instance = first.instance
        assert await first_instance.state() is not InstanceState.RUNNING
        async with pool.acquire() as second:
            assert second.id != first.id
            with pytest.raises(FileNotFoundError):
                await second.read_file("secret.txt")
        await wait_ready(pool, 2)


@pytest.mark.docker
async def test_released_container_is_removed(engine_client):
    async with SandboxPool(FAST, size=1, backend=DockerBackend()) as pool:
        async with pool.acquire() as sandbox:
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
