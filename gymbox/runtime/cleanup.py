"""No leaks: who owns each container, cleanup at exit, and a reaper for what a crash left.

Three layers, each enough on its own for the case it covers:

1. Normal exit: every live instance is registered here; an ``atexit`` hook (and SIGTERM, when
   nobody else handles it) destroys what is still registered.
2. Crash of the host process (SIGKILL, OOM): the container's lease is not renewed, so its main
   process exits and the engine removes it (``auto_remove``) within ``SandboxSpec.lease_s``.
3. Anything else (an engine restart, a lease file lost): :func:`reap` removes containers whose
   owner process on this host is gone (a zombie counts as gone), and stopped containers the
   engine did not auto-remove. It runs when a Docker backend first starts a sandbox and from
   ``gymbox gc``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import docker
import docker.errors

from gymbox.runtime import engine

LABEL = "gymbox"
RUN_ID = os.environ.get("GYMBOX_RUN_ID") or uuid.uuid4().hex[:12]

_live: dict[str, Callable[[], None]] = {}
_lock = threading.Lock()
_hooks_installed = False


def _process_stat(pid: int) -> list[str]:
    """``/proc/<pid>/stat`` after the command name: state first, start time at index 19."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].decode().split()
    except (OSError, IndexError):
        return []


def _process_start(pid: int) -> str:
    """The kernel's start time of ``pid`` (clock ticks since boot), to tell a reused pid apart."""
    fields = _process_stat(pid)
    return fields[19] if len(fields) > 19 else ""


def owner_labels(lease_s: float) -> dict[str, str]:
    """The labels that tie a new container to this process."""
    pid = os.getpid()
    return {
        LABEL: "1",
        f"{LABEL}.owner_pid": str(pid),
        f"{LABEL}.owner_start": _process_start(pid),
        f"{LABEL}.host": socket.gethostname(),
        f"{LABEL}.run_id": RUN_ID,
        f"{LABEL}.lease_expiry": str(int(time.time() + lease_s)),
    }


def register(key: str, destroy: Callable[[], None]) -> None:
    """Remember a live instance; ``destroy`` (blocking) removes it at interpreter exit."""
    global _hooks_installed
    with _lock:
        _live[key] = destroy
        if not _hooks_installed:
            atexit.register(destroy_all)
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and (
                threading.current_thread() is threading.main_thread()
            ):
                signal.signal(signal.SIGTERM, _on_sigterm)
            _hooks_installed = True


def unregister(key: str) -> None:
    with _lock:
        _live.pop(key, None)


def destroy_all() -> None:
    """Destroy every instance this process still holds (blocking; used at exit)."""
    with _lock:
        pending = list(_live.values())
        _live.clear()
    for destroy in pending:
        # At exit, one failure must not stop the others.
        with contextlib.suppress(Exception):
            destroy()


def _on_sigterm(signum: int, _frame: object) -> None:
    destroy_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


@dataclass(frozen=True, slots=True)
class Reaped:
    """One container :func:`reap` removed, and why."""

    container_id: str
    reason: str


def owner_alive(labels: dict[str, str]) -> bool:
    """Whether the process that made a container still runs (only answerable on its host)."""
    if labels.get(f"{LABEL}.host") != socket.gethostname():
        return True
    try:
        pid = int(labels.get(f"{LABEL}.owner_pid", ""))
    except ValueError:
        return False
    fields = _process_stat(pid)
    if len(fields) <= 19 or fields[0] in ("Z", "X"):
        # A zombie has exited: it can renew or remove nothing, however long its parent takes
        # to reap it (Ray's raylet can take minutes for a worker it killed).
        return False
    return fields[19] == labels.get(f"{LABEL}.owner_start", "")


def gymbox_containers(client: docker.DockerClient,
                      filters: dict[str, str] | None = None) -> list[dict]:
    """The engine's gymbox containers (its listing's rows), leaving out ghosts.

    A ghost is a row the engine lists but cannot find: after an engine is SIGKILLed while a
    container is being created or started, Docker 20.10 can list that container after its
    restart while inspecting or removing it answers 404, until the engine restarts again. It
    holds no process and nothing can remove it, so it is no leak of ours."""
    rows = client.api.containers(all=True, filters={"label": f"{LABEL}=1", **(filters or {})})
    found = []
    for row in rows:
        try:
            client.api.inspect_container(row["Id"])
        except docker.errors.NotFound:
            continue
        found.append(row)
    return found


def reap(client: docker.DockerClient | None = None, *, everything: bool = False) -> list[Reaped]:
    """Remove gymbox containers whose owner process on this host has exited, and stopped ones
    the engine failed to remove, whoever owns them.

    Running containers made on other hosts are left alone (their own lease removes them)
    unless ``everything`` is true, which removes every gymbox container on the engine —
    including those of live runs; ``gymbox gc --all`` uses it.

    Raises:
        EngineUnavailable: no engine answers.

    Example:
        >>> reaped = reap()  # doctest: +SKIP
        >>> [r.reason for r in reaped]  # doctest: +SKIP
        ['owner pid 4242 on this host has exited']
    """
    own_client = client is None
    client = client or engine.connect()
    try:
        removed = []
        # The raw listing: a ghost (see gymbox_containers) answers the removal with 404 and is
        # skipped there, so filtering it out first would only ask the engine twice.
        for container in client.api.containers(all=True, filters={"label": f"{LABEL}=1"}):
            labels = container.get("Labels") or {}
            if everything:
                reason = "asked to remove every gymbox container"
            elif container.get("State") in ("exited", "dead"):
                # Every gymbox container is auto-remove: one that stopped and is still here
                # is one the engine failed to remove (it was down or restarting when the
                # container stopped). Nothing can run in it again, whoever owns it.
                reason = (f"it has {container['State']} and the engine did not remove it "
                          "(the engine was down or restarting when it stopped?)")
            elif not owner_alive(labels):
                reason = f"owner pid {labels.get(f'{LABEL}.owner_pid')} on this host has exited"
            else:
                continue
            try:
                client.api.remove_container(container["Id"], force=True)
            except docker.errors.NotFound:
                continue
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: removal already in progress
                    raise
            removed.append(Reaped(container["Id"][:12], reason))
        return removed
    finally:
        if own_client:
            client.close()
