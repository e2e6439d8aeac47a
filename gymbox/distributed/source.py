"""EngineSet: one sandbox source over many Docker engines, each served by a Ray actor.

The driver runs the episodes (the env, the policy, the learner); each engine's
:class:`~gymbox.distributed.worker.EngineWorker` actor runs its sandboxes. An
:class:`EngineSet` is what :class:`~gymbox.runtime.recovery.RecoveringSandboxes` wraps in place
of a local :class:`~gymbox.runtime.SandboxPool`::

    RecoveringSandboxes(EngineSet(engines, spec))     journal, replay, attribution (driver)
        └─ EngineSet.acquire()                        picks an engine: admitted by its breaker,
             ├─ EngineLane e1 ── Ray ──▶ EngineWorker    fewest sandboxes in flight
             └─ EngineLane e2 ── Ray ──▶ EngineWorker    (each: SandboxPool on its engine)

Failover follows from that split. A call that fails on one engine (the engine died, the worker
died, the node is gone) is an :class:`InfraError` on the driver; the episode's
:class:`RecoveringSandbox` takes a fresh sandbox from the set — on another engine, since the
failing one's breaker drains it — replays the journal there and runs the call again. Recovery
that gives up masks the episode with the failure's kind, as on one engine. A worker that died
is classified once, here: :class:`SandboxDied` for a call that may have run,
:class:`EngineUnavailable` (retry-safe) for a sandbox request.

Example:
    >>> async def main():  # doctest: +SKIP
    ...     engines = [EngineConfig("e1", resource="gymbox_engine_e1"),
    ...                EngineConfig("e2", resource="gymbox_engine_e2")]
    ...     async with EngineSet(engines, SandboxSpec()) as pool:
    ...         sandboxes = RecoveringSandboxes(pool)
    ...         env = gymnasium.make("gymbox/PythonCalc-v0", sandboxes=sandboxes).unwrapped
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
import ray.exceptions

from gymbox.distributed.engines import EngineConfig, check_engines
from gymbox.distributed.worker import EngineWorker, Outcome, WorkerInfo
from gymbox.runtime.breaker import Backoff
from gymbox.runtime.errors import (
    EngineUnavailable,
    InfraError,
    SandboxDied,
    SandboxUnresponsive,
)
from gymbox.runtime.result import ExecResult
from gymbox.runtime.sandbox import FILE_OP_BACKSTOP_S, DirEntry
from gymbox.runtime.spec import SandboxSpec

log = logging.getLogger(__name__)

ACQUIRE_TIMEOUT_S = 20.0
"""The longest an engine may take to hand out a sandbox before the set tries another one (a
pool on a dead engine waits for a failed start, which retries its engine calls first). A
sandbox the worker hands out after the driver stopped waiting stays held by the worker, and is
removed when the worker closes."""

NETWORK_MARGIN_S = 30.0
"""Added to a call's own backstop before the driver gives up on the worker answering at all."""

DRAIN_BACKOFF = Backoff(initial_s=2.0, factor=2.0, max_s=60.0)
"""How long a tripped engine is drained, by the number of times it has tripped: short at first
(an engine blip), up to a minute (an engine that stays down is probed once a minute)."""


class NoEngineAvailable(EngineUnavailable):
    """Every engine is drained by its breaker or gone. Retry-safe: nothing ran; recovery waits
    for an engine to come back, under its deadline."""


@dataclass
class EngineBreaker:
    """One engine's health: closed (admitting), draining for a cool-down after ``trip_after``
    infra failures in a row, or dead (its worker is gone). After a cool-down it admits again;
    a failure then drains it for longer (``backoff`` by the number of trips).

    Example:
        >>> breaker = EngineBreaker(trip_after=2)
        >>> breaker.record(EngineUnavailable("down")); breaker.admits(now=0.0)
        True
        >>> breaker.record(EngineUnavailable("down")); breaker.state(now=0.0)
        'draining'
    """

    trip_after: int = 2
    backoff: Backoff = DRAIN_BACKOFF
    failures_in_row: int = 0
    trips: int = 0
    drained_until: float = 0.0
    dead: str | None = None

    def record(self, failure: InfraError | None, *, now: float | None = None) -> None:
        """A call or a sandbox request on this engine ended: ``None`` when the engine held."""
        if failure is None:
            self.failures_in_row = 0
            return
        self.failures_in_row += 1
        if self.failures_in_row >= self.trip_after:
            now = time.monotonic() if now is None else now
            self.drained_until = now + self.backoff.delay(self.trips)
            self.trips += 1
            self.failures_in_row = self.trip_after - 1  # the next failure, once admitted, trips

    def kill(self, reason: str) -> None:
        self.dead = reason

    def state(self, *, now: float | None = None) -> str:
        if self.dead is not None:
            return "dead"
        now = time.monotonic() if now is None else now
        return "draining" if now < self.drained_until else "closed"

    def admits(self, *, now: float | None = None) -> bool:
        return self.state(now=now) == "closed"


@dataclass
class EngineStats:
    """What one engine did in a run, for the metrics line."""

    sandboxes: int = 0
    in_flight: int = 0
    failures: Counter[str] = field(default_factory=Counter)


