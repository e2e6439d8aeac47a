"""Choosing a backend: Docker when an engine answers, else the local fallback, loudly."""

from __future__ import annotations

import logging
from typing import Literal

from gymbox.runtime import engine
from gymbox.runtime.backend import Backend
from gymbox.runtime.docker_backend import DockerBackend
from gymbox.runtime.errors import InvalidRequest
from gymbox.runtime.local_backend import LocalBackend

log = logging.getLogger(__name__)

BackendName = Literal["docker", "local"]


def select_backend(name: BackendName | None = None) -> Backend:
    """The backend called ``name``, or, when None, Docker if an engine answers, else Local.

    Choosing Local because no engine answered logs why, next to Local's own warning that it is
    not a security boundary.

    Raises:
        InvalidRequest: ``name`` is not ``"docker"``, ``"local"`` or None.

    Example:
        >>> select_backend("local").name
        'local'
    """
    if name == "docker":
        return DockerBackend()
    if name == "local":
        return LocalBackend()
    if name is not None:
        raise InvalidRequest(f"unknown backend {name!r}; choose 'docker', 'local' or None")
    probe = engine.probe()
    if probe.reachable:
        return DockerBackend()
    log.warning("no Docker engine at %s (%s): falling back to LocalBackend", probe.address,
                probe.error)
    return LocalBackend()
