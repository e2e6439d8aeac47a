"""Choosing a backend: Docker, unless the user asks for the local backend by name.

The local backend runs the agent's code as host processes (in bubblewrap where installed): it
is no security boundary, so gymbox never falls back to it. An engine that was configured
(``DOCKER_HOST``) or is expected at the default socket and does not answer is
:class:`~gymbox.runtime.errors.EngineUnavailable`, with the fix.
"""

from __future__ import annotations

import os
from typing import Literal

from gymbox.runtime import engine
from gymbox.runtime.backend import Backend
from gymbox.runtime.docker_backend import DockerBackend
from gymbox.runtime.errors import EngineUnavailable, InvalidRequest
from gymbox.runtime.local_backend import LocalBackend

BackendName = Literal["docker", "local"]
BACKEND_ENV = "GYMBOX_BACKEND"
"""The environment variable that names the backend when the code does not (``docker`` or
``local``), e.g. ``GYMBOX_BACKEND=local`` on a machine without an engine."""


def select_backend(name: BackendName | None = None) -> Backend:
    """The backend called ``name`` (or by ``$GYMBOX_BACKEND``); Docker when neither names one.

    Raises:
        InvalidRequest: the name is not ``"docker"`` or ``"local"``.
        EngineUnavailable: Docker was to be used and no engine answers; the message says how to
            start one, and how to ask for the local backend instead.

    Example:
        >>> select_backend("local").name
        'local'
    """
    chosen = name or os.environ.get(BACKEND_ENV) or None
    if chosen == "local":
        return LocalBackend()
    if chosen not in (None, "docker"):
        where = "" if name else f" (from ${BACKEND_ENV})"
        raise InvalidRequest(f"unknown backend {chosen!r}{where}; choose 'docker' or 'local'")
    found = engine.probe()
    if not found.reachable:
        raise EngineUnavailable(
            f"no Docker engine answers at {found.address} ({found.error}): "
            f"{engine.START_HINT}. gymbox does not fall back to running the agent's code on "
            f"the host; to do that anyway (no isolation), ask for it by name: "
            f"{BACKEND_ENV}=local or backend='local'")
    return DockerBackend()
