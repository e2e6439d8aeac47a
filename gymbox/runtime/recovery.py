"""Episode recovery and attribution: an infrastructure failure never becomes a reward, and an
agent's own failure never becomes a masked episode.

:class:`RecoveringSandboxes` is a sandbox source (what :class:`~gymbox.envs.ToolEnv` takes as
``sandboxes``). Each episode's sandbox is a :class:`RecoveringSandbox` (a
:class:`~gymbox.runtime.api.SandboxAPI`, as the sandbox it wraps) that journals every call and
its outcome. When a call fails with an :class:`~gymbox.runtime.errors.InfraError`, the failure
is first attributed on evidence (:func:`~gymbox.runtime.attribution.attribute`: the engine's
record and events for the container, whether the engine answered, the supervisor's last
resource-pressure report, in tests the fault injector's log), then:

* ``AGENT`` (it exhausted its own limits): the call's outcome is the agent's, an
  :class:`~gymbox.runtime.result.ExecResult` killed by ``SIGKILL`` (an ``OSError`` for a file
  operation) whose message says that the call destroyed its sandbox; scored as the env scores
  any failing command. The sandbox is rebuilt from the journal, without that call, before the
  next one.
* ``INFRA`` (nothing the agent can do): take a fresh sandbox, replay the journal into it
  checking that every outcome equals the recorded one, run the failed call again, and hand its
  outcome to the env as if nothing had happened.
* ``AMBIGUOUS``: re-test it the same way. If the call breaks ``blame_after`` sandboxes in a
  row (the last ones rebuilt from the journal) it is the agent's; if the re-run succeeds on a
  faithful rebuild, the episode goes on.

**What it takes to be masked.** An episode ends ``infra_failed``, its reward invalid, only when
the failure was attributed ``INFRA`` *and* recovery could not rebuild the sandbox faithfully:
attempts (:attr:`RecoveryPolicy.max_attempts`) or time (:meth:`RecoveryPolicy.deadline_for`,
which grows with the journal's recorded durations) ran out, or the replay diverged. Nothing
else is masked:

* an ``AGENT`` failure is scored at once;
* an ``AMBIGUOUS`` failure whose re-test diverges, or runs out of attempts or time, is scored
  as the agent's (the same "destroyed its sandbox" outcome): an agent cannot escape by making
  its calls non-deterministic, slow or dependent on which sandbox they run in;
* a replay that breaks a fresh sandbox with evidence that is not ``INFRA`` (a call that crashes
  only when run again later) is the agent's too, whatever the first failure was.

The one thing the agent cannot do is make a failure ``INFRA``: that evidence (an outside kill,
stop, pause or exec, an engine that does not answer, an expired lease, an injected fault) is
out of its reach. Waiting for a fresh sandbox while none can be started (the engine is down)
takes time but no attempt.

With independent infrastructure faults at a per-call rate *p* that leave no evidence, a call is
wrongly blamed with probability about *p*^(blame_after - 1);
:class:`~gymbox.runtime.faults.FaultInjector` models faults as transient and never strikes the
re-run of a struck request.

Example:
    >>> async def episode(pool):  # doctest: +SKIP
    ...     env = MyEnv(sandboxes=RecoveringSandboxes(pool, RecoveryPolicy(max_attempts=3)))
    ...     obs, info = await env.areset(seed=0)
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gymbox.runtime.api import SandboxAPI, SandboxSource
from gymbox.runtime.attribution import Cause, attribute
from gymbox.runtime.breaker import InfraCircuitBreaker
from gymbox.runtime.errors import InfraError
from gymbox.runtime.result import ExecResult
from gymbox.runtime.retry import Backoff
from gymbox.runtime.sandbox import DirEntry

log = logging.getLogger(__name__)


RECOVERY_BACKOFF = Backoff(initial_s=0.1, factor=2.0, max_s=1.0)
"""Short waits: a fresh sandbox usually comes from a warm pool at once."""

START_RETRY_S = 0.05
"""The pause before asking again for a sandbox that failed to start. Short and constant: the
source paces its own starts (a pool raises a failed start only as it happens, and retries it
with backoff), and a longer wait would outlast an engine blip by up to itself."""


class ReplayDiverged(InfraError):
    """A replayed call gave a different outcome than it did the first time: the sandbox's state
    cannot be rebuilt, so the episode cannot go on as it was."""


@dataclass(frozen=True, slots=True)
class RecoveryPolicy:
    """How hard recovery tries.

    Attributes:
        max_attempts: fresh sandboxes tried for one failure before giving up (failing to get
            one at all only takes time, see ``deadline_s``).
        deadline_s: the most time one recovery may take, all attempts together, for an empty
            journal; :meth:`deadline_for` adds time for the journal to replay.
        replay_factor: seconds of recovery allowed per second that the journal's calls (and
            the failed call, up to its failure) took when they first ran: a long episode of slow
            legal calls still fits its replay in the deadline.
        blame_after: how many sandboxes in a row one call must break to be the agent's fault
            (2: it broke its sandbox, then a fresh one rebuilt from the journal).
        backoff: the wait between attempts.

    Example:
        >>> RecoveryPolicy(max_attempts=0)
        Traceback (most recent call last):
        ...
        ValueError: max_attempts must be >= 1, got 0
    """

    max_attempts: int = 3
    deadline_s: float = 60.0
    replay_factor: float = 3.0
    blame_after: int = 2
    backoff: Backoff = RECOVERY_BACKOFF

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.blame_after < 2:
            raise ValueError(f"blame_after must be >= 2 (one break proves nothing), got "
                             f"{self.blame_after}")
        if not self.deadline_s > 0:
            raise ValueError(f"deadline_s must be > 0, got {self.deadline_s}")
        if not self.replay_factor >= 1:
            raise ValueError(f"replay_factor must be >= 1 (a replay takes as long as the calls "
                             f"did), got {self.replay_factor}")

    def deadline_for(self, recorded_s: float) -> float:
        """The deadline of a recovery whose journal took ``recorded_s`` seconds to run:
        ``deadline_s + replay_factor * recorded_s``, since each attempt replays it all."""
        return self.deadline_s + self.replay_factor * recorded_s


@dataclass
class RecoveryMetrics:
    """Counts for the training log, by failure kind (``sandbox_died``, ...).

    Attributes:
        recovered: failures after which the episode went on as if nothing had happened.
        masked: failures recovery gave up on; their episodes end ``infra_failed``.
        agent_caused: failures blamed on the agent's call and scored.
        start_failed: episodes that could not get a first sandbox.
        stalled_s: seconds that calls which met a failure took, from being made to their
            outcome (noticing the failure, getting a fresh sandbox, replaying, running again):
            what each kind of failure costs an episode.
        replays: journal entries replayed into fresh sandboxes.
    """

    recovered: Counter[str] = field(default_factory=Counter)
    masked: Counter[str] = field(default_factory=Counter)
    agent_caused: Counter[str] = field(default_factory=Counter)
    start_failed: Counter[str] = field(default_factory=Counter)
    stalled_s: Counter[str] = field(default_factory=Counter)
    replays: int = 0

    def as_dict(self) -> dict[str, float]:
        """Flat ``{"recovery/recovered/sandbox_died": 3.0, ...}``, for a JSONL metrics line."""
        flat = {"recovery/replays": float(self.replays)}
        for name in ("recovered", "masked", "agent_caused", "start_failed", "stalled_s"):
            counts: Counter[str] = getattr(self, name)
            flat[f"recovery/{name}"] = float(sum(counts.values()))
            for kind, n in counts.items():
                flat[f"recovery/{name}/{kind}"] = float(n)
        return flat


@dataclass(frozen=True, slots=True)
class Call:
    """One sandbox call, as the journal keeps it: the operation bound to its arguments, and the
    outcome it had.

    Attributes:
        method: the :class:`~gymbox.runtime.api.SandboxAPI` method it calls (for logs).
        invoke: the call itself, given the sandbox to run on.
        summary: its first argument, shortened, for logs and messages.
        outcome: what it returned (None until it ran, or when it raised the agent's error).
        error: the agent's ``OSError`` it raised, if any.
        duration_s: how long it took when it ran (what replaying it is expected to take).
    """

    method: str
    invoke: Callable[[SandboxAPI], Awaitable[Any]]
    summary: str = ""
    outcome: Any = None
    error: OSError | None = None
    duration_s: float = 0.0

    async def run(self, sandbox: SandboxAPI) -> Call:
        """Run this call on ``sandbox``; the copy that comes back holds the new outcome.

        An ``OSError`` of a file operation is the agent's outcome (no such file...) and is kept;
        ``InfraError`` propagates.
        """
        started = time.monotonic()
        try:
            outcome = await self.invoke(sandbox)
        except OSError as exc:
            return replace(self, outcome=None, error=exc,
                           duration_s=time.monotonic() - started)
        return replace(self, outcome=outcome, error=None, duration_s=time.monotonic() - started)

    def same_outcome(self, other: Call) -> bool:
        """True when ``other`` is this call with an outcome the agent could not tell apart."""
        if (self.error is None) != (other.error is None):
            return False
        if self.error is not None and other.error is not None:
            return (type(self.error), self.error.errno) == (type(other.error), other.error.errno)
        return _observable(self.outcome) == _observable(other.outcome)

    def result(self) -> Any:
        """The outcome as the caller gets it: returned, or the agent's ``OSError`` raised."""
        if self.error is not None:
            raise self.error
        return self.outcome

    def describe(self) -> str:
        return f"{self.method}({self.summary})"


def _summary(first: object) -> str:
    return repr(first)[:80]


def _observable(outcome: Any) -> Any:
    """What the agent can see of an outcome: an ExecResult without its timing."""
    if isinstance(outcome, ExecResult):
        return replace(outcome, duration_s=0.0)
    return outcome


@dataclass(frozen=True, slots=True)
class Blame:
    """The verdict that a call destroyed ``breaks`` sandboxes in a row, the last with
    ``failure``: the agent caused it (``reason`` says on what evidence, when not the breaks
    alone)."""

    failure: InfraError
    breaks: int
    reason: str = ""


def destroyed_sandbox(call: Call, blame: Blame) -> Call:
    """The agent's outcome for a call that destroyed its sandboxes: for a command or a cell, an
    ``ExecResult`` killed by SIGKILL; for a file operation, an ``OSError`` (EIO), as any of the
    agent's file errors. Either way the message says what happened."""
    what = "command" if call.method in ("exec", "run_python") else "file operation"
    again = "" if blame.breaks < 2 else (
        f", and did so again on {blame.breaks - 1} fresh "
        f"sandbox{'es' if blame.breaks > 2 else ''} rebuilt from the earlier calls")
    why = f" ({blame.reason})" if blame.reason else ""
    message = (
        f"gymbox: this {what} destroyed its sandbox ({blame.failure.kind}){again}{why}; its "
        "effects are lost, and the sandbox is back as it was before it."
    )
    if what == "file operation":
        return replace(call, outcome=None, error=OSError(errno.EIO, message))
    result = ExecResult(
        exit_code=None, signal=int(signal.SIGKILL), stdout="", stderr=message + "\n",
        stdout_bytes=0, stderr_bytes=len(message.encode()) + 1, truncated=False,
        timed_out=False, oom_killed=False, duration_s=0.0,
    )
    return replace(call, outcome=result, error=None)


@dataclass
class _Lease:
    sandbox: SandboxAPI
    release: Callable[[], Awaitable[None]]


async def take(source: SandboxSource) -> _Lease:
    """One sandbox from ``source``: its ``acquire()`` is entered as an async context manager
    (as :meth:`SandboxPool.acquire` is), and the lease's ``release`` exits it."""
    stack = contextlib.AsyncExitStack()
    sandbox = await stack.enter_async_context(source.acquire())
    return _Lease(sandbox, stack.aclose)


class RecoveringSandbox:
    """A sandbox that survives infrastructure failures by rebuilding itself from its journal.

    It is a :class:`~gymbox.runtime.api.SandboxAPI`, as the sandbox it wraps: ``id``,
    ``workdir`` and the call methods of :class:`~gymbox.runtime.Sandbox` (``exec``, ``run_python``,
    ``write_file``, ``read_file``, ``list_dir``) with the same arguments and outcomes; calls are
    serialised, so the journal's order is the order they ran in.

    Raises (from any call):
        InfraError: recovery gave up (the episode is to be masked); :class:`ReplayDiverged`
            when the journal could not be replayed faithfully.
    """

    def __init__(self, source: RecoveringSandboxes) -> None:
        self._source = source
        self._lease: _Lease | None = None
        self._journal: list[Call] = []
        self._lock = asyncio.Lock()
        self._closed = False
        self._start_failure: InfraError | None = None
        self._releasing: set[asyncio.Task[None]] = set()
        self._last_id = ""
        self._workdir = ""
        self.failure: InfraError | None = None
        """The failure recovery gave up on, once it has."""

    @property
    def journal(self) -> Sequence[Call]:
        """Every call that ran, in order, with its outcome."""
        return tuple(self._journal)

    @property
    def sandbox(self) -> SandboxAPI | None:
        """The sandbox serving calls now (None between a blamed call and the next call)."""
        return self._lease.sandbox if self._lease is not None else None

    @property
    def id(self) -> str:
        """The id of the sandbox serving calls now (the last one, between a blamed call and the
        next call): a name for logs, which changes when recovery replaces the sandbox."""
        return self._lease.sandbox.id if self._lease is not None else self._last_id

    @property
    def workdir(self) -> str:
        """The agent's working directory, the same in every sandbox that replaces the first."""
        return self._workdir

    async def exec(
        self,
        cmd: str | Sequence[str],
        *,
        timeout: float | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | str | None = None,
    ) -> ExecResult:
        """:meth:`Sandbox.exec <gymbox.runtime.Sandbox.exec>`, journalled and recovered."""
        return await self._call(Call(
            "exec", lambda s: s.exec(cmd, timeout=timeout, cwd=cwd, env=env, stdin=stdin),
            _summary(cmd)))

    async def run_python(self, code: str, *, timeout: float | None = None) -> ExecResult:
        """:meth:`Sandbox.run_python <gymbox.runtime.Sandbox.run_python>`, journalled and
        recovered (replaying the cells rebuilds the interpreter's names)."""
        return await self._call(Call(
            "run_python", lambda s: s.run_python(code, timeout=timeout), _summary(code)))

    async def write_file(self, path: str, data: bytes | str, *, mode: int = 0o644) -> None:
        """:meth:`Sandbox.write_file <gymbox.runtime.Sandbox.write_file>`, journalled."""
        await self._call(Call(
            "write_file", lambda s: s.write_file(path, data, mode=mode), _summary(path)))

    async def read_file(self, path: str) -> bytes:
        """:meth:`Sandbox.read_file <gymbox.runtime.Sandbox.read_file>`, journalled."""
        return await self._call(Call("read_file", lambda s: s.read_file(path), _summary(path)))

    async def list_dir(self, path: str = ".") -> list[DirEntry]:
        """:meth:`Sandbox.list_dir <gymbox.runtime.Sandbox.list_dir>`, journalled."""
        return await self._call(Call("list_dir", lambda s: s.list_dir(path), _summary(path)))

    async def start(self) -> None:
        """Take the first sandbox, trying as recovery does (a failed start is retry-safe).

        Raises:
            InfraError: attempts or time ran out.
        """
        async with self._lock:
            await self._recover(None, None)

    async def close(self) -> None:
        """Give the sandbox back and report the episode's outcome to the circuit breaker."""
        if self._closed:
            return
        self._closed = True
        await self._drop()
        await asyncio.gather(*self._releasing)
        self._source.episode_ended(self.failure)

    async def __aenter__(self) -> RecoveringSandbox:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    # -- recovery --------------------------------------------------------------------------------

    async def _call(self, call: Call) -> Any:
        async with self._lock:
            if self.failure is not None:
                raise self.failure
            if self._lease is None:
                await self._rebuild()
            assert self._lease is not None
            started = time.monotonic()
            try:
                done = await call.run(self._lease.sandbox)
            except InfraError as failure:
                try:
                    outcome = await self._recover_from(call, failure, time.monotonic() - started)
                finally:
                    self._source.metrics.stalled_s[failure.kind] += time.monotonic() - started
                if isinstance(outcome, Blame):
                    # Not journalled: replaying it would destroy the rebuild too.
                    return destroyed_sandbox(call, outcome).result()
                done = outcome
            self._journal.append(done)
            return done.result()

    async def _rebuild(self) -> None:
        """A fresh sandbox with the journal replayed, after a call was blamed for breaking the
        last one. The agent broke it: a replay that diverges is its doing too, and the episode
        goes on, scored, on the imperfect rebuild."""
        try:
            await self._recover(None, None, Cause.AGENT)
        except InfraError as exc:
            self._source.metrics.masked[exc.kind] += 1
            raise

    async def _recover_from(self, call: Call, failure: InfraError, ran_s: float) -> Call | Blame:
        metrics = self._source.metrics
        verdict = attribute(failure, failure.evidence)
        log.info("%s failed with %s: %s (%s)", call.describe(), failure.kind, verdict.cause,
                 verdict.reason)
        if verdict.cause is Cause.AGENT:
            await self._drop()
            metrics.agent_caused[failure.kind] += 1
            return Blame(failure, 1, verdict.reason)
        try:
            outcome = await self._recover(call, failure, verdict.cause, ran_s)
        except InfraError:
            metrics.masked[failure.kind] += 1
            raise
        assert outcome is not None
        if isinstance(outcome, Blame):
            metrics.agent_caused[failure.kind] += 1
        else:
            metrics.recovered[failure.kind] += 1
        return outcome

    async def _recover(self, call: Call | None, failure: InfraError | None,
                       cause: Cause = Cause.INFRA, ran_s: float = 0.0) -> Call | Blame | None:
        """Rebuild on a fresh sandbox and run ``call`` there (only rebuild when it is None).

        ``cause`` is the verdict on ``failure``. After an ``INFRA`` failure the call broke
        nothing, and a rebuild that cannot be made faithful (a diverging replay, no sandbox in
        time) ends the episode masked. Otherwise (``AMBIGUOUS``, or a rebuild after the agent's
        own failure) nothing that happens here may mask it: a divergence, a replay that breaks
        the fresh sandbox or running out of attempts or time make the call's outcome the
        agent's (:class:`Blame`).

        Returns:
            The call with its new outcome, a :class:`Blame`, or None for a rebuild.

        Raises:
            InfraError: attempts or time ran out on an infra failure (``failure`` when it is
                known, with a note), or the replay diverged (:class:`ReplayDiverged`).
        """
        policy = self._source.policy
        scored = cause is not Cause.INFRA
        deadline = policy.deadline_for(sum(c.duration_s for c in self._journal) + ran_s)
        started = time.monotonic()
        breaks = 1 if scored and failure is not None else 0
        last = failure
        await self._drop()
        for attempt in range(policy.max_attempts):
            remaining = deadline - (time.monotonic() - started)
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    self._lease = await self._fresh()
                    try:
                        diverged = await self._replay(self._lease.sandbox)
                    except InfraError as exc:
                        if attribute(exc, exc.evidence).cause is Cause.INFRA:
                            raise
                        # The journal itself breaks fresh sandboxes (say, a call that crashes
                        # only when run later): the agent's doing.
                        await self._drop()
                        if call is not None:
                            return Blame(exc, breaks + 1, "replaying the earlier calls broke "
                                                          "a fresh sandbox")
                        log.warning("the journal breaks every rebuild (%s); the episode goes "
                                    "on in an empty sandbox", exc)
                        self._journal.clear()
                        raise
                    if call is None:
                        if diverged is not None and not scored:
                            raise diverged
                        return None
                    try:
                        done = await call.run(self._lease.sandbox)
                    except InfraError as exc:
                        again = attribute(exc, exc.evidence).cause
                        breaks += 0 if again is Cause.INFRA else 1
                        if again is Cause.AGENT or breaks >= policy.blame_after:
                            await self._drop()
                            return Blame(exc, breaks)
                        raise
                    if diverged is not None:
                        if not scored:
                            raise diverged
                        await self._drop()
                        return Blame(failure or diverged, breaks,
                                     "the earlier calls gave different outcomes when replayed")
                    return done
            except ReplayDiverged as exc:
                await self._drop()
                self.failure = exc
                raise
            except (InfraError, TimeoutError) as exc:
                await self._drop()
                last = exc if isinstance(exc, InfraError) else self._start_failure or last
                log.info("recovery attempt %d of %s failed: %s", attempt + 1,
                         call.describe() if call else "a rebuild", exc)
            left = deadline - (time.monotonic() - started)
            await asyncio.sleep(max(0.0, min(policy.backoff.delay(attempt), left)))
        error = last or InfraError("recovery found no working sandbox")
        if scored and call is not None:
            return Blame(error, max(breaks, 1), "no fresh sandbox could re-test it in time")
        error.add_note(f"gymbox recovery gave up after {policy.max_attempts} attempts or "
                       f"{deadline:g} s")
        self.failure = error
        raise error

    async def _fresh(self) -> _Lease:
        """A sandbox from the source. Failures to start one are retry-safe (nothing ran), so
        they are waited out, under the caller's deadline, using no attempt."""
        while True:
            try:
                lease = await take(self._source.source)
            except InfraError as exc:
                if not exc.retry_safe:
                    raise
                self._start_failure = exc
                await asyncio.sleep(START_RETRY_S)
                continue
            self._last_id, self._workdir = lease.sandbox.id, lease.sandbox.workdir
            return lease

    async def _replay(self, sandbox: SandboxAPI) -> ReplayDiverged | None:
        """Replay the journal into ``sandbox``; the first divergence found, if any."""
        diverged = None
        for recorded in self._journal:
            again = await recorded.run(sandbox)
            self._source.metrics.replays += 1
            if diverged is None and not recorded.same_outcome(again):
                diverged = ReplayDiverged(
                    f"replaying {recorded.describe()} gave a different outcome than the first "
                    "time (the call is not deterministic), so the sandbox's state cannot be "
                    "rebuilt")
        return diverged

    async def _drop(self) -> None:
        """Stop using the current sandbox. Its removal runs in the background: recovery does
        not wait for the engine to delete a broken container; :meth:`close` does."""
        lease, self._lease = self._lease, None
        if lease is not None:
            task = asyncio.create_task(_release(lease))
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)


