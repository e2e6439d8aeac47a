"""Real faults, injected on purpose, from a seeded plan: fault-test an env before training on it.

:class:`FaultInjector` wraps any :class:`~gymbox.runtime.backend.Backend`. Give it to a
:class:`~gymbox.runtime.pool.SandboxPool` (or :meth:`Sandbox.open <gymbox.runtime.Sandbox.open>`)
and every sandbox it launches is exposed to the faults a :class:`FaultPlan` draws:

========================  ==========================================================================
kind                      what really happens
========================  ==========================================================================
``kill_container``        ``docker kill`` while the request is in flight
``pause_container``       ``docker pause`` while it is in flight: the call hangs until the
                          sandbox's liveness probe finds it paused (``SandboxUnresponsive``)
``kill_supervisor``       ``docker exec kill -9`` of the supervisor inside the container
``engine_outage``         the connection to the engine drops mid-call and the engine stays
                          unreachable for ``outage_s`` (a client-side fake: launches and inspects
                          raise ``EngineUnavailable``, removals wait for the engine to come back)
``garble_response``       the response frame's bytes are replaced by garbage on the wire
``truncate_response``     half of the response frame arrives, then the stream ends
``slow_start``            a launch waits ``slow_start_s`` before it starts the container
========================  ==========================================================================

The first six strike a request (a command, a Python cell, a file operation; never the pool's
health pings or lease renewals); ``slow_start`` strikes a launch. The container-level kinds need
the Docker backend; the wire-level kinds work on any backend.

Faults are **transient**, as infrastructure faults are: once a fault struck a request, the same
request (same command, same arguments) is spared for ``spare_s`` seconds, long enough for
recovery to run it again on a fresh sandbox. A failure that follows the same request onto every
fresh sandbox is what an agent-caused failure looks like, and recovery blames the agent for it
(see :mod:`gymbox.runtime.recovery`).

Every injection is logged (:attr:`FaultInjector.log`): what, when, on which sandbox, during
which request.

Example:
    >>> plan = FaultPlan.uniform(0.2, seed=7)
    >>> round(sum(plan.rates.values()), 6)
    0.2
    >>> plan.draw_sequence(8)  # the same seed gives the same faults
    [None, None, None, 'kill_container', None, None, None, 'garble_response']
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import math
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Protocol

import docker.errors

from gymbox.runtime import wire
from gymbox.runtime.attribution import Evidence
from gymbox.runtime.backend import Backend, Instance, InstanceState, Link
from gymbox.runtime.docker_backend import DockerBackend
from gymbox.runtime.errors import EngineUnavailable, InvalidRequest
from gymbox.runtime.spec import SandboxSpec


class FaultKind(enum.StrEnum):
    """The faults a :class:`FaultPlan` can draw."""

    KILL_CONTAINER = "kill_container"
    PAUSE_CONTAINER = "pause_container"
    KILL_SUPERVISOR = "kill_supervisor"
    ENGINE_OUTAGE = "engine_outage"
    GARBLE_RESPONSE = "garble_response"
    TRUNCATE_RESPONSE = "truncate_response"
    SLOW_START = "slow_start"


LAUNCH_KINDS = frozenset({FaultKind.SLOW_START})
REQUEST_KINDS = frozenset(FaultKind) - LAUNCH_KINDS
CONTAINER_KINDS = frozenset(
    {FaultKind.KILL_CONTAINER, FaultKind.PAUSE_CONTAINER, FaultKind.KILL_SUPERVISOR}
)
AGENT_OPS = frozenset({"exec", "python", "write", "read", "list"})
"""The supervisor requests faults may strike: the agent's calls, not health pings or leases."""


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """What to inject, how often, from which seed.

    Attributes:
        rates: probability of each kind: per request for the request kinds (their sum is the
            chance that a request is struck at all, at most 1), per launch for ``slow_start``.
        seed: the seed of the draws; the same seed and the same order of requests give the
            same faults.
        scripted: request ordinal (1-based, counting the requests faults may strike, across
            all sandboxes of the injector) → the fault that strikes it, whatever ``rates`` say.
            ``{2: FaultKind.KILL_CONTAINER}`` kills the container during the second call.
        slow_start_s: how long a ``slow_start`` launch waits.
        outage_s: how long an ``engine_outage`` keeps the engine unreachable.
        spare_s: how long a struck request is spared (so that faults stay transient).

    Example:
        >>> FaultPlan({FaultKind.KILL_CONTAINER: 0.1, FaultKind.SLOW_START: 0.5}, seed=3).rates[
        ...     FaultKind.KILL_CONTAINER]
        0.1
        >>> FaultPlan({FaultKind.KILL_CONTAINER: 0.7, FaultKind.PAUSE_CONTAINER: 0.7})
        Traceback (most recent call last):
        ...
        gymbox.runtime.errors.InvalidRequest: the request fault rates add up to 1.4; a request can \
be struck by one fault at most, so keep their sum <= 1
    """

    rates: Mapping[FaultKind, float] = field(default_factory=dict)
    seed: int = 0
    scripted: Mapping[int, FaultKind] = field(default_factory=dict)
    slow_start_s: float = 2.0
    outage_s: float = 1.0
    spare_s: float = 60.0

    def __post_init__(self) -> None:
        rates = {}
        for kind, rate in self.rates.items():
            try:
                kind = FaultKind(kind)
            except ValueError:
                raise InvalidRequest(
                    f"unknown fault kind {kind!r}; choose from {', '.join(FaultKind)}"
                ) from None
            if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
                raise InvalidRequest(f"the rate of {kind} must be a probability in [0, 1], "
                                     f"got {rate!r}")
            rates[kind] = float(rate)
        total = sum(rate for kind, rate in rates.items() if kind in REQUEST_KINDS)
        if total > 1 + 1e-9:
            raise InvalidRequest(
                f"the request fault rates add up to {total:g}; a request can be struck by one "
                "fault at most, so keep their sum <= 1")
        scripted = {}
        for ordinal, kind in self.scripted.items():
            if not isinstance(ordinal, int) or ordinal < 1:
                raise InvalidRequest(f"scripted faults are keyed by request number (1, 2, ...), "
                                     f"got {ordinal!r}")
            if FaultKind(kind) not in REQUEST_KINDS:
                raise InvalidRequest(f"{kind} strikes launches, not requests; give it a rate")
            scripted[ordinal] = FaultKind(kind)
        for name in ("slow_start_s", "outage_s", "spare_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise InvalidRequest(f"FaultPlan.{name} must be a number of seconds >= 0, "
                                     f"got {value!r}")
        object.__setattr__(self, "rates", MappingProxyType(rates))
        object.__setattr__(self, "scripted", MappingProxyType(scripted))

    @classmethod
    def uniform(
        cls, rate: float, *, seed: int = 0, kinds: frozenset[FaultKind] = REQUEST_KINDS,
        **options: Any,
    ) -> FaultPlan:
        """A plan that strikes a ``rate`` share of requests, split evenly over ``kinds``.

        Example:
            >>> FaultPlan.uniform(0.3, kinds=frozenset({FaultKind.KILL_CONTAINER})).rates
            mappingproxy({<FaultKind.KILL_CONTAINER: 'kill_container'>: 0.3})
        """
        if not kinds or not set(kinds) <= REQUEST_KINDS:
            raise InvalidRequest(f"kinds must be request kinds: {', '.join(sorted(REQUEST_KINDS))}")
        ordered = sorted(kinds)
        return cls({kind: rate / len(ordered) for kind in ordered}, seed=seed, **options)

    @property
    def needs_container(self) -> bool:
        """True when some fault acts on a container, which only the Docker backend has."""
        return any(self.rates.get(k, 0) > 0 for k in CONTAINER_KINDS) or any(
            k in CONTAINER_KINDS for k in self.scripted.values())

    def draws(self) -> Draws:
        """A fresh, seeded stream of decisions following this plan."""
        return Draws(self)

    def draw_sequence(self, requests: int) -> list[str | None]:
        """The faults the first ``requests`` distinct requests would meet (for a quick look)."""
        draws = self.draws()
        return [None if (k := draws.for_request()) is None else str(k) for _ in range(requests)]


