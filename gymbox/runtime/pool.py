"""SandboxPool: started, health-checked sandboxes, one episode each.

The pool keeps ``size`` sandboxes started ahead of demand. :meth:`SandboxPool.acquire` hands one
out for a single episode; taking one schedules a replacement, and giving it back hands it to a
background removal (the episode does not wait for the engine to delete a container;
:meth:`SandboxPool.close` waits for every removal). A sandbox its episode never sent a request
(:attr:`Sandbox.untouched`: an episode answered without a tool) holds nothing of that episode,
so it goes back to the pool under a new handle instead, and saves the engine a start and a
removal; the old handle is closed. Replacements start in the background under
two limits: a rate (asyncio-throttle, ``starts_per_second``) and a cap on concurrent starts
(``max_concurrent_starts``; the engine degrades past about 16 concurrent control calls).

A replacement that fails to start is retried with backoff (``start_backoff``) until it starts, so
the pool heals by itself once the engine is back. Failures are news, not stock: each one is
raised in the acquirers waiting at that moment (so nobody waits forever on an engine that is
down), and none is kept for later ones, which get the first sandbox that does start. A
:class:`ConfigurationError` (no image, settings the engine rejects) will not heal: it ends the
refills and every acquirer gets it. A streak of failed starts is logged twice, when it begins
and when starts work again, however long it lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator

from asyncio_throttle import Throttler

from gymbox.runtime.backend import Backend, Instance
from gymbox.runtime.backends import select_backend
from gymbox.runtime.errors import ConfigurationError, GymboxError, InfraError, InvalidRequest
from gymbox.runtime.retry import Backoff
from gymbox.runtime.sandbox import Sandbox
from gymbox.runtime.spec import SandboxSpec

log = logging.getLogger(__name__)

HEALTH_CHECK_TIMEOUT_S = 2.0
START_BACKOFF = Backoff(initial_s=0.05, factor=2.0, max_s=0.25)
"""Retries of a failed start. Short: each launch already retried its engine calls (tenacity,
under `DockerBackend.control_deadline_s`), and a slot left empty costs an episode a wait."""


class StartFailures:
    """A streak of failed starts, logged when it begins and when it ends, not once per start."""

    def __init__(self) -> None:
        self.count = 0
        self.last: GymboxError | None = None
        self._since = 0.0

    def failed(self, error: GymboxError) -> None:
        if self.count == 0:
            self._since = time.monotonic()
            log.warning("pooled sandboxes fail to start: %s (retrying with backoff; logged "
                        "again when starts work)", error)
        self.count += 1
        self.last = error

    def succeeded(self, began_at: float) -> None:
        """A start that began at ``began_at`` (``time.monotonic()``) worked; one that began
        before the streak proves nothing about the engine now."""
        if self.count == 0 or began_at < self._since:
            return
        log.warning("pooled sandboxes start again, after %d failed starts over %.1f s "
                    "(the last: %s)", self.count, time.monotonic() - self._since, self.last)
        self.count = 0
        self.last = None


class SandboxPool:
    """A warm pool of sandboxes for one :class:`SandboxSpec`.

    Args:
        spec: what every sandbox is; the defaults when None.
        size: sandboxes kept started ahead of demand.
        backend: where they run; :func:`~gymbox.runtime.select_backend` when None.
        max_concurrent_starts: starts under way at once, at most.
        starts_per_second: starts begun per second, at most.
        start_backoff: the wait before retrying a failed start, by consecutive failure.

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
        start_backoff: Backoff = START_BACKOFF,
    ) -> None:
        if not isinstance(size, int) or size < 1:
            raise InvalidRequest(f"size must be an int >= 1, got {size!r}")
        if max_concurrent_starts < 1 or starts_per_second <= 0:
            raise InvalidRequest("max_concurrent_starts must be >= 1 and starts_per_second > 0")
        self.spec = spec or SandboxSpec()
        self.size = size
        self.backend = backend or select_backend()
        self.start_backoff = start_backoff
        self.start_failures = StartFailures()
        self._ready: asyncio.Queue[Sandbox] = asyncio.Queue()
        self._next_failure: asyncio.Future[GymboxError] | None = None
        self._unfixable: ConfigurationError | None = None
        self._starts = asyncio.Semaphore(max_concurrent_starts)
        self._throttle = Throttler(rate_limit=max(1, round(starts_per_second)), period=1.0)
        self._tasks: set[asyncio.Task[None]] = set()
        self._removals: set[asyncio.Task[None]] = set()
        self._closed = False
        self._closing = asyncio.Event()

    async def start(self) -> None:
        """Start ``size`` sandboxes; return once all are ready or one start has failed (the
        failed ones keep retrying in the background)."""
        failure = self._failure_news()
        for _ in range(self.size):
            self._refill()
        starting = set(self._tasks)
        while starting and not failure.done():
            _, starting = await asyncio.wait(starting | {failure},
                                             return_when=asyncio.FIRST_COMPLETED)
            starting.discard(failure)

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Sandbox]:
        """A healthy sandbox for one episode. When the ``async with`` block ends this handle is
        closed, and the sandbox removed from the engine in the background, or, when the episode
        never sent it a request, given back to the pool for the next episode.

        Raises:
            SandboxStartError, EngineUnavailable: no sandbox was ready and a start failed while
                this call waited.
            ConfigurationError: sandboxes of this spec cannot start on this machine.
        """
        sandbox = await self._take()
        try:
            yield sandbox
        finally:
            self._give_back(sandbox)

    async def close(self) -> None:
        """Stop refilling, destroy every sandbox that was not handed out, and wait for the
        removal of those that were. Starts under way finish first (cancelling one could leave
        a container that the engine is still creating)."""
        self._closed = True
        self._closing.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        while not self._ready.empty():
            self._remove(self._ready.get_nowait())
        await asyncio.gather(*self._removals)

    async def __aenter__(self) -> SandboxPool:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    @property
    def ready(self) -> int:
        """How many started sandboxes are waiting to be acquired."""
        return self._ready.qsize()

    async def _take(self) -> Sandbox:
        while True:
            if self._closed:
                raise InvalidRequest("the pool is closed")
            if self._unfixable is not None:
                raise self._unfixable
            sandbox = await self._next()
            self._refill()
            try:
                await sandbox.ping(timeout=HEALTH_CHECK_TIMEOUT_S)
            except InfraError as exc:
                log.warning("discarding an unhealthy pooled sandbox %s: %s", sandbox.id[:12], exc)
                self._remove(sandbox)
                continue
            return sandbox

    async def _next(self) -> Sandbox:
        """The next ready sandbox; when none is ready, the next one to start, or the next start
        failure, raised."""
        if not self._ready.empty():
            return self._ready.get_nowait()
        failure = self._failure_news()
        getting = asyncio.ensure_future(self._ready.get())
        try:
            await asyncio.wait({getting, failure}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            getting.cancel()  # a no-op once it has its sandbox, which is then returned
        if getting.done() and not getting.cancelled():
            return getting.result()
        raise failure.result()

    def _refill(self) -> None:
        if self._closed or self._unfixable is not None:
            return
        task = asyncio.create_task(self._fill_one())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fill_one(self) -> None:
        """Start one sandbox, retrying failed starts until one works."""
        for attempt in itertools.count():
            try:
                async with self._starts, self._throttle:
                    if self._closed or self.ready >= self.size:
                        return  # sandboxes given back unused filled the pool meanwhile
                    began_at = time.monotonic()
                    sandbox = await Sandbox.open(self.spec, backend=self.backend)
            except ConfigurationError as exc:
                self._unfixable = exc
                self._failed(exc)
                return
            except GymboxError as exc:
                self._failed(exc)
                with contextlib.suppress(TimeoutError):  # a backoff that close() cuts short
                    await asyncio.wait_for(self._closing.wait(),
                                           self.start_backoff.delay(attempt))
                continue
            self.start_failures.succeeded(began_at)
            if self._closed:
                self._remove(sandbox)
            else:
                self._ready.put_nowait(sandbox)
            return

    def _failed(self, error: GymboxError) -> None:
        """Tell the acquirers waiting now; keep nothing for later ones."""
        self.start_failures.failed(error)
        failure, self._next_failure = self._next_failure, None
        if failure is not None:
            failure.set_result(error)

    def _failure_news(self) -> asyncio.Future[GymboxError]:
        """A future that the next failed start resolves."""
        if self._next_failure is None:
            self._next_failure = asyncio.get_running_loop().create_future()
        return self._next_failure

    def _give_back(self, sandbox: Sandbox) -> None:
        """Ready again if the episode left it untouched, else removed. It is kept even when its
        replacement has started meanwhile: the next take then finds the pool full and starts
        nothing, so the surplus never exceeds the sandboxes that were out at once."""
        if sandbox.untouched and not self._closed:
            self._ready.put_nowait(sandbox.hand_on())
        else:
            self._remove(sandbox)

    def _remove(self, sandbox: Sandbox) -> None:
        """Shut the sandbox now; remove its instance in the background."""
        if not sandbox.shut():
            return  # its holder closed it already
        task = asyncio.create_task(_destroy(sandbox.instance))
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)


async def _destroy(instance: Instance) -> None:
    try:
        await instance.destroy()
    except InfraError as exc:  # the engine is away: the sandbox's lease ends it instead
        log.info("could not remove sandbox %s now (%s); its lease will end it", instance.id[:12],
                 exc)
