"""DockerBackend: sandboxes as locked-down containers on a Docker engine.

A container's main process is a tiny loop, the dead-man's switch: it exits once the lease
deadline in ``/run/gymbox/lease`` (a root-owned tmpfs the agent cannot write) has passed, and
``auto_remove`` deletes the container. It is a Python loop that never forks (a shell loop where
the image has no python3), so an agent holding the pids limit cannot end it. The supervisor is
then started with one ``docker exec`` whose stdin/stdout stay attached for the container's life.

Every sandbox of a spec looks the same from inside: the same hostname, user, paths and
environment, and the same sequence of process ids (the supervisor starts them at a fixed
number), so a replacement replays the journal as the original ran it.

When a call fails, :meth:`DockerInstance.postmortem` asks the engine what it saw (the
container's record and its events around the call): the evidence that
:mod:`gymbox.runtime.attribution` decides on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.types import Ulimit

from gymbox.runtime import cleanup, engine, wire
from gymbox.runtime.attribution import Evidence, Record
from gymbox.runtime.backend import InstanceState, Link
from gymbox.runtime.classify import classify, control_call, is_connection_error
from gymbox.runtime.errors import GymboxError, InfraError, SandboxStartError
from gymbox.runtime.exec_fallback import ExecPerCallLink
from gymbox.runtime.image import WORKSPACE
from gymbox.runtime.spec import INODES_PER_MB, MiB, SandboxSpec

log = logging.getLogger(__name__)

SUPERVISOR_SOURCE = (Path(__file__).parent / "supervisor.py").read_text()
LEASE_DIR = "/run/gymbox"
LEASE_PATH = f"{LEASE_DIR}/lease"
# argv[1] is the first deadline; the supervisor overwrites the lease file on each renewal.
# It never forks: a fork bomb that holds the pids limit cannot end it.
LEASE_LOOP_PY = (
    "import sys, time\n"
    "deadline = int(sys.argv[1])\n"
    "while time.time() < deadline:\n"
    "    time.sleep(1)\n"
    "    try:\n"
    f"        deadline = int(open({LEASE_PATH!r}).read())\n"
    "    except (OSError, ValueError):\n"
    "        pass\n"
)
# Without python3: a shell loop, whose external commands may fail to fork while the agent's
# fork bomb holds the pids limit; a failure retries instead of ending the loop.
LEASE_LOOP_SH = (
    'deadline=$1; while :; do sleep 1 || continue; '
    f'[ -r {LEASE_PATH} ] && read deadline < {LEASE_PATH}; '
    'now=$(date +%s) || continue; [ -n "$now" ] || continue; '
    '[ "$now" -lt "$deadline" ] || exit 0; done'
)
# `command -v` is a shell builtin: choosing costs no fork.
LEASE_WATCH = (
    f'if command -v python3 >/dev/null; then exec python3 -I -c "{LEASE_LOOP_PY}" "$1"; fi; '
    + LEASE_LOOP_SH
)
EVENT_WINDOW_S = 5.0
"""How far before a failed call's start the engine's events are read (a strike on the call
lands after it was sent, but the clocks of host and engine may differ a little)."""
# Reads exactly argv[1] bytes of supervisor source from stdin (raw reads: nothing read ahead
# of the frames that follow), then runs it with the config as its argv[1].
BOOTSTRAP = (
    "import os, sys\n"
    "size = int(sys.argv.pop(1))\n"
    "source = b''\n"
    "while len(source) < size:\n"
    "    source += os.read(0, size - len(source))\n"
    "exec(compile(source, 'gymbox-supervisor', 'exec'))\n"
)


class DockerLink:
    """The attached exec stream, de-multiplexed: Docker prefixes each chunk with 8 bytes
    (stream id, size) when no TTY is allocated."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, sock: socket.socket) -> DockerLink:
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock, limit=2**24)
        return cls(reader, writer)

    async def read(self) -> bytes:
        while True:
            try:
                header = await self._reader.readexactly(wire.MUX_HEADER.size)
                stream, size = wire.MUX_HEADER.unpack(header)
                payload = await self._reader.readexactly(size)
            except asyncio.IncompleteReadError:
                return b""
            if stream == 1:
                return payload
            log.warning("sandbox supervisor: %s", payload.decode(errors="replace").rstrip())

    def write(self, data: bytes) -> None:
        if self._writer.is_closing():
            raise ConnectionError("the exec stream is closed")
        self._writer.write(data)

    def close(self) -> None:
        self._writer.close()


