"""Where sandboxes run when a run scales out: a list of Docker engines, each named once, and
the ``[scale]`` section of a run config that lists them (:class:`ScaleConfig`; no Ray needed
to read it).

An :class:`EngineConfig` says how to reach one engine — a ``DOCKER_HOST`` address with its TLS
files, or "whatever the node's own ``DOCKER_HOST`` is" — and, optionally, which Ray node must
talk to it (a custom resource that only that node advertises). Engines are listed in the run
config, or discovered from the nodes of the Ray cluster (:func:`discover_engines`).

Example:
    >>> engine = EngineConfig("e1", docker_host="tcp://10.0.0.5:2376",
    ...                       tls=TLSFiles(ca_cert="ca.pem", client_cert="cert.pem",
    ...                                    client_key="key.pem"))
    >>> engine.describe()
    'e1 (tcp://10.0.0.5:2376, TLS)'
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import docker.tls
import requests.exceptions

from gymbox.runtime.engine import DEFAULT_SOCKET, START_HINT
from gymbox.runtime.errors import ConfigurationError, EngineUnavailable

ENGINE_RESOURCE_PREFIX = "gymbox_engine_"
"""A Ray node that advertises a custom resource named ``gymbox_engine_<name>`` hosts engine
``<name>`` (reached through that node's own ``DOCKER_HOST``): :func:`discover_engines`."""

TLS_API_VERSION = "1.41"
"""The Docker API version spoken to a TLS engine with its own CA (Docker 20.10 and later)."""


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """The TLS files of a remote engine (as ``docker --tlsverify --tlscacert ...`` takes them).

    Attributes:
        ca_cert: the CA that signed the engine's certificate; None trusts the system's CAs.
        client_cert, client_key: this client's certificate and key (both or neither).
        verify: check the engine's certificate (never turn off outside a test lab).
    """

    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    verify: bool = True

    def __post_init__(self) -> None:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("TLSFiles needs client_cert and client_key together, or neither")

    def docker_tls(self) -> docker.tls.TLSConfig:
        """The SDK's TLS configuration; a missing file is a :class:`ConfigurationError`."""
        for path in (self.ca_cert, self.client_cert, self.client_key):
            if path is not None and not os.path.isfile(path):
                raise ConfigurationError(f"TLS file {path} does not exist on this node")
        cert = (self.client_cert, self.client_key) if self.client_cert else None
        return docker.tls.TLSConfig(client_cert=cert, ca_cert=self.ca_cert, verify=self.verify)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """One Docker engine that rollout sandboxes may run on.

    Attributes:
        name: unique within a run; names the engine in metrics and logs.
        docker_host: its address (``unix:///...``, ``tcp://host:2376``, ``ssh://...``); None
            means the ``DOCKER_HOST`` of the node the engine worker lands on (or the default
            socket there).
        tls: TLS files for a ``tcp://`` engine, read on the node that talks to it.
        resource: a Ray custom resource that pins this engine's worker to one node (the node
            that can reach ``docker_host``, or whose own engine this is); None lets Ray choose.
        pool_size: sandboxes this engine keeps started ahead of demand.
        max_concurrent_starts: starts under way at once on this engine.

    Example:
        >>> EngineConfig("local").describe()
        'local (the node’s DOCKER_HOST)'
    """

    name: str
    docker_host: str | None = None
    tls: TLSFiles | None = None
    resource: str | None = None
    pool_size: int = 4
    max_concurrent_starts: int = 4

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"engine name must be letters, digits, - or _, got {self.name!r}")
        if self.pool_size < 1 or self.max_concurrent_starts < 1:
            raise ValueError("pool_size and max_concurrent_starts must be >= 1")
        if self.tls is not None and self.docker_host is not None and not (
                self.docker_host.startswith("tcp://") or self.docker_host.startswith("https://")):
            raise ValueError(f"TLS applies to tcp:// engines, not {self.docker_host}")

    def address(self) -> str:
        """The address this engine is reached at, from the node that asks."""
        return self.docker_host or os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET

    def describe(self) -> str:
        where = self.docker_host or "the node’s DOCKER_HOST"
        return f"{self.name} ({where}{', TLS' if self.tls else ''})"

    def connect(self, *, timeout: float = 60.0) -> docker.DockerClient:
        """A client to this engine that has answered a ping.

        Raises:
            EngineUnavailable: nothing answers (the message names the engine).
            ConfigurationError: a TLS file is missing, or the TLS handshake failed (a wrong
                CA or client certificate will not heal by retrying).
        """
        address = self.address()
        tls = self.tls.docker_tls() if self.tls is not None else False
        try:
            if self.tls is not None and self.tls.ca_cert is not None:
                # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace a session's CA
                # (psf/requests#3829), which would trust the system CAs instead of the
                # engine's: the client ignores the environment, so its API version is fixed
                # (the SDK would ask for it before that could be set): Docker 20.10's.
                client = docker.DockerClient(base_url=address, tls=tls, timeout=timeout,
                                             version=TLS_API_VERSION)
                client.api.trust_env = False
            else:
                client = docker.DockerClient(base_url=address, tls=tls, timeout=timeout)
            client.ping()
        except requests.exceptions.SSLError as exc:
            raise ConfigurationError(
                f"engine {self.name} at {address} refused the TLS handshake, or its certificate "
                f"did not verify: check tls.ca_cert, tls.client_cert and tls.client_key "
                f"({_reason(exc)})") from exc
        except docker.errors.DockerException as exc:
            if isinstance(exc.__cause__, requests.exceptions.SSLError):
                raise ConfigurationError(
                    f"engine {self.name} at {address} refused the TLS handshake, or its "
                    f"certificate did not verify: check tls.ca_cert, tls.client_cert and "
                    f"tls.client_key ({_reason(exc.__cause__)})") from exc
            raise EngineUnavailable(f"engine {self.name}: no Docker engine answers at "
                                    f"{address}: {START_HINT}", cause=exc) from exc
        except (requests.exceptions.RequestException, OSError) as exc:
            raise EngineUnavailable(f"engine {self.name}: no Docker engine answers at "
                                    f"{address}: {START_HINT}", cause=exc) from exc
        return client