class Draws:
    """The decisions of one :class:`FaultPlan`, drawn in order from its seed."""

    def __init__(self, plan: FaultPlan) -> None:
        self._plan = plan
        self._requests = random.Random(f"requests/{plan.seed}")
        self._launches = random.Random(f"launches/{plan.seed}")
        self._ordinal = 0
        ordered = sorted(k for k in plan.rates if k in REQUEST_KINDS)
        self._request_kinds = [(k, plan.rates[k]) for k in ordered]

    def for_request(self) -> FaultKind | None:
        """The fault that strikes the next request, or None."""
        self._ordinal += 1
        u = self._requests.random()  # drawn every time, so scripting one request shifts nothing
        if self._ordinal in self._plan.scripted:
            return self._plan.scripted[self._ordinal]
        for kind, rate in self._request_kinds:
            if u < rate:
                return kind
            u -= rate
        return None

    def for_launch(self) -> FaultKind | None:
        """The fault that strikes the next launch, or None."""
        rate = self._plan.rates.get(FaultKind.SLOW_START, 0.0)
        return FaultKind.SLOW_START if self._launches.random() < rate else None


@dataclass(frozen=True, slots=True)
class InjectedFault:
    """One fault that was injected.

    Attributes:
        kind: what was done.
        at_s: when, in seconds since the injector was made.
        sandbox: the instance id (the container id for Docker); ``(launching)`` for a slow
            start, which strikes before there is an instance.
        request: the request it struck, shortened (``exec: sh -c 'ls'``); empty for a launch.
    """

    kind: FaultKind
    at_s: float
    sandbox: str
    request: str = ""


