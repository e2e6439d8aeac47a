"""No leaks: the lease (dead-man's switch), exit cleanup, and the reaper."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time

import docker.errors
import pytest

from gymbox.runtime import DockerBackend, Sandbox, SandboxDied, SandboxSpec, reap
from gymbox.runtime.cleanup import owner_alive, owner_labels

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


def test_reaper_removes_a_stopped_container_the_engine_did_not_remove(engine_client):
    # Every gymbox container is auto-remove; one that stopped and stayed (its engine was down
    # when it stopped) can never run again, even though its owner (this process) lives on.
    host_config = engine_client.api.create_host_config(network_mode="none")
    stopped, running = (engine_client.api.create_container(
        "gymbox-sandbox:latest", command=command, labels=owner_labels(60),
        host_config=host_config)["Id"] for command in (["true"], ["sleep", "60"]))
    try:
        for container_id in (stopped, running):
            engine_client.api.start(container_id)
        assert engine_client.api.wait(stopped, timeout=30)["StatusCode"] == 0
        reaped = [r for r in reap(engine_client)
                  if r.container_id in (stopped[:12], running[:12])]
        assert [r.container_id for r in reaped] == [stopped[:12]]
        assert "did not remove it" in reaped[0].reason
        assert not exists(engine_client, stopped)
        assert exists(engine_client, running)
    finally:
        for container_id in (stopped, running):
            with contextlib.suppress(docker.errors.NotFound):
                engine_client.api.remove_container(container_id, force=True)


def test_an_owner_that_exited_is_dead_even_before_its_parent_reaps_it():
    # A Ray worker killed by ray.kill stays a zombie until its raylet reaps it, which can take
    # minutes: its containers must not wait for that.
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        with open(f"/proc/{child.pid}/stat", "rb") as f:
            start = f.read().rsplit(b")", 1)[1].split()[19].decode()
        labels = {**owner_labels(60), "gymbox.owner_pid": str(child.pid),
                  "gymbox.owner_start": start}
        assert owner_alive(labels)
        child.stdin.close()  # the child exits; nobody waits for it yet: a zombie
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with open(f"/proc/{child.pid}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    break
            time.sleep(0.05)
        else:
            pytest.fail("the child did not become a zombie")
        assert not owner_alive(labels)
    finally:
        child.wait()
