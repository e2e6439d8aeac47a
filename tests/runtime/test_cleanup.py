"""No leaks: the lease (dead-man's switch), exit cleanup, and the reaper."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import pytest

from gymbox.runtime import DockerBackend, Sandbox, SandboxDied, SandboxSpec, reap
from gymbox.runtime.cleanup import owner_labels

pytestmark = pytest.mark.docker

OPEN_AND_WAIT = """
import asyncio, sys
from gymbox.runtime import DockerBackend, Sandbox, SandboxSpec
async def main():
    sandbox = await Sandbox.open(SandboxSpec(lease_s=60), backend=DockerBackend())
    print(sandbox.id, flush=True)
    if sys.argv[1] == "hang":
        await asyncio.sleep(3600)
asyncio.run(main())
"""


def exists(client, container_id: str) -> bool:
    return bool(client.api.containers(all=True, filters={"id": container_id}))


def wait_gone(client, container_id: str, within_s: float) -> float:
    start = time.monotonic()
    while exists(client, container_id):
        assert time.monotonic() - start < within_s, f"{container_id[:12]} still exists"
        time.sleep(0.2)
    return time.monotonic() - start


def start_owner(mode: str) -> tuple[subprocess.Popen, str]:
    owner = subprocess.Popen([sys.executable, "-c", OPEN_AND_WAIT, mode], stdout=subprocess.PIPE,
                             text=True)
    return owner, owner.stdout.readline().strip()


def test_sigkilled_host_leaks_nothing(engine_client):
    owner, container_id = start_owner("hang")
    assert exists(engine_client, container_id)
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    # The supervisor sees its stream close and expires the lease: well under lease_s (60 s).
    assert wait_gone(engine_client, container_id, within_s=15) < 15


def test_normal_exit_without_close_removes_the_container(engine_client):
    owner, container_id = start_owner("exit")
    owner.wait(timeout=30)
    assert owner.returncode == 0
    assert not exists(engine_client, container_id)


async def test_container_exits_when_the_lease_is_not_renewed(engine_client):
    sandbox = await Sandbox.open(SandboxSpec(lease_s=5), backend=DockerBackend())
    # A fault injected on purpose: the host stays connected but stops renewing.
    sandbox._lease_task.cancel()
    waited = wait_gone(engine_client, sandbox.id, within_s=15)
    assert waited > 2  # it lived on its first lease...
    with pytest.raises(SandboxDied):  # ...and then ended on its own
        await sandbox.exec("true", timeout=5)
    await sandbox.close()


async def test_renewed_lease_keeps_the_container(engine_client):
    async with await Sandbox.open(SandboxSpec(lease_s=5), backend=DockerBackend()) as sandbox:
        await asyncio.sleep(7)  # past the first lease: only renewals keep it alive
        assert (await sandbox.exec("echo alive", timeout=5)).stdout == "alive\n"


def test_reaper_removes_containers_of_dead_owners_only(engine_client):
    gone = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    labels_of_dead = {**owner_labels(60)}
    labels_of_dead["gymbox.owner_pid"] = str(gone.pid)
    gone.wait()
    created = []
    for labels in (labels_of_dead, owner_labels(60)):
        container = engine_client.api.create_container(
            "gymbox-sandbox:latest", command=["sleep", "60"], labels=labels,
            host_config=engine_client.api.create_host_config(network_mode="none"))
        created.append(container["Id"])
    dead_id, live_id = created
    try:
        reaped = reap(engine_client)
        assert [r.container_id for r in reaped if r.container_id == dead_id[:12]] == [dead_id[:12]]
        assert f"owner pid {gone.pid}" in next(r.reason for r in reaped
                                               if r.container_id == dead_id[:12])
        assert not exists(engine_client, dead_id)
        assert exists(engine_client, live_id)
    finally:
        engine_client.api.remove_container(live_id, force=True)
