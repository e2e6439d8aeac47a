"""Who broke the sandbox: every sandbox failure classified by its cause, once, here.

When a call fails with an :class:`~gymbox.runtime.errors.InfraError`, the sandbox gathers what
the platform observed (:class:`Evidence`, attached to the error as ``error.evidence``):

* whether the engine answered at all, and whether it went away since the sandbox started (the
  host holds the engine's event stream open: it breaks when the engine stops, crashes or
  restarts, even if the engine is back by the time it is asked);
* the engine's record of the container (:class:`Record`: running, paused, OOM-killed, exit
  code, or removed);
* the engine's event stream for that container around the call (``kill``, ``stop``, ``pause``,
  an ``exec`` into it, ``die``, ``oom``);
* the supervisor's last report of resource pressure (:class:`Pressure`: memory, pids and tmpfs
  use against their limits), sent with every answer and every quarter second while a command
  runs;
* in tests, the fault injector's log for the sandbox.

:func:`attribute` decides, from that alone, one :class:`Cause`:

* ``INFRA`` — something the agent cannot do: nothing of the call ran, the engine did not answer
  or went away (restarted), the container was killed, stopped, paused or entered from outside,
  its lease ran out, or a fault was injected. Recovery rebuilds the sandbox, and masks the
  episode only when that fails.
* ``AGENT`` — the agent exhausted its own limits: the kernel OOM-killed in the container, or
  the supervisor's last report had memory, pids or a tmpfs near its limit. Scored, never masked.
* ``AMBIGUOUS`` — neither: the call may be re-tested by replaying the journal into a fresh
  sandbox, but nothing that happens in that re-test can make the failure masked.

The agent runs as an unprivileged uid with no capabilities, no network and no engine socket, so
it cannot produce any of the ``INFRA`` evidence: it cannot signal, pause or enter its container
from outside, write the lease, or make the engine stop answering.

Example:
    >>> from gymbox.runtime.errors import SandboxDied
    >>> died = SandboxDied("the sandbox exited")
    >>> attribute(died, Evidence(events=("kill:9", "die:137"))).cause
    <Cause.INFRA: 'infra'>
    >>> attribute(died, Evidence(events=("oom", "die:137"))).cause
    <Cause.AGENT: 'agent'>
    >>> attribute(died, Evidence()).cause
    <Cause.AMBIGUOUS: 'ambiguous'>
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gymbox.runtime.errors import InfraError

NEAR_LIMIT = 0.9
"""A resource at this fraction of its limit or more is the agent's pressure."""

PRESSURE_FRESH_S = 5.0
"""A pressure report older than this, when the call failed, says nothing about the failure."""

OUTSIDE_ACTIONS = frozenset({"kill", "stop", "pause", "unpause", "restart", "exec_create",
                             "exec_start", "update", "rename", "commit", "export"})
"""Engine events that only a client of the engine can cause (an operator, a fault injector,
the host crashing it), never a process inside the container."""

LEASE_EXPIRED_EXIT = 0
"""The exit status of the container's main process (the lease loop) when the host stopped
renewing its lease: the platform's doing, the agent cannot write the lease."""


class Cause(enum.StrEnum):
    """Who a failure is attributed to."""

    INFRA = "infra"
    AGENT = "agent"
    AMBIGUOUS = "ambiguous"


@dataclass(frozen=True, slots=True)
class Pressure:
    """The supervisor's report of how close the sandbox is to its limits (fractions, 0 to 1).

    Attributes:
        memory: memory in use over the memory limit (None where the cgroup cannot be read).
        pids: tasks over the pids limit (None where unknown).
        tmpfs: mount point → the larger of its bytes and inodes in use over their caps.
        age_s: how old the report was when the failure was seen.
    """

    memory: float | None = None
    pids: float | None = None
    tmpfs: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    age_s: float = 0.0

    @classmethod
    def from_wire(cls, report: Mapping[str, object], age_s: float) -> Pressure:
        """The report as the supervisor sends it (``{"memory": .., "pids": .., "tmpfs": {}}``);
        anything malformed reads as unknown."""
        def fraction(value: object) -> float | None:
            return float(value) if isinstance(value, int | float) else None

        mounts = report.get("tmpfs")
        tmpfs = {str(k): float(v) for k, v in mounts.items() if isinstance(v, int | float)} \
            if isinstance(mounts, Mapping) else {}
        return cls(fraction(report.get("memory")), fraction(report.get("pids")),
                   MappingProxyType(tmpfs), age_s)

    def near_limit(self) -> list[str]:
        """The resources at :data:`NEAR_LIMIT` or more, e.g. ``["memory 97%", "/tmp 100%"]``."""
        levels = {"memory": self.memory, "pids": self.pids, **self.tmpfs}
        return [f"{name} {value:.0%}" for name, value in levels.items()
                if value is not None and value >= NEAR_LIMIT]