def check_engines(engines: Sequence[EngineConfig]) -> None:
    """Raise :class:`ConfigurationError` unless there is at least one engine and names are
    unique."""
    if not engines:
        raise ConfigurationError("scale-out needs at least one engine (scale.engines, or Ray "
                                 f"nodes advertising a {ENGINE_RESOURCE_PREFIX}<name> resource)")
    names = [e.name for e in engines]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigurationError(f"engine names must be unique; repeated: {duplicates}")


def discover_engines(nodes: Sequence[Mapping[str, Any]], *, pool_size: int = 4
                     ) -> list[EngineConfig]:
    """One engine per ``gymbox_engine_<name>`` resource on the alive nodes (``ray.nodes()``),
    each reached through that node's own ``DOCKER_HOST``.

    Example:
        >>> nodes = [{"Alive": True, "Resources": {"CPU": 1.0, "gymbox_engine_a": 1.0}}]
        >>> [(e.name, e.resource) for e in discover_engines(nodes)]
        [('a', 'gymbox_engine_a')]
    """
    found = []
    for node in nodes:
        if not node.get("Alive"):
            continue
        for resource in sorted(node.get("Resources", {})):
            if resource.startswith(ENGINE_RESOURCE_PREFIX):
                found.append(EngineConfig(resource.removeprefix(ENGINE_RESOURCE_PREFIX),
                                          resource=resource, pool_size=pool_size))
    return found


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return text[text.rfind("SSL:"):][:120] if "SSL:" in text else text[:120]


@dataclass(frozen=True)
class ScaleConfig:
    """Scale-out of a run's sandboxes over Docker engines, on Ray.

    Attributes:
        ray_address: the Ray cluster to join (``"auto"``, ``"host:port"``); empty: no
            scale-out, sandboxes run on the local engine in-process.
        engines: the engines to use; empty: one per Ray node that advertises a
            ``gymbox_engine_<name>`` resource (:func:`discover_engines`).
        pool_size: warm sandboxes per discovered engine.
        trip_after: consecutive infra failures on one engine that drain it for a while.
    """

    ray_address: str = ""
    engines: tuple[EngineConfig, ...] = ()
    pool_size: int = 4
    trip_after: int = 2

    @property
    def enabled(self) -> bool:
        return bool(self.ray_address)

    def resolve_engines(self) -> tuple[EngineConfig, ...]:
        """The configured engines, or those the connected cluster's nodes advertise."""
        import ray  # the [ray] extra: only a run that scales out needs it

        engines = self.engines or tuple(discover_engines(ray.nodes(), pool_size=self.pool_size))
        check_engines(engines)
        return engines