class DockerInstance:
    """One container with its supervisor attached."""

    def __init__(self, backend: DockerBackend, container_id: str, link: Link,
                 own_execs: frozenset[str] = frozenset()) -> None:
        self.backend = backend
        self.id = container_id
        self.workdir = WORKSPACE
        self.link = link
        self._destroyed = False
        # The fast path's supervisor is the container's last exec: any later one came from
        # outside. Per-call execs are how the slow path works, so they prove nothing there.
        self._execs_are_outside = not isinstance(link, ExecPerCallLink)
        self._own_execs = own_execs

    async def postmortem(self, since: float) -> Evidence:
        """What the engine observed of this container from ``since`` (``time.time()``) to now:
        its record and its events. An engine that does not answer is evidence too."""
        api = self.backend.client.api
        until = time.time()
        try:
            info = await control_call(lambda: api.inspect_container(self.id),
                                      doing="inspecting a failed sandbox", deadline_s=5.0)
            record = _record(info["State"])
        except SandboxStartError as exc:
            if not isinstance(exc.cause, docker.errors.NotFound):
                raise
            record = Record(removed=True)
        except InfraError:
            return Evidence(engine_answered=False)
        try:
            events = await control_call(
                lambda: list(api.events(since=since - EVENT_WINDOW_S, until=until,
                                        filters={"container": self.id}, decode=True)),
                doing="reading a failed sandbox's events", deadline_s=5.0)
        except InfraError:
            return Evidence(engine_answered=False, record=record)
        return Evidence(record=record, events=tuple(
            e for e in map(self._event, events) if e is not None))

    def _event(self, event: dict[str, Any]) -> str | None:
        action = str(event.get("Action") or event.get("status") or "")
        name = action.split(":", 1)[0]
        attributes = (event.get("Actor") or {}).get("Attributes") or {}
        if name in ("exec_create", "exec_start", "exec_die"):
            ours = attributes.get("execID") in self._own_execs
            outside = self._execs_are_outside and name != "exec_die" and not ours
            return name if outside else None
        if name == "kill":
            return f"kill:{attributes.get('signal', '?')}"
        if name == "die":
            return f"die:{attributes.get('exitCode', '?')}"
        return name or None

    async def state(self) -> InstanceState:
        api = self.backend.client.api
        try:
            info = await control_call(lambda: api.inspect_container(self.id),
                                      doing="inspecting a sandbox", deadline_s=5.0)
        except SandboxStartError as exc:
            if isinstance(exc.cause, docker.errors.NotFound):
                return InstanceState.GONE
            raise
        state = info["State"]
        if not state["Running"]:
            return InstanceState.EXITED
        return InstanceState.PAUSED if state.get("Paused") else InstanceState.RUNNING

    async def destroy(self) -> None:
        if self._destroyed:
            return
        self._destroyed = True
        self.link.close()
        try:
            await control_call(self._remove, doing="removing a sandbox",
                               deadline_s=self.backend.control_deadline_s)
        finally:
            cleanup.unregister(self.id)

    def _remove(self) -> None:
        try:
            self.backend.client.api.remove_container(self.id, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: auto-removal already under way
                raise


class DockerBackend:
    """Runs sandboxes on a Docker engine (``DOCKER_HOST`` or the default socket).

    Example:
        >>> backend = DockerBackend()  # doctest: +SKIP
        >>> instance = await backend.launch(SandboxSpec())  # doctest: +SKIP
    """

    name = "docker"

    def __init__(self, client: docker.DockerClient | None = None, *,
                 control_deadline_s: float = 30.0) -> None:
        """``control_deadline_s`` bounds the retries of each control-plane call."""
        self._client = client
        self.control_deadline_s = control_deadline_s
        self._client_lock = threading.Lock()
        self._reaped = False
        self._has_python: dict[str, bool] = {}

    @property
    def client(self) -> docker.DockerClient:
        """The SDK client, opened on first use (raises ``EngineUnavailable``)."""
        with self._client_lock:
            if self._client is None:
                self._client = engine.connect()
            return self._client

    async def launch(self, spec: SandboxSpec) -> DockerInstance:
        """Start a container for ``spec`` with its supervisor attached (see :class:`Backend
        <gymbox.runtime.backend.Backend>`)."""
        deadline = self.control_deadline_s
        client = await control_call(lambda: self.client, doing="connecting to the engine",
                                    deadline_s=deadline)
        if not self._reaped:
            await control_call(lambda: cleanup.reap(client), doing="reaping leftovers",
                               deadline_s=deadline)
            self._reaped = True
        container_id = await control_call(lambda: self._create(client, spec),
                                          doing=f"creating a sandbox from {spec.image}",
                                          deadline_s=deadline)
        cleanup.register(container_id, lambda: self._remove_now(container_id))
        try:
            await control_call(lambda: client.api.start(container_id),
                               doing="starting a sandbox", deadline_s=deadline)
            own_execs: set[str] = set()
            link = await self._link(client, spec, container_id, own_execs)
        except BaseException as exc:
            await asyncio.shield(asyncio.to_thread(self._remove_now, container_id))
            if isinstance(exc, GymboxError):
                raise
            if isinstance(exc, Exception):
                raise classify(exc, doing="starting a sandbox") from exc
            raise
        return DockerInstance(self, container_id, link, frozenset(own_execs))

    async def _link(self, client: docker.DockerClient, spec: SandboxSpec,
                    container_id: str, own_execs: set[str]) -> Link:
        """The supervisor's link; the ids of the execs it took go to ``own_execs``."""
        if spec.image not in self._has_python:
            probe = await control_call(
                lambda: client.api.exec_create(container_id, ["python3", "-c", ""])["Id"],
                doing="looking for python3 in the image", deadline_s=self.control_deadline_s)
            own_execs.add(probe)
            await control_call(lambda: client.api.exec_start(probe),
                               doing="looking for python3 in the image", deadline_s=0)
            code = (await control_call(lambda: client.api.exec_inspect(probe),
                                       doing="looking for python3 in the image",
                                       deadline_s=self.control_deadline_s))["ExitCode"]
            self._has_python[spec.image] = code == 0
            if code != 0:
                log.warning("%s has no python3: every call will be one `docker exec` "
                            "(slow, no run_python)", spec.image)
        if not self._has_python[spec.image]:
            return ExecPerCallLink(client, container_id, agent_uid=spec.agent_uid,
                                   workdir=WORKSPACE, env=dict(spec.env),
                                   lease_path=LEASE_PATH)
        # Not retried: a second attempt could start a second supervisor.
        sock = await control_call(
            lambda: self._attach_supervisor(client, spec, container_id, own_execs),
            doing="starting the supervisor", deadline_s=0)
        return await DockerLink.open(sock)

    def _create(self, client: docker.DockerClient, spec: SandboxSpec) -> str:
        uid = spec.agent_uid
        sizes = spec.tmpfs

        def sized(mount: str) -> str:
            return f"size={sizes[mount]}m,nr_inodes={sizes[mount] * INODES_PER_MB}"

        host_config = client.api.create_host_config(
            network_mode=spec.network_mode,
            read_only=spec.read_only_root,
            tmpfs={
                WORKSPACE: f"{sized(WORKSPACE)},uid={uid},gid={uid},mode=0755,exec",
                "/tmp": f"{sized('/tmp')},mode=1777",
                "/dev/shm": f"{sized('/dev/shm')},mode=1777,nosuid,nodev,noexec",
                LEASE_DIR: "size=64k,nr_inodes=16,mode=0755",
            },
            # A private IPC namespace without the engine's own /dev/shm (ours is sized above);
            # SysV segments are capped and die with their last user, as tmpfs pages would not.
            ipc_mode="private",
            sysctls={
                "kernel.shmmax": str(sizes["/dev/shm"] * MiB),
                "kernel.shmall": str(sizes["/dev/shm"] * MiB // 4096),
                "kernel.shm_rmid_forced": "1",
            },
            cap_drop=["ALL"],
            cap_add=list(spec.cap_add),
            security_opt=["no-new-privileges"] if spec.no_new_privileges else [],
            pids_limit=spec.pids_limit,
            mem_limit=spec.memory_mb * MiB,
            memswap_limit=spec.memory_mb * MiB,
            nano_cpus=int(spec.cpus * 1e9),
            ulimits=[
                Ulimit(name="nofile", soft=spec.nofile, hard=spec.nofile),
                Ulimit(name="fsize", soft=spec.fsize_mb * MiB, hard=spec.fsize_mb * MiB),
            ],
            init=spec.init,
            auto_remove=True,
        )
        labels = {**spec.labels, **cleanup.owner_labels(spec.lease_s)}
        first_deadline = labels[f"{cleanup.LABEL}.lease_expiry"]
        created = client.api.create_container(
            spec.image,
            command=["/bin/sh", "-c", LEASE_WATCH, "gymbox-lease", first_deadline],
            user="0",
            working_dir=WORKSPACE,
            hostname=spec.hostname,
            labels=labels,
            host_config=host_config,
            network_disabled=spec.network_mode == "none",
        )
        return created["Id"]

    def _attach_supervisor(
        self, client: docker.DockerClient, spec: SandboxSpec, container_id: str,
        own_execs: set[str],
    ) -> socket.socket:
        config = {
            "agent_uid": spec.agent_uid, "agent_gid": spec.agent_uid,
            "workdir": WORKSPACE, "env": dict(spec.env), "lease_path": LEASE_PATH,
            "lease_s": spec.lease_s, "sweep_uid": True, "oom_events": True, "align_pids": True,
            "tmpfs": list(spec.tmpfs),
        }
        source = SUPERVISOR_SOURCE.encode()
        exec_id = client.api.exec_create(
            container_id, ["python3", "-I", "-c", BOOTSTRAP, str(len(source)), json.dumps(config)],
            stdin=True, stdout=True, stderr=True, tty=False, user="0", workdir="/",
        )["Id"]
        own_execs.add(exec_id)
        sock = client.api.exec_start(exec_id, socket=True)._sock
        sock.sendall(source)
        return sock

    def _remove_now(self, container_id: str) -> None:
        try:
            self.client.api.remove_container(container_id, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409:
                raise
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            log.warning("could not remove sandbox %s: %s (its lease will end it)",
                        container_id[:12], exc)
        finally:
            cleanup.unregister(container_id)



def _record(state: dict[str, Any]) -> Record:
    return Record(status=str(state.get("Status", "")), oom_killed=bool(state.get("OOMKilled")),
                  exit_code=state.get("ExitCode"), paused=bool(state.get("Paused")),
                  dead=not state.get("Running", False), finished_at=str(state.get("FinishedAt")))
