"""gymbox.runtime: sandboxes that run an agent's tool calls.

The agent's outcomes are values (:class:`ExecResult`); the platform's failures are exceptions
(:class:`InfraError` and its subclasses); malformed calls are :class:`InvalidRequest`.

Example:
    >>> import asyncio
    >>> from gymbox.runtime import Sandbox
    >>> async def main():
    ...     async with await Sandbox.open() as sandbox:
    ...         return (await sandbox.run_python("6 * 7")).stdout
    >>> asyncio.run(main())  # doctest: +SKIP
    '42\\n'
"""

from gymbox.runtime.api import SandboxAPI, SandboxSource
from gymbox.runtime.backend import Backend, Instance, InstanceState, Link
from gymbox.runtime.backends import select_backend
from gymbox.runtime.cleanup import Reaped, reap
from gymbox.runtime.docker_backend import DockerBackend
from gymbox.runtime.engine import connect, probe
from gymbox.runtime.errors import (
    AmbiguousExecution,
    ConfigurationError,
    EngineUnavailable,
    GymboxError,
    ImageMissing,
    InfraError,
    InvalidRequest,
    SandboxDied,
    SandboxStartError,
    SandboxUnresponsive,
    SupervisorFault,
)
from gymbox.runtime.local_backend import LocalBackend
from gymbox.runtime.pool import SandboxPool
from gymbox.runtime.result import ExecResult
from gymbox.runtime.sandbox import DirEntry, Sandbox, SyncSandbox
from gymbox.runtime.spec import SandboxSpec

__all__ = [
    "AmbiguousExecution",
    "Backend",
    "ConfigurationError",
    "DirEntry",
    "DockerBackend",
    "EngineUnavailable",
    "ExecResult",
    "GymboxError",
    "ImageMissing",
    "InfraError",
    "Instance",
    "InstanceState",
    "InvalidRequest",
    "Link",
    "LocalBackend",
    "Reaped",
    "Sandbox",
    "SandboxAPI",
    "SandboxDied",
    "SandboxPool",
    "SandboxSource",
    "SandboxSpec",
    "SandboxStartError",
    "SandboxUnresponsive",
    "SupervisorFault",
    "SyncSandbox",
    "connect",
    "probe",
    "reap",
    "select_backend",
]