async def _release(lease: _Lease) -> None:
    # A sandbox that cannot be removed now is the reaper's to collect (its lease runs out).
    with contextlib.suppress(InfraError):
        await lease.release()


class RecoveringSandboxes:
    """A sandbox source whose sandboxes recover from infrastructure failures.

    It is used as a :class:`~gymbox.runtime.pool.SandboxPool` is (``async with
    sandboxes.acquire() as sandbox``) and wraps one, or anything with such an ``acquire``.
    When a ``breaker`` is given, it is asked before each episode starts and told how each
    episode ended.

    Args:
        source: where fresh sandboxes come from (the first one and every replacement).
        policy: how hard recovery tries, and when the agent is blamed.
        breaker: the circuit breaker on the infrastructure-failure rate, or None.
        metrics: counters to add to (shared across sources if you like); a new one by default.

    Example:
        >>> async def main():  # doctest: +SKIP
        ...     async with SandboxPool(size=4) as pool:
        ...         sandboxes = RecoveringSandboxes(pool, breaker=InfraCircuitBreaker())
        ...         env = gymnasium.make("gymbox/PythonMath-v0", sandboxes=sandboxes)
        ...         async with sandboxes.acquire() as sandbox:  # or directly
        ...             print((await sandbox.exec("echo hi", timeout=5)).stdout)
    """

    def __init__(self, source: SandboxSource, policy: RecoveryPolicy | None = None, *,
                 breaker: InfraCircuitBreaker | None = None,
                 metrics: RecoveryMetrics | None = None) -> None:
        self.source = source
        self.policy = policy or RecoveryPolicy()
        self.breaker = breaker
        self.metrics = metrics or RecoveryMetrics()

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[RecoveringSandbox]:
        """A recovering sandbox for one episode, given back when the ``async with`` ends.

        Raises:
            InfraFailureRateExceeded: the breaker says the run must stop.
            InfraError: no first sandbox could be had.
        """
        if self.breaker is not None:
            await self.breaker.admit()
        sandbox = RecoveringSandbox(self)
        try:
            await sandbox.start()
        except InfraError as exc:
            self.metrics.start_failed[exc.kind] += 1
            self.episode_ended(exc)
            raise
        try:
            yield sandbox
        finally:
            await asyncio.shield(sandbox.close())

    def episode_ended(self, failure: InfraError | None) -> None:
        if self.breaker is not None:
            self.breaker.record(failure.kind if failure is not None else None)