class EngineLane:
    """The driver's side of one engine: its worker actor, its breaker, its counts."""

    def __init__(self, engine: EngineConfig, actor: Any, breaker: EngineBreaker) -> None:
        self.engine = engine
        self.actor = actor
        self.breaker = breaker
        self.stats = EngineStats()
        self.info: WorkerInfo | None = None
        self.worker_alive = True

    @property
    def name(self) -> str:
        return self.engine.name

    async def request(self, method: str, *args: Any, timeout_s: float,
                      may_have_run: bool) -> Any:
        """Call the worker; its outcome unwrapped, every failure classified for the breaker.

        Raises:
            InfraError: the engine failed (the worker's own classification), or the worker
                died or did not answer (``SandboxDied``/``SandboxUnresponsive`` when the call
                may have run, else ``EngineUnavailable``).
        """
        try:
            outcome: Outcome = await asyncio.wait_for(
                getattr(self.actor, method).remote(*args), timeout_s)
        except ray.exceptions.RayActorError as exc:
            self.worker_alive = False
            self.breaker.kill(f"its worker died ({type(exc).__name__})")
            error = self._lost(f"the worker of engine {self.name} died", may_have_run, exc)
            self._failed(error)
            raise error from None
        except ray.exceptions.RayError as exc:
            error = self._lost(f"engine {self.name}'s worker failed", may_have_run, exc)
            self._failed(error)
            raise error from None
        except TimeoutError:
            error = (SandboxUnresponsive if may_have_run else EngineUnavailable)(
                f"the worker of engine {self.name} did not answer within {timeout_s:g} s")
            self._failed(error)
            raise error from None
        if isinstance(outcome.error, InfraError):
            self._failed(outcome.error)
        else:
            self.breaker.record(None)
        return outcome.unwrap()

    def _lost(self, what: str, may_have_run: bool, exc: BaseException) -> InfraError:
        cls = SandboxDied if may_have_run else EngineUnavailable
        return cls(f"{what} ({type(exc).__name__})")

    def _failed(self, error: InfraError) -> None:
        self.stats.failures[error.kind] += 1
        was = self.breaker.state()
        self.breaker.record(error)
        now = self.breaker.state()
        if now != was:
            log.warning("engine %s is %s after %s: %s", self.name, now, error.kind,
                        self.breaker.dead or "episodes go to the other engines meanwhile")


class RemoteSandbox:
    """A sandbox held by an engine's worker: the call methods of
    :class:`~gymbox.runtime.Sandbox`, each one a round trip to the worker."""

    def __init__(self, lane: EngineLane, sandbox_id: str, spec: SandboxSpec) -> None:
        self._lane = lane
        self._spec = spec
        self.id = sandbox_id

    @property
    def engine(self) -> str:
        """The name of the engine this sandbox runs on."""
        return self._lane.name

    @property
    def workdir(self) -> str:
        """The agent's working directory in the sandbox (the spec's, as on every engine)."""
        return self._spec.workdir

    async def exec(self, cmd: str | Sequence[str], *, timeout: float | None = None,
                   cwd: str | None = None, env: Mapping[str, str] | None = None,
                   stdin: bytes | str | None = None) -> ExecResult:
        options = {"timeout": timeout, "cwd": cwd, "env": dict(env) if env else env,
                   "stdin": stdin}
        return await self._call("exec", (cmd,), options, timeout)

    async def run_python(self, code: str, *, timeout: float | None = None) -> ExecResult:
        return await self._call("run_python", (code,), {"timeout": timeout}, timeout)

    async def write_file(self, path: str, data: bytes | str, *, mode: int = 0o644) -> None:
        await self._call("write_file", (path, data), {"mode": mode}, FILE_OP_BACKSTOP_S)

    async def read_file(self, path: str) -> bytes:
        return await self._call("read_file", (path,), {}, FILE_OP_BACKSTOP_S)

    async def list_dir(self, path: str = ".") -> list[DirEntry]:
        return await self._call("list_dir", (path,), {}, FILE_OP_BACKSTOP_S)

    async def _call(self, method: str, args: tuple[Any, ...], options: dict[str, Any],
                    timeout: float | None) -> Any:
        given = {k: v for k, v in options.items() if v is not None}
        # A bad timeout is the worker's to refuse (InvalidRequest); the wait here stays finite.
        own = timeout if isinstance(timeout, int | float) and not isinstance(timeout, bool) \
            and 0 < timeout < float("inf") else self._spec.default_timeout_s
        spec = self._spec
        wait_s = own + spec.grace_s + spec.backstop_margin_s + NETWORK_MARGIN_S
        return await self._lane.request("call", self.id, method, args, given, timeout_s=wait_s,
                                        may_have_run=True)