class FaultLog:
    """The faults an injector injected, in order."""

    def __init__(self) -> None:
        self._entries: list[InjectedFault] = []

    def append(self, fault: InjectedFault) -> None:
        self._entries.append(fault)

    def __iter__(self) -> Iterator[InjectedFault]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def by_kind(self) -> Counter[str]:
        """How many faults of each kind were injected."""
        return Counter(str(f.kind) for f in self._entries)

    def as_dict(self) -> dict[str, float]:
        """Flat ``{"faults/injected/kill_container": 2.0, ...}``, for a JSONL metrics line."""
        flat = {"faults/injected": float(len(self._entries))}
        flat.update({f"faults/injected/{kind}": float(n) for kind, n in self.by_kind().items()})
        return flat

    def on(self, sandbox_id: str) -> list[InjectedFault]:
        """The faults injected into one sandbox."""
        return [f for f in self._entries if f.sandbox == sandbox_id]


class Saboteur(Protocol):
    """Does the container-level faults to an instance of one backend."""

    async def kill(self, instance_id: str) -> None: ...

    async def pause(self, instance_id: str) -> None: ...

    async def unpause(self, instance_id: str) -> None: ...

    async def kill_process(self, instance_id: str, pid: int) -> None: ...


class DockerSaboteur:
    """Container faults through the Docker engine's own API, as an operator would do them."""

    def __init__(self, backend: DockerBackend) -> None:
        self._backend = backend

    async def kill(self, instance_id: str) -> None:
        await self._quietly(lambda api: api.kill(instance_id))

    async def pause(self, instance_id: str) -> None:
        await self._quietly(lambda api: api.pause(instance_id))

    async def unpause(self, instance_id: str) -> None:
        await self._quietly(lambda api: api.unpause(instance_id))

    async def kill_process(self, instance_id: str, pid: int) -> None:
        def kill(api: Any) -> None:
            # The shell's builtin: slim images have no kill binary.
            exec_id = api.exec_create(instance_id, ["/bin/sh", "-c", f"kill -9 {pid:d}"],
                                      user="0")["Id"]
            api.exec_start(exec_id)

        await self._quietly(kill)

    async def _quietly(self, action: Any) -> None:
        def run() -> None:
            # The container may be gone already (auto-removed after another fault): nothing to do.
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                action(self._backend.client.api)

        await asyncio.to_thread(run)


