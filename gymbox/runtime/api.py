"""The one sandbox contract: what an env and its tools receive, and where it comes from.

:class:`SandboxAPI` is the interface of every sandbox an env is handed, whether it is a plain
:class:`~gymbox.runtime.Sandbox` or a :class:`~gymbox.runtime.recovery.RecoveringSandbox` that
journals and recovers it: ``id``, ``workdir``, ``exec``, ``run_python`` and the file calls, with
the same arguments and outcomes. :class:`SandboxSource` is where an env gets one per episode (a
:class:`~gymbox.runtime.SandboxPool`, :class:`~gymbox.runtime.recovery.RecoveringSandboxes`, or
anything used the same way).

Example:
    >>> from gymbox.runtime import SandboxAPI, SandboxSource
    >>> async def tool(sandbox: SandboxAPI) -> str:  # doctest: +SKIP
    ...     return (await sandbox.exec("pwd", timeout=5)).stdout.strip() == sandbox.workdir
    >>> async def episode(source: SandboxSource) -> None:  # doctest: +SKIP
    ...     async with source.acquire() as sandbox:
    ...         await tool(sandbox)
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from gymbox.runtime.result import ExecResult
from gymbox.runtime.sandbox import DirEntry


@runtime_checkable
class SandboxAPI(Protocol):
    """A sandbox as an env's tools use it. Every method is that of
    :class:`~gymbox.runtime.Sandbox`, with its arguments, outcomes and errors
    (:class:`~gymbox.runtime.InvalidRequest` for bad arguments, the agent's ``OSError`` for its
    file errors, :class:`~gymbox.runtime.InfraError` for the platform's failures)."""

    @property
    def id(self) -> str:
        """A name for logs: the backend's id of the sandbox serving calls now."""
        ...

    @property
    def workdir(self) -> str:
        """The agent's working directory: where relative paths and commands start."""
        ...

    async def exec(self, cmd: str | Sequence[str], *, timeout: float | None = None,
                   cwd: str | None = None, env: Mapping[str, str] | None = None,
                   stdin: bytes | str | None = None) -> ExecResult: ...

    async def run_python(self, code: str, *, timeout: float | None = None) -> ExecResult: ...

    async def write_file(self, path: str, data: bytes | str, *, mode: int = 0o644) -> None: ...

    async def read_file(self, path: str) -> bytes: ...

    async def list_dir(self, path: str = ".") -> list[DirEntry]: ...


class SandboxSource(Protocol):
    """Where fresh sandboxes come from: ``async with source.acquire() as sandbox``, one per
    episode, given back when the block ends."""

    def acquire(self) -> contextlib.AbstractAsyncContextManager[SandboxAPI]: ...
