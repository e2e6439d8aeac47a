"""Failures, each classified once, here, by what is safe to do next.

Three families, never mixed:

* :class:`InvalidRequest` — the caller asked for something that cannot be run (an empty
  command, a negative timeout, a NUL byte). Nothing was executed; fix the call.
* :class:`InfraError` — the platform failed (the engine, the container, the supervisor). It is
  never the agent's fault and never becomes a reward. ``retry_safe`` says whether the same call
  may simply be repeated: only when it is certain the command did not run.
* :class:`ConfigurationError` — the machine is not set up (no engine, no image); the message says
  what to run.

The agent's own outcomes (non-zero exit, timeout, OOM) are not errors at all: they are values in
:class:`~gymbox.runtime.result.ExecResult`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gymbox.runtime.attribution import Evidence


class GymboxError(Exception):
    """Base of every error gymbox raises on purpose."""


class InvalidRequest(GymboxError, ValueError):
    """The request is malformed; nothing ran. Neither an agent outcome nor an infra failure."""


class ConfigurationError(GymboxError):
    """The machine is not set up for what was asked; the message names the command that fixes it."""


class ImageMissing(ConfigurationError):
    """The sandbox image is not on the engine."""


class InfraError(GymboxError):
    """The platform failed. Subclasses say how; ``cause`` keeps the underlying exception.

    Attributes:
        retry_safe: True when the failed operation certainly did not execute the agent's
            command, so running it again cannot run it twice.
        evidence: what the platform observed when a sandbox call failed
            (:class:`~gymbox.runtime.attribution.Evidence`), for
            :func:`~gymbox.runtime.attribution.attribute`; None when none was gathered.
    """

    retry_safe: bool = False

    def __init__(self, message: str, *, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause
        self.evidence: Evidence | None = None
        if cause is not None:
            self.__cause__ = cause

    @property
    def kind(self) -> str:
        """A stable name for metrics: ``sandbox_died``, ``engine_unavailable``, ..."""
        name = type(self).__name__
        return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


class EngineUnavailable(InfraError):
    """The container engine cannot be reached (socket gone, daemon down, 5xx)."""

    retry_safe = True


class SandboxStartError(InfraError):
    """A container could not be created, started or made healthy. No command of the agent ran."""

    retry_safe = True


class SandboxDied(InfraError):
    """The container or its supervisor went away while serving a request."""


class SandboxUnresponsive(InfraError):
    """The supervisor did not answer within the host-side backstop deadline."""


class AmbiguousExecution(InfraError):
    """A request may or may not have executed, and its result cannot be recovered by id."""


class SupervisorFault(InfraError):
    """The supervisor answered with something it should not have: a garbled frame or an
    internal error. Whether the command ran is unknown, so it is not retry-safe."""