@dataclass(frozen=True, slots=True)
class Record:
    """The engine's record of a container (``docker inspect``'s ``State``), or its absence.

    Attributes:
        removed: the engine no longer knows the container.
        status: ``running``, ``paused``, ``exited``, ``dead``...
        oom_killed: the engine saw the kernel OOM-kill a process of the container.
        exit_code: the main process's exit status, once it exited.
    """

    removed: bool = False
    status: str = ""
    oom_killed: bool = False
    exit_code: int | None = None
    paused: bool = False
    dead: bool = False
    finished_at: str = ""


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the platform observed about a sandbox when a call on it failed.

    Attributes:
        engine_answered: the engine answered the questions below (False: it did not).
        record: the engine's container record; None where there is no engine (local backend).
        events: the engine's events for the container around the call, as ``action`` or
            ``action:detail`` (``kill:9``, ``die:137``, ``oom``, ``pause``, ``exec_start``).
        pressure: the supervisor's last resource-pressure report, or None.
        injected: the fault injector's log for this sandbox (tests only).
        engine_lost_at: when the engine went away (its event stream, held open by the host,
            broke: the engine stopped, crashed or restarted) after the sandbox started, as
            ``time.time()``; None if it did not, or if that cannot be known.
    """

    engine_answered: bool = True
    engine_lost_at: float | None = None
    record: Record | None = None
    events: tuple[str, ...] = ()
    pressure: Pressure | None = None
    injected: tuple[str, ...] = ()

    def outside(self) -> list[str]:
        """The events that came from outside the container."""
        return [e for e in self.events if e.split(":", 1)[0] in OUTSIDE_ACTIONS]

    def oom(self) -> bool:
        """The kernel OOM-killed a process of the container (its memory cgroup was full)."""
        return "oom" in self.events or (self.record is not None and self.record.oom_killed)

    def main_exit(self) -> int | None:
        """The exit status the container's main process died with, if it died."""
        for event in reversed(self.events):
            action, _, detail = event.partition(":")
            if action == "die" and detail.lstrip("-").isdigit():
                return int(detail)
        return self.record.exit_code if self.record is not None and self.record.dead else None


@dataclass(frozen=True, slots=True)
class Attribution:
    """The verdict on one failure, and the evidence it rests on, in words (for logs)."""

    cause: Cause
    reason: str


def attribute(failure: InfraError, evidence: Evidence | None) -> Attribution:
    """Classify ``failure`` by its cause, from ``evidence`` (None: nothing could be gathered).

    The order matters: evidence the agent cannot produce (``INFRA``) is looked at first, so an
    outside kill of a sandbox that was also under the agent's memory pressure is infra.
    """
    if failure.retry_safe:
        return Attribution(Cause.INFRA, f"nothing of the call ran ({failure.kind})")
    if evidence is None:
        return Attribution(Cause.AMBIGUOUS, "no evidence could be gathered")
    if evidence.injected:
        return Attribution(Cause.INFRA, f"injected fault: {', '.join(evidence.injected)}")
    if evidence.engine_lost_at is not None:
        when = time.strftime("%H:%M:%S", time.localtime(evidence.engine_lost_at))
        state = "and has not come back" if not evidence.engine_answered else "and came back"
        return Attribution(Cause.INFRA, f"the engine went away at {when} (its event stream "
                                        f"broke: stopped, crashed or restarted) {state}")
    if not evidence.engine_answered:
        return Attribution(Cause.INFRA, "the engine did not answer")
    outside = evidence.outside()
    if outside:
        return Attribution(Cause.INFRA, f"acted on from outside: {', '.join(outside)}")
    if evidence.record is not None and evidence.record.paused:
        return Attribution(Cause.INFRA, "the engine reports the container paused")
    if evidence.oom():
        return Attribution(Cause.AGENT, "the kernel OOM-killed in the container: the agent "
                                        "exhausted its memory limit")
    pressure = evidence.pressure
    if pressure is not None and pressure.age_s <= PRESSURE_FRESH_S and pressure.near_limit():
        return Attribution(Cause.AGENT, "the agent's processes were at their limits: "
                                        + ", ".join(pressure.near_limit()))
    if evidence.main_exit() == LEASE_EXPIRED_EXIT:
        return Attribution(Cause.INFRA, "the container's lease ran out (the host stopped "
                                        "renewing it)")
    return Attribution(Cause.AMBIGUOUS, "no evidence either way")
