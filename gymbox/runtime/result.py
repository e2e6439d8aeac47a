"""What a command did: the agent's outcome as a value.

Everything an agent's code can do to itself — exit non-zero, die on a signal, run past its
deadline, exhaust its memory, print gigabytes — is recorded here and returned. Only a failure of
the platform raises (see :mod:`gymbox.runtime.errors`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ExecResult:
    """The outcome of one command or one ``run_python`` cell.

    Attributes:
        exit_code: the process's exit status, or ``None`` when a signal ended it. Both
            ``exit_code`` and ``signal`` are ``None`` when the status was lost: the agent's own
            processes killed or stopped gymbox's spawner (the agent-uid process that started
            the command) before it reported it; stderr then ends with a ``[gymbox]`` line
            saying so.
        signal: the number of the signal that ended it, or ``None``.
        stdout: decoded standard output (UTF-8, invalid bytes replaced). When the output was
            longer than the cap, its head and its tail are kept with a marker between them.
        stderr: the same for standard error.
        stdout_bytes: how many bytes the command really wrote to stdout, capped or not.
        stderr_bytes: the same for stderr.
        truncated: whether either stream was cut to fit the cap.
        timed_out: the command ran past its deadline and was killed (TERM, grace, KILL).
        oom_killed: the kernel's OOM killer ended the command's process.
        duration_s: wall time from start to exit, in seconds.
        interpreter_reset: ``run_python`` only: the persistent interpreter was lost (this cell
            timed out or crashed it, or an earlier command killed it) and a fresh one serves
            the next cell; names defined before are gone.

    Example:
        >>> r = ExecResult(exit_code=0, signal=None, stdout="2\\n", stderr="", stdout_bytes=2,
        ...                stderr_bytes=0, truncated=False, timed_out=False, oom_killed=False,
        ...                duration_s=0.001)
        >>> r.ok
        True
    """

    exit_code: int | None
    signal: int | None
    stdout: str
    stderr: str
    stdout_bytes: int
    stderr_bytes: int
    truncated: bool
    timed_out: bool
    oom_killed: bool
    duration_s: float
    interpreter_reset: bool = False

    @property
    def ok(self) -> bool:
        """True when the command exited 0 within its deadline."""
        return self.exit_code == 0 and not self.timed_out