class EngineSet:
    """A sandbox source spread over several engines, one Ray actor per engine.

    Use it as a :class:`~gymbox.runtime.SandboxPool`: ``async with`` starts every engine's
    worker (each fills its pool) and ends them; :meth:`acquire` hands out one sandbox for one
    episode, from the admitted engine with the fewest sandboxes in flight. Engines that fail
    to start are drained, not fatal, as long as one starts.

    Args:
        engines: the engines (names unique).
        spec: what every sandbox is.
        trip_after: consecutive infra failures that drain an engine.
        acquire_timeout_s: how long one engine may take to hand out a sandbox.

    Raises (from ``start``):
        ConfigurationError: no engines, repeated names, or no engine could start for a reason
            that will not heal (no image on it...).
        EngineUnavailable: no engine answered.
    """

    def __init__(self, engines: Sequence[EngineConfig], spec: SandboxSpec | None = None, *,
                 trip_after: int = 2, acquire_timeout_s: float = ACQUIRE_TIMEOUT_S) -> None:
        check_engines(engines)
        self.engines = tuple(engines)
        self.spec = spec or SandboxSpec()
        self.trip_after = trip_after
        self.acquire_timeout_s = acquire_timeout_s
        self.lanes: list[EngineLane] = []
        self._turn = 0

    async def start(self) -> None:
        if not ray.is_initialized():
            raise EngineUnavailable("EngineSet needs Ray: call ray.init(address=...) first")
        actor_class = ray.remote(EngineWorker)
        for engine in self.engines:
            # No CPU reserved: the worker waits on its engine, it does not compute.
            options: dict[str, Any] = {"num_cpus": 0, "max_concurrency": 1000,
                                       "max_restarts": 0}
            if engine.resource is not None:
                options["resources"] = {engine.resource: 0.001}
            actor = actor_class.options(**options).remote(engine, self.spec)
            self.lanes.append(EngineLane(engine, actor, EngineBreaker(self.trip_after)))
        started = await asyncio.gather(*(self._start(lane) for lane in self.lanes),
                                       return_exceptions=True)
        errors = [e for e in started if isinstance(e, BaseException)]
        if len(errors) == len(self.lanes):
            await self.close()
            raise errors[0]
        for lane, error in zip(self.lanes, started, strict=True):
            if isinstance(error, BaseException):
                lane.breaker.kill(f"it did not start: {error}")
                log.warning("engine %s did not start (%s): running on the others", lane.name,
                            error)

    async def _start(self, lane: EngineLane) -> None:
        # The first start loads gymbox in a fresh worker process and fills the pool.
        lane.info = await lane.request("start", timeout_s=300.0, may_have_run=False)
        log.info("engine %s: worker pid %d on %s, engine %s at %s", lane.name, lane.info.pid,
                 lane.info.hostname, lane.info.server_version, lane.info.address)

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[RemoteSandbox]:
        """A sandbox for one episode, released when the ``async with`` block ends.

        Raises:
            NoEngineAvailable: every engine is drained or gone (retry-safe).
            InfraError: the engines tried all failed to hand one out (retry-safe).
        """
        lane, sandbox_id = await self._take()
        lane.stats.sandboxes += 1
        try:
            yield RemoteSandbox(lane, sandbox_id, self.spec)
        finally:
            lane.stats.in_flight -= 1
            if lane.worker_alive:
                # In the background: the episode does not wait for a removal, as with a pool.
                lane.actor.release.remote(sandbox_id)

    async def _take(self) -> tuple[EngineLane, str]:
        last: InfraError | None = None
        for lane in self._candidates():
            lane.stats.in_flight += 1  # counted while waiting, so concurrent takes spread out
            try:
                sandbox_id = await lane.request("acquire", timeout_s=self.acquire_timeout_s,
                                                may_have_run=False)
            except InfraError as exc:
                lane.stats.in_flight -= 1
                last = exc
                continue
            return lane, sandbox_id
        if last is not None:
            raise last
        raise NoEngineAvailable("every engine is drained or gone: "
                                + "; ".join(f"{lane.name} {lane.breaker.state()}"
                                            for lane in self.lanes))

    def _candidates(self) -> list[EngineLane]:
        """Admitted engines, fewest sandboxes in flight first (ties in turn)."""
        self._turn += 1
        admitted = [lane for lane in self.lanes if lane.breaker.admits()]
        n = max(len(self.lanes), 1)
        return sorted(admitted, key=lambda lane: (
            lane.stats.in_flight, (self.lanes.index(lane) - self._turn) % n))

    def metrics(self) -> dict[str, float]:
        """``engine/<name>/sandboxes``, ``.../failures``, ``.../up`` for the metrics line."""
        row: dict[str, float] = {}
        for lane in self.lanes:
            prefix = f"engine/{lane.name}"
            row[f"{prefix}/sandboxes"] = float(lane.stats.sandboxes)
            row[f"{prefix}/failures"] = float(sum(lane.stats.failures.values()))
            row[f"{prefix}/up"] = float(lane.breaker.admits())
        return row

    async def close(self) -> None:
        """End every worker: each closes its pool (removing its sandboxes) first."""
        async def end(lane: EngineLane) -> None:
            if lane.worker_alive:
                with contextlib.suppress(ray.exceptions.RayError, TimeoutError):
                    await asyncio.wait_for(lane.actor.close.remote(), 120.0)
            ray.kill(lane.actor)

        await asyncio.gather(*(end(lane) for lane in self.lanes))

    async def __aenter__(self) -> EngineSet:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()
