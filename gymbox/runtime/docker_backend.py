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
import contextlib
import json
import logging
import socket
import ssl
import threading
import time
import urllib.parse
import weakref
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
WATCH_CONNECT_S = 5.0
"""How long a first launch waits for the engine watch's stream to open."""
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

    @classmethod
    async def open_tls(cls, api: docker.APIClient, exec_id: str) -> DockerLink:
        """Start exec ``exec_id`` on a TLS engine and attach to it, all on the event loop.

        docker-py would hand back an ``SSLSocket``, which asyncio cannot adopt; so the
        ``POST /exec/{id}/start`` upgrade that docker-py sends is sent here over asyncio's own
        TLS, verified with the client's CA, certificate and hostname settings."""
        url = urllib.parse.urlsplit(api._url("/exec/{0}/start", exec_id))
        reader, writer = await asyncio.open_connection(
            url.hostname, url.port or 2376, ssl=_ssl_context(api), limit=2**24)
        body = json.dumps({"Tty": False, "Detach": False}).encode()
        writer.write(
            f"POST {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
            "Content-Type: application/json\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            writer.close()
            raise ConnectionError("the engine closed the exec stream before answering") from exc
        status = head.split(b"\r\n", 1)[0].split()
        if len(status) < 2 or status[1] not in (b"101", b"200"):
            writer.close()
            raise SandboxStartError(
                f"starting the supervisor: the engine answered {head.splitlines()[0]!r}")
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


class EngineWatch:
    """The engine's event stream, held open on a thread: it breaks only when the engine goes
    away (stops, crashes or restarts), which no process in a container can cause.

    ``generation`` counts the connections made; a sandbox launched in one generation whose
    failure is seen in a later one, or while the stream is down, outlived its engine. A break
    while the engine still answers a ping is a dropped connection, not the engine: it is not
    counted. A stream that cannot be opened at all leaves ``generation`` None: no evidence
    either way."""

    RECONNECT_S = 0.5

    def __init__(self, client: docker.DockerClient) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._closed = False
        self._stream: Any = None
        self.generation: int | None = None
        self.down_since: float | None = None
        """When the stream broke (``time.time()``), while it stays broken; else None."""
        self.last_break: float | None = None
        threading.Thread(target=self._run, name="gymbox-engine-watch", daemon=True).start()

    def wait_connected(self, timeout: float) -> None:
        self._connected.wait(timeout)

    def lost_since(self, generation: int | None) -> float | None:
        """When the engine went away after ``generation`` began (``time.time()``), or None if
        it did not, or if that cannot be known. ``generation`` None: what began before the
        stream first connected (a loaded host can take longer than WATCH_CONNECT_S), so any
        break the watch has seen came after it."""
        with self._lock:
            if self.generation is None:
                return None
            if self.down_since is not None:
                return self.down_since
            return self.last_break if self.generation != generation else None

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(Exception):
            if self._stream is not None:
                self._stream.close()

    def _run(self) -> None:
        while not self._closed:
            # Any end of the stream, clean or not, lands below: the ping there tells which.
            with contextlib.suppress(Exception):
                # Daemon events are rare: the stream stays silent until the engine goes away.
                self._stream = self._client.api.events(filters={"type": "daemon"}, decode=True)
                with self._lock:
                    if self.generation is None or self.down_since is not None:
                        self.generation = (self.generation or 0) + 1
                    self.down_since = None
                self._connected.set()
                for _event in self._stream:
                    continue  # what an event says does not matter, only that the stream ends
            if self._closed:
                return
            # An engine that still answers lost a connection (a proxy's idle timeout?), not
            # its life: that is no evidence.
            if self.down_since is None and not self._answers():
                with self._lock:
                    if self.generation is not None:
                        self.down_since = self.last_break = time.time()
            time.sleep(self.RECONNECT_S)

    def _answers(self) -> bool:
        try:
            return bool(self._client.ping())
        except Exception:  # unreachable, in whatever way the SDK says it
            return False


class DockerInstance:
    """One container with its supervisor attached."""

    def __init__(self, backend: DockerBackend, container_id: str, link: Link,
                 own_execs: frozenset[str] = frozenset(), generation: int | None = None) -> None:
        self.backend = backend
        self._generation = generation
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
        lost_at = self.backend.engine_lost_since(self._generation)
        try:
            info = await control_call(lambda: api.inspect_container(self.id),
                                      doing="inspecting a failed sandbox", deadline_s=5.0)
            record = _record(info["State"])
        except SandboxStartError as exc:
            if not isinstance(exc.cause, docker.errors.NotFound):
                raise
            record = Record(removed=True)
        except InfraError:
            return Evidence(engine_answered=False, engine_lost_at=lost_at)
        try:
            events = await control_call(
                lambda: list(api.events(since=since - EVENT_WINDOW_S, until=until,
                                        filters={"container": self.id}, decode=True)),
                doing="reading a failed sandbox's events", deadline_s=5.0)
        except InfraError:
            return Evidence(engine_answered=False, record=record, engine_lost_at=lost_at)
        return Evidence(record=record, engine_lost_at=lost_at, events=tuple(
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
        # The watch generation of the last reap: the first launch reaps, and the first launch
        # after the engine came back reaps again (a restart can leave stopped containers).
        self._reaped_in: int | None = -1  # a generation the watch never has: not yet
        self._has_python: dict[str, bool] = {}
        self._watch: EngineWatch | None = None

    def engine_lost_since(self, generation: int | None) -> float | None:
        """When the engine went away (its event stream broke) after ``generation`` of its
        watch began; None if it did not, or if that cannot be known."""
        return self._watch.lost_since(generation) if self._watch is not None else None

    def _watched_client(self) -> docker.DockerClient:
        """The client, with the engine watch started (and given a moment to connect)."""
        client = self.client
        with self._client_lock:
            if self._watch is None:
                self._watch = EngineWatch(client)
                weakref.finalize(self, self._watch.close)
        self._watch.wait_connected(WATCH_CONNECT_S)
        return client

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
        client = await control_call(self._watched_client, doing="connecting to the engine",
                                    deadline_s=deadline)
        generation = self._watch.generation if self._watch is not None else None
        if generation != self._reaped_in:
            await control_call(lambda: cleanup.reap(client), doing="reaping leftovers",
                               deadline_s=deadline)
            self._reaped_in = generation
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
        return DockerInstance(self, container_id, link, frozenset(own_execs), generation)

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
        # Neither step is retried: a second attempt could start a second supervisor, or leave
        # an exec this backend does not know as its own (it would read as an outside one).
        exec_id = await control_call(
            lambda: self._supervisor_exec(client, spec, container_id),
            doing="starting the supervisor", deadline_s=0)
        own_execs.add(exec_id)
        if client.api.base_url.startswith("https://"):
            try:
                link = await asyncio.wait_for(DockerLink.open_tls(client.api, exec_id),
                                              self.control_deadline_s)
            except (TimeoutError, OSError) as exc:
                raise classify(exc, doing="starting the supervisor") from exc
        else:
            sock = await control_call(lambda: client.api.exec_start(exec_id, socket=True)._sock,
                                      doing="starting the supervisor", deadline_s=0)
            link = await DockerLink.open(sock)
        link.write(SUPERVISOR_SOURCE.encode())
        return link

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

    def _supervisor_exec(self, client: docker.DockerClient, spec: SandboxSpec,
                         container_id: str) -> str:
        """Create (not start) the exec that runs the supervisor; its bootstrap then reads the
        supervisor's source from the stream."""
        config = {
            "agent_uid": spec.agent_uid, "agent_gid": spec.agent_uid,
            "workdir": WORKSPACE, "env": dict(spec.env), "lease_path": LEASE_PATH,
            "lease_s": spec.lease_s, "sweep_uid": True, "oom_events": True, "align_pids": True,
            "own_cgroup": True,
            "tmpfs": list(spec.tmpfs),
        }
        size = len(SUPERVISOR_SOURCE.encode())
        return client.api.exec_create(
            container_id, ["python3", "-I", "-c", BOOTSTRAP, str(size), json.dumps(config)],
            stdin=True, stdout=True, stderr=True, tty=False, user="0", workdir="/",
        )["Id"]

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



def _ssl_context(api: docker.APIClient) -> ssl.SSLContext:
    """The TLS settings docker-py's client was given (``verify``: True, False or a CA file;
    ``cert``: the client's certificate and key), as an ``ssl`` context for asyncio."""
    cafile = api.verify if isinstance(api.verify, str) else None
    context = ssl.create_default_context(cafile=cafile)
    adapter = api.adapters.get("https://")
    if api.verify is False or getattr(adapter, "assert_hostname", None) is False:
        context.check_hostname = False
    if api.verify is False:
        context.verify_mode = ssl.CERT_NONE
    if api.cert:
        cert, key = api.cert if isinstance(api.cert, tuple) else (api.cert, None)
        context.load_cert_chain(cert, key)
    return context


def _record(state: dict[str, Any]) -> Record:
    return Record(status=str(state.get("Status", "")), oom_killed=bool(state.get("OOMKilled")),
                  exit_code=state.get("ExitCode"), paused=bool(state.get("Paused")),
                  dead=not state.get("Running", False), finished_at=str(state.get("FinishedAt")))