class FaultInjector:
    """A :class:`~gymbox.runtime.backend.Backend` that injects the faults of a plan.

    Args:
        backend: the backend that really runs the sandboxes.
        plan: what to inject.
        testimony: offer the injector's log as evidence of who broke a sandbox (as a test
            harness knows what it did). False leaves only what the platform itself observes:
            faults that leave no trace at the engine (a garbled or truncated answer) are then
            ambiguous, as a real one would be.

    Raises:
        InvalidRequest: the plan has container faults and ``backend`` is not Docker.

    Example:
        >>> from gymbox.runtime import DockerBackend, SandboxPool
        >>> faults = FaultInjector(DockerBackend(), FaultPlan.uniform(0.1, seed=1))
        >>> pool = SandboxPool(backend=faults)  # doctest: +SKIP
    """

    def __init__(self, backend: Backend, plan: FaultPlan, *, testimony: bool = True) -> None:
        if plan.needs_container and not isinstance(backend, DockerBackend):
            raise InvalidRequest(
                f"the plan kills or pauses containers, which the {backend.name!r} backend does "
                "not have; use DockerBackend, or only the wire-level kinds "
                "(engine_outage, garble_response, truncate_response, slow_start)")
        self.inner = backend
        self.plan = plan
        self.testimony = testimony
        self.name = backend.name
        self.log = FaultLog()
        self.requests = 0
        """How many requests faults could have struck (to compare ``len(log)`` with)."""
        self.saboteur: Saboteur | None = (
            DockerSaboteur(backend) if isinstance(backend, DockerBackend) else None)
        """Does the container faults; None on a backend without containers."""
        self._draws = plan.draws()
        self._spared_until: dict[str, float] = {}
        self._started = time.monotonic()
        self._outage_until = 0.0
        self._paused: set[str] = set()
        self._strikes: set[asyncio.Task[None]] = set()

    async def launch(self, spec: SandboxSpec) -> Instance:
        self.check_engine("launching a sandbox")
        if self._draws.for_launch() is FaultKind.SLOW_START:
            self.record(FaultKind.SLOW_START, "(launching)")
            await asyncio.sleep(self.plan.slow_start_s)
            self.check_engine("launching a sandbox")
        instance = await self.inner.launch(spec)
        return FaultyInstance(self, instance)

    async def close(self) -> None:
        """Wait for strikes in flight and unpause what is still paused (so it can be removed)."""
        await asyncio.gather(*self._strikes, return_exceptions=True)
        for instance_id in list(self._paused):
            await self.release(instance_id)

    # -- used by the wrapped instances -----------------------------------------------------------

    @property
    def engine_down(self) -> bool:
        return time.monotonic() < self._outage_until

    def check_engine(self, doing: str) -> None:
        if self.engine_down:
            raise EngineUnavailable(
                f"{doing}: the Docker engine did not answer (injected engine_outage, "
                f"{self._outage_until - time.monotonic():.1f} s left)")

    async def wait_for_engine(self) -> None:
        while self.engine_down:
            await asyncio.sleep(self._outage_until - time.monotonic())

    def decide(self, request: dict[str, Any]) -> FaultKind | None:
        """The fault for one request about to be sent, or None (transient: see the module doc)."""
        if request.get("op") not in AGENT_OPS:
            return None
        self.requests += 1
        key = json.dumps({k: v for k, v in request.items() if k != "id"}, sort_keys=True)
        now = time.monotonic()
        if self._spared_until.get(key, 0.0) > now:
            return None
        kind = self._draws.for_request()
        if kind is not None:
            self._spared_until[key] = now + self.plan.spare_s
        return kind

    def record(self, kind: FaultKind, sandbox: str, request: str = "") -> None:
        self.log.append(InjectedFault(kind, time.monotonic() - self._started, sandbox, request))

    def start_outage(self) -> None:
        self._outage_until = max(self._outage_until, time.monotonic() + self.plan.outage_s)

    def spawn(self, strike: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(strike)
        self._strikes.add(task)
        task.add_done_callback(self._strikes.discard)
        return task

    async def pause(self, instance_id: str) -> None:
        assert self.saboteur is not None
        self._paused.add(instance_id)
        await self.saboteur.pause(instance_id)

    async def release(self, instance_id: str) -> None:
        """Undo what would stop an instance from being removed."""
        if instance_id in self._paused and self.saboteur is not None:
            self._paused.discard(instance_id)
            await self.saboteur.unpause(instance_id)


class FaultyInstance:
    """An instance whose link and control calls pass through the injector."""

    def __init__(self, injector: FaultInjector, inner: Instance) -> None:
        self.inner = inner
        self.id = inner.id
        self.workdir = inner.workdir
        self.link: Link = FaultyLink(injector, self, inner.link)
        self._injector = injector

    async def state(self) -> InstanceState:
        self._injector.check_engine("inspecting a sandbox")
        return await self.inner.state()

    async def postmortem(self, since: float) -> Evidence:
        """The inner instance's evidence, with the injector's own testimony: the faults it
        injected into this instance (an engine that is down, by injection, does not answer)."""
        injected = tuple(str(f.kind) for f in self._injector.log.on(self.id))
        if self._injector.engine_down:
            evidence = Evidence(engine_answered=False)
        else:
            evidence = await self.inner.postmortem(since)
        return replace(evidence, injected=injected) if self._injector.testimony else evidence

    async def destroy(self) -> None:
        # A real client retries its removal until the engine is back; so does this one.
        await self._injector.wait_for_engine()
        await self._injector.release(self.id)
        await self.inner.destroy()


class FaultyLink:
    """The supervisor stream with faults: requests are inspected, responses re-framed."""

    def __init__(self, injector: FaultInjector, instance: FaultyInstance, inner: Link) -> None:
        self._injector = injector
        self._instance = instance
        self._inner = inner
        self._buffer = bytearray()
        self._outgoing = bytearray()
        self._struck: dict[int, FaultKind] = {}
        self._supervisor_pid: int | None = None
        self._ended = False
        self._dropped = False
        self._strike: asyncio.Future[None] | None = None

    def write(self, data: bytes) -> None:
        self._inner.write(data)
        self._outgoing += data
        for frame in wire.frames(self._outgoing):
            request = _frame_json(frame)
            kind = self._injector.decide(request) if request is not None else None
            if kind is None or request is None:
                continue
            self._struck[request["id"]] = kind
            self._injector.record(kind, self._instance.id, _describe(request))
            self._strike = self._injector.spawn(self._do_strike(kind))

    async def read(self) -> bytes:
        while True:
            if self._dropped:
                raise ConnectionResetError("the connection to the Docker engine was dropped "
                                           "(injected engine_outage)")
            if self._ended:
                return b""
            out = self._pass_frames()
            if out:
                return out
            chunk = await self._inner.read()
            if not chunk:
                # The stream ends when the strike has landed (the container is dead by then).
                if self._strike is not None:
                    await asyncio.gather(self._strike, return_exceptions=True)
                # Hand over what is left (a partial frame) and then the end of the stream.
                self._ended = True
                rest, self._buffer = bytes(self._buffer), bytearray()
                if rest:
                    return rest
                continue
            self._buffer += chunk

    def close(self) -> None:
        self._inner.close()

    async def _do_strike(self, kind: FaultKind) -> None:
        if kind is FaultKind.ENGINE_OUTAGE:
            self._injector.start_outage()
            self._dropped = True
            self._inner.close()  # the attach stream went with the connection: the supervisor exits
            return
        if kind not in CONTAINER_KINDS:
            return  # the wire faults act on the response, in read()
        saboteur = self._injector.saboteur
        assert saboteur is not None  # the injector refuses container kinds without one
        instance_id = self._instance.id
        if kind is FaultKind.KILL_CONTAINER:
            await saboteur.kill(instance_id)
        elif kind is FaultKind.PAUSE_CONTAINER:
            await self._injector.pause(instance_id)
        elif self._supervisor_pid is not None:
            await saboteur.kill_process(instance_id, self._supervisor_pid)

    def _pass_frames(self) -> bytes:
        """Complete frames from the buffer, each as the faults on its request leave it."""
        out = bytearray()
        for frame in wire.frames(self._buffer):
            size = len(frame) - wire.HEADER.size
            message = _frame_json(frame)
            rid = message.get("id") if message is not None else None
            if message is not None and message.get("event") == "ready":
                self._supervisor_pid = message.get("pid")
            kind = self._struck.pop(rid, None) if isinstance(rid, int) else None
            if kind is None:
                out += frame
            elif kind is FaultKind.GARBLE_RESPONSE:
                out += frame[: wire.HEADER.size] + _garbage(size)
            elif kind is FaultKind.TRUNCATE_RESPONSE:
                out += frame[: wire.HEADER.size + size // 2]
                self._ended = True
                self._buffer.clear()
                break
            # Any other struck request: its answer never arrives (the container is dead,
            # paused, or its supervisor killed), even if it raced the strike.
        return bytes(out)


def _frame_json(frame: bytes) -> dict[str, Any] | None:
    try:
        message = json.loads(frame[wire.HEADER.size :])
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


def _describe(request: dict[str, Any]) -> str:
    op = request.get("op", "?")
    if op == "exec":
        detail = " ".join(request.get("argv", []))
    elif op == "python":
        detail = request.get("code", "")
    else:
        detail = request.get("path", "")
    return f"{op}: {detail}"[:120]


def _garbage(size: int) -> bytes:
    pattern = b"\x00garbled by gymbox fault injection\xff"
    return (pattern * (size // len(pattern) + 1))[:size]


@contextlib.asynccontextmanager
async def inject_faults(plan: FaultPlan, backend: Backend | None = None, *,
                        testimony: bool = True) -> AsyncIterator[FaultInjector]:
    """A :class:`FaultInjector` over ``backend`` (default: Docker) for the ``async with`` block.

    On exit it waits for strikes in flight and unpauses what it paused, so the sandboxes can
    be removed. Read ``injector.log`` for what was injected.

    Example (a pytest test; see docs/fault-testing.md)::

        async def test_env_survives_faults():
            async with (inject_faults(FaultPlan.uniform(0.2, seed=1)) as faults,
                        SandboxPool(backend=faults) as pool):
                env = MyEnv(sandboxes=RecoveringSandboxes(pool))
                ...
            assert faults.log.by_kind()
    """
    injector = FaultInjector(backend or DockerBackend(), plan, testimony=testimony)
    try:
        yield injector
    finally:
        await injector.close()
