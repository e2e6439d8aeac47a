"""The backend boundary: what a place that runs sandboxes must provide.

A :class:`Backend` launches an :class:`Instance` (a container, or a host process) with the
supervisor already started in it, and hands back the :class:`Link`, the byte stream to and from
that supervisor. Everything above this line (framing, request ids, deadlines, the lease, error
mapping) is backend-independent and lives in :mod:`gymbox.runtime.sandbox`.

A fault injector wraps a backend: it can delay ``launch``, kill or pause the instance, break or
garble the link, and the sandbox above reacts exactly as it would to the real fault.
"""

from __future__ import annotations

import enum
from typing import Protocol, runtime_checkable

from gymbox.runtime.attribution import Evidence
from gymbox.runtime.spec import SandboxSpec


class InstanceState(enum.Enum):
    """What the backend says about an instance right now."""

    RUNNING = "running"
    PAUSED = "paused"
    EXITED = "exited"
    GONE = "gone"


@runtime_checkable
class Link(Protocol):
    """The supervisor's byte stream: what it writes on stdout, and its stdin."""

    async def read(self) -> bytes:
        """The next bytes of the supervisor's stdout; ``b""`` once the stream has ended."""
        ...

    def write(self, data: bytes) -> None:
        """Queue ``data`` for the supervisor's stdin (raises ``ConnectionError`` when closed)."""
        ...

    def close(self) -> None:
        """Close the stream; the supervisor sees EOF on stdin and shuts down."""
        ...


@runtime_checkable
class Instance(Protocol):
    """One running sandbox as its backend sees it."""

    id: str
    workdir: str
    link: Link

    async def state(self) -> InstanceState:
        """Ask the backend whether the instance still runs, or is frozen (``PAUSED``: only a
        backend that can pause instances says so). May raise ``EngineUnavailable``."""
        ...

    async def destroy(self) -> None:
        """Stop and remove the instance; idempotent, and never leaves it half-removed."""
        ...

    async def postmortem(self, since: float) -> Evidence:
        """What the backend observed of the instance from ``since`` (``time.time()``) to now,
        asked when a call on it failed: the evidence for
        :func:`~gymbox.runtime.attribution.attribute`. An engine that does not answer is
        reported as such, not raised."""
        ...


@runtime_checkable
class Backend(Protocol):
    """A place that runs sandboxes."""

    name: str

    async def launch(self, spec: SandboxSpec) -> Instance:
        """Start an instance for ``spec`` with the supervisor attached.

        Raises:
            SandboxStartError: it could not be started; nothing is left behind.
            EngineUnavailable: the engine did not answer.
            ImageMissing: ``spec.image`` is not on the engine.
        """
        ...
