"""SandboxPool: started, health-checked sandboxes, one episode each.

The pool keeps ``size`` sandboxes started ahead of demand. :meth:`SandboxPool.acquire` hands one
out for a single episode and destroys it when the episode ends; taking one schedules a
replacement. Replacements start in the background under two limits: a rate (asyncio-throttle,
``starts_per_second``) and a cap on concurrent control-plane work (``max_concurrent_starts``;
the engine degrades past about 16 concurrent control calls).

A replacement that fails to start is not hidden: the failure is queued where a sandbox would be,
so the acquirer that would have waited for it gets the :class:`SandboxStartError` (or
:class:`EngineUnavailable`) instead of waiting forever, and another replacement is scheduled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from asyncio_throttle import Throttler

from gymbox.runtime.backend import Backend
from gymbox.runtime.backends import select_backend
from gymbox.runtime.errors import GymboxError, InfraError, InvalidRequest
from gymbox.runtime.sandbox import Sandbox
from gymbox.runtime.spec import SandboxSpec

log = logging.getLogger(__name__)

HEALTH_CHECK_TIMEOUT_S = 2.0


class SandboxPool:
    """A warm pool of sandboxes for one :class:`SandboxSpec`.

    Example:
        >>> async def main():
        ...     async with SandboxPool(SandboxSpec(), size=4) as pool:
        ...         async with pool.acquire() as sandbox:
        ...             return (await sandbox.exec("echo hi", timeout=5)).stdout
        >>> asyncio.run(main())  # doctest: +SKIP
        'hi\\n'
    """

    def __init__(
        self,
        spec: SandboxSpec | None = None,
        *,
        size: int = 4,
        backend: Backend | None = None,
        max_concurrent_starts: int = 8,
        starts_per_second: float = 20.0,
    ) -> None:
        if not isinstance(size, int) or size < 1:
            raise InvalidRequest(f"size must be an int >= 1, got {size!r}")
        if max_concurrent_starts < 1 or starts_per_second <= 0:
            raise InvalidRequest("max_concurrent_starts must be >= 1 and starts_per_second > 0")
        self.spec = spec or SandboxSpec()
        self.size = size
        self.backend = backend or select_backend()
        self._ready: asyncio.Queue[Sandbox | GymboxError] = asyncio.Queue()
        self._starts = asyncio.Semaphore(max_concurrent_starts)
        self._throttle = Throttler(rate_limit=max(1, round(starts_per_second)), period=1.0)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def start(self) -> None:
        """Start ``size`` sandboxes and wait until all are ready (or have failed)."""
        for _ in range(self.size):
            self._refill()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Sandbox]:
        """A healthy sandbox for one episode; destroyed when the ``async with`` block ends.

        Raises:
            SandboxStartError, EngineUnavailable: no sandbox could be started for this episode.
        """
        sandbox = await self._take()
        try:
            yield sandbox
        finally:
            await asyncio.shield(sandbox.close())

    async def close(self) -> None:
        """Stop refilling and destroy every sandbox that was not handed out."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        while not self._ready.empty():
            item = self._ready.get_nowait()
            if isinstance(item, Sandbox):
                await item.close()

    async def __aenter__(self) -> SandboxPool:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    @property
    def ready(self) -> int:
        """How many started sandboxes (or queued start failures) are waiting."""
        return self._ready.qsize()

    async def _take(self) -> Sandbox:
        if self._closed:
            raise InvalidRequest("the pool is closed")
        while True:
            item = await self._ready.get()
            self._refill()
            if isinstance(item, GymboxError):
                raise item
            try:
                await item.ping(timeout=HEALTH_CHECK_TIMEOUT_S)
            except InfraError as exc:
                log.warning("discarding an unhealthy pooled sandbox %s: %s", item.id[:12], exc)
                await item.close()
                continue
            return item

    def _refill(self) -> None:
        if self._closed:
            return
        task = asyncio.create_task(self._start_one())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_one(self) -> None:
        async with self._starts, self._throttle:
            try:
                sandbox = await Sandbox.open(self.spec, backend=self.backend)
            except GymboxError as exc:
                log.warning("a pooled sandbox failed to start: %s", exc)
                self._ready.put_nowait(exc)
                return
        if self._closed:
            await sandbox.close()
        else:
            self._ready.put_nowait(sandbox)
