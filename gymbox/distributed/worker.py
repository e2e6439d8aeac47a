"""EngineWorker: the Ray actor that owns one engine's :class:`~gymbox.runtime.SandboxPool`.

It runs on the node that can reach its engine, keeps that engine's warm pool, and serves the
sandbox calls of the episodes the driver runs (``exec``, ``run_python``, file operations) by
sandbox id. It is an async actor: many calls are in flight at once on its one event loop, as in
an in-process pool.

What crosses the actor boundary is plain data: call arguments, :class:`ExecResult` and
:class:`DirEntry` values, the agent's ``OSError``, and gymbox errors. A gymbox error comes back
as an :class:`Outcome` holding the same type and message (its ``cause``, an SDK object that may
not pickle, is reduced to a note), so the driver classifies it as if the pool were local.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

from gymbox.distributed.engines import EngineConfig
from gymbox.runtime import cleanup
from gymbox.runtime.docker_backend import DockerBackend
from gymbox.runtime.errors import GymboxError, InvalidRequest
from gymbox.runtime.pool import SandboxPool
from gymbox.runtime.spec import SandboxSpec

log = logging.getLogger(__name__)

CALLS = frozenset({"exec", "run_python", "write_file", "read_file", "list_dir"})
"""The sandbox methods an episode may call through a worker."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """A call's result, or the error it raised (a gymbox error or the agent's ``OSError``)."""

    value: Any = None
    error: BaseException | None = None

    def unwrap(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


def portable(exc: BaseException) -> BaseException:
    """``exc`` without what may not pickle or cross hosts (its cause, its traceback)."""
    if isinstance(exc, GymboxError):
        cause = getattr(exc, "cause", None)
        if cause is not None:
            exc.add_note(f"cause on the engine worker: {type(cause).__name__}: {cause}")
        if hasattr(exc, "cause"):
            exc.cause = None
        exc.__cause__ = None
        exc.__context__ = None
    return exc.with_traceback(None)


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """Where a worker runs and what it reaches, for logs and leak checks."""

    engine: str
    address: str
    hostname: str
    pid: int
    server_version: str


class EngineWorker:
    """One engine's warm pool, serving sandbox calls by id. Run as a Ray actor (see
    :class:`~gymbox.distributed.source.EngineSet`); plain Python otherwise, for tests of its
    own logic.

    Args:
        engine: the engine to run sandboxes on.
        spec: what each sandbox is.
    """

    def __init__(self, engine: EngineConfig, spec: SandboxSpec) -> None:
        self.engine = engine
        self.spec = spec
        self._pool: SandboxPool | None = None
        self._leases: dict[str, tuple[Any, contextlib.AsyncExitStack]] = {}
        self._client = None

    async def start(self) -> Outcome:
        """Connect to the engine and fill the pool; the outcome holds a :class:`WorkerInfo`."""
        try:
            self._client = await self._connect()
            version = (await asyncio.to_thread(self._client.version)).get("Version", "?")
            self._pool = SandboxPool(
                self.spec, size=self.engine.pool_size,
                backend=DockerBackend(self._client),
                max_concurrent_starts=self.engine.max_concurrent_starts)
            await self._pool.start()
        except GymboxError as exc:
            return Outcome(error=portable(exc))
        return Outcome(WorkerInfo(self.engine.name, self.engine.address(), socket.gethostname(),
                                  os.getpid(), version))

    async def _connect(self):
        """A client to the engine (TLS or not: the runtime attaches over either)."""
        return await asyncio.to_thread(self.engine.connect)

    async def acquire(self) -> Outcome:
        """A healthy sandbox from the pool; the outcome holds its id."""
        if self._pool is None:
            return Outcome(error=InvalidRequest("the engine worker has not started"))
        stack = contextlib.AsyncExitStack()
        try:
            sandbox = await stack.enter_async_context(self._pool.acquire())
        except GymboxError as exc:
            await stack.aclose()
            return Outcome(error=portable(exc))
        self._leases[sandbox.id] = (sandbox, stack)
        return Outcome(sandbox.id)

    async def call(self, sandbox_id: str, method: str, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> Outcome:
        """Run ``sandbox.<method>(*args, **kwargs)`` on a sandbox this worker handed out."""
        lease = self._leases.get(sandbox_id)
        if method not in CALLS:
            return Outcome(error=InvalidRequest(f"{method!r} is not a sandbox call"))
        if lease is None:
            return Outcome(error=InvalidRequest(f"sandbox {sandbox_id[:12]} is not held here "
                                                "(released already?)"))
        try:
            return Outcome(await getattr(lease[0], method)(*args, **kwargs))
        except (GymboxError, OSError) as exc:
            return Outcome(error=portable(exc))

    async def release(self, sandbox_id: str) -> None:
        """Give a sandbox back: it is destroyed in the background, as the pool does."""
        lease = self._leases.pop(sandbox_id, None)
        if lease is not None:
            await lease[1].aclose()

    async def held(self) -> int:
        """Sandboxes handed out and not yet released."""
        return len(self._leases)

    async def close(self) -> None:
        """Release every sandbox, close the pool (waiting for removals) and the client."""
        for sandbox_id in list(self._leases):
            await self.release(sandbox_id)
        if self._pool is not None:
            await self._pool.close()
        if self._client is not None:
            self._client.close()


def reap_engine(engine: EngineConfig, *, everything: bool = False) -> list[str]:
    """``gymbox gc`` on one engine, run on the node that reaches it: remove gymbox containers
    whose owner process has exited; returns ``"<id>: <reason>"`` per container removed."""
    client = engine.connect(timeout=30)
    try:
        return [f"{r.container_id}: {r.reason}" for r in cleanup.reap(client,
                                                                       everything=everything)]
    finally:
        client.close()


def gymbox_containers(engine: EngineConfig) -> list[dict[str, str]]:
    """The labels of every gymbox container on ``engine`` (for leak checks)."""
    client = engine.connect(timeout=30)
    try:
        return [dict(c.get("Labels") or {}, id=c["Id"][:12])
                for c in cleanup.gymbox_containers(client)]
    finally:
        client.close()
