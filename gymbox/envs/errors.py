"""Errors of the environment layer: the env author's or the caller's mistakes, never the agent's.

The agent's mistakes (a malformed tool call, an unknown tool, bad arguments, failing code) are
not exceptions: the env answers them with an observation. The platform's failures are
:class:`~gymbox.runtime.errors.InfraError`. What is left is raised here.
"""

from __future__ import annotations

from gymbox.runtime.errors import GymboxError, InfraError


class ToolDefinitionError(GymboxError, TypeError):
    """A function cannot become a tool (an untyped or undocumented parameter, an odd type)."""


class EpisodeOver(GymboxError, RuntimeError):
    """``step`` was called when no episode is running: call ``reset()`` first."""


class InvalidOption(GymboxError, ValueError):
    """``reset(options=...)`` named an option the env does not take, or gave it a bad value."""


class ToolError(GymboxError):
    """Raised by a tool's own code to tell the agent what it did wrong.

    The message is shown to the agent as the tool's result; the episode goes on.

    Example:
        >>> from gymbox.envs import tool
        >>> @tool
        ... def divide(a: float, b: float) -> str:
        ...     '''Divide a by b.
        ...
        ...     Args:
        ...         a: the dividend
        ...         b: the divisor, not zero
        ...     '''
        ...     if b == 0:
        ...         raise ToolError("b must not be zero")
        ...     return str(a / b)
    """


class GraderFailed(InfraError):
    """The env's grader (its ``score``, its verifier) failed on an answer: a failure of the
    platform's judging, not the agent's outcome. The episode is masked (an invalid record with
    this error's ``kind``) unless the evidence says the answer itself broke the grader; see
    :meth:`gymbox.envs.ToolEnv.grade`."""


class GraderCrashed(GraderFailed):
    """The grader raised (kind ``grader_crashed``)."""


class GraderTimeout(GraderFailed):
    """The grader ran past the env's ``score_timeout_s`` (kind ``grader_timeout``)."""
