"""Finding the container engine, and saying what to do when there is none.

gymbox talks to whatever engine the docker SDK would: ``DOCKER_HOST`` when set, else the default
socket. :func:`connect` is the one place that opens a client; :func:`probe` answers "is there an
engine, and which one?" without raising, for ``gymbox doctor`` and for backend selection.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import docker
import docker.errors
import requests.exceptions

from gymbox.runtime.errors import EngineUnavailable

DEFAULT_SOCKET = "unix:///var/run/docker.sock"
START_HINT = (
    "start one with `sudo scripts/docker-up.sh` (Debian), start Docker Desktop, "
    "or point DOCKER_HOST at a running engine"
)


def engine_address() -> str:
    """Where the SDK will look for the engine: ``DOCKER_HOST`` or the default socket."""
    return os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET


def connect(*, timeout: float = 60.0) -> docker.DockerClient:
    """Open a client to the engine and check that it answers.

    Raises:
        EngineUnavailable: nothing answers at :func:`engine_address`; the message says how to
            start an engine.
    """
    address = engine_address()
    try:
        client = docker.DockerClient(base_url=address, timeout=timeout)
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        raise EngineUnavailable(
            f"no Docker engine answers at {address}: {START_HINT}", cause=exc
        ) from exc
    return client


@dataclass(frozen=True, slots=True)
class EngineProbe:
    """What :func:`probe` found."""

    address: str
    reachable: bool
    server_version: str | None = None
    error: str | None = None


def probe(*, timeout: float = 5.0) -> EngineProbe:
    """Look for an engine without raising."""
    address = engine_address()
    try:
        client = connect(timeout=timeout)
    except EngineUnavailable as exc:
        return EngineProbe(address=address, reachable=False, error=_short(exc.cause or exc))
    try:
        version = client.version().get("Version")
    finally:
        client.close()
    return EngineProbe(address=address, reachable=True, server_version=version)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
