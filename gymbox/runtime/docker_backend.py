"""DockerBackend: sandboxes as locked-down containers on a Docker engine.

A container's main process is a tiny shell loop, the dead-man's switch: it exits once the lease
deadline in ``/run/gymbox/lease`` (a root-owned tmpfs the agent cannot write) has passed, and
``auto_remove`` deletes the container. The supervisor is then started with one ``docker exec``
whose stdin/stdout stay attached for the container's life.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import threading
from pathlib import Path

import docker
import docker.errors
from docker.types import Ulimit

from gymbox.runtime import cleanup, engine
from gymbox.runtime.backend import InstanceState, Link
from gymbox.runtime.classify import classify, control_call, is_connection_error
from gymbox.runtime.errors import GymboxError, SandboxStartError
from gymbox.runtime.exec_fallback import ExecPerCallLink
from gymbox.runtime.spec import MiB, SandboxSpec

log = logging.getLogger(__name__)

SUPERVISOR_SOURCE = (Path(__file__).parent / "supervisor.py").read_text()
LEASE_DIR = "/run/gymbox"
LEASE_PATH = f"{LEASE_DIR}/lease"
# $1 is the first deadline; the supervisor overwrites the lease file on each renewal. Every
# external command may fail to fork while the agent's fork bomb holds the pids limit: a failure
# retries instead of ending the loop (which would end the container, and blame the agent).
LEASE_WATCH = (
    'deadline=$1; while :; do sleep 1 || continue; '
    f'[ -r {LEASE_PATH} ] && read deadline < {LEASE_PATH}; '
    'now=$(date +%s) || continue; [ -n "$now" ] || continue; '
    '[ "$now" -lt "$deadline" ] || exit 0; done'
)
MUX_HEADER = struct.Struct(">BxxxI")
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
                header = await self._reader.readexactly(MUX_HEADER.size)
                stream, size = MUX_HEADER.unpack(header)
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

    def __init__(self, backend: DockerBackend, container_id: str, link: Link) -> None:
        self.backend = backend
        self.id = container_id
        self.workdir = "/workspace"
        self.link = link
        self._destroyed = False

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
            link = await self._link(client, spec, container_id)
        except BaseException as exc:
            await asyncio.shield(asyncio.to_thread(self._remove_now, container_id))
            if isinstance(exc, GymboxError):
                raise
            if isinstance(exc, Exception):
                raise classify(exc, doing="starting a sandbox") from exc
            raise
        return DockerInstance(self, container_id, link)

    async def _link(self, client: docker.DockerClient, spec: SandboxSpec,
                    container_id: str) -> Link:
        if spec.image not in self._has_python:
            probe = await control_call(
                lambda: client.api.exec_create(container_id, ["python3", "-c", ""])["Id"],
                doing="looking for python3 in the image", deadline_s=self.control_deadline_s)
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
                                   workdir="/workspace", env=dict(spec.env),
                                   lease_path=LEASE_PATH)
        # Not retried: a second attempt could start a second supervisor.
        sock = await control_call(lambda: self._attach_supervisor(client, spec, container_id),
                                  doing="starting the supervisor", deadline_s=0)
        return await DockerLink.open(sock)

    def _create(self, client: docker.DockerClient, spec: SandboxSpec) -> str:
        uid = spec.agent_uid
        host_config = client.api.create_host_config(
            network_mode=spec.network_mode,
            read_only=spec.read_only_root,
            tmpfs={
                "/workspace": f"size={spec.workspace_mb}m,uid={uid},gid={uid},mode=0755,exec",
                "/tmp": f"size={spec.tmp_mb}m,mode=1777",
                LEASE_DIR: "size=64k,mode=0755",
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
            working_dir="/workspace",
            labels=labels,
            host_config=host_config,
            network_disabled=spec.network_mode == "none",
        )
        return created["Id"]

    def _attach_supervisor(
        self, client: docker.DockerClient, spec: SandboxSpec, container_id: str
    ) -> socket.socket:
        config = {
            "agent_uid": spec.agent_uid, "agent_gid": spec.agent_uid,
            "workdir": "/workspace", "env": dict(spec.env), "lease_path": LEASE_PATH,
            "sweep_uid": True, "oom_events": True,
        }
        source = SUPERVISOR_SOURCE.encode()
        exec_id = client.api.exec_create(
            container_id, ["python3", "-I", "-c", BOOTSTRAP, str(len(source)), json.dumps(config)],
            stdin=True, stdout=True, stderr=True, tty=False, user="0", workdir="/",
        )["Id"]
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

