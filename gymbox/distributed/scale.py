"""What a run does with its ``[scale]`` section (:class:`~gymbox.distributed.engines.ScaleConfig`):
the one function ``gymbox train`` calls, and ``gymbox gc`` across engines.

With ``ray_address`` empty (the default) nothing here runs: sandboxes come from the in-process
pool on the local engine. With an address, :func:`scaled_sandboxes` joins that Ray cluster,
starts one :class:`~gymbox.distributed.worker.EngineWorker` actor per engine and gives the run
a :class:`~gymbox.runtime.recovery.RecoveringSandboxes` over them — the same source type the
in-process path uses, so envs, rollouts and the learner do not change.

Example (a run config)::

    [scale]
    ray_address = "127.0.0.1:6379"
    [[scale.engines]]
    name = "e1"
    resource = "gymbox_engine_e1"      # the node whose DOCKER_HOST is engine e1
    [[scale.engines]]
    name = "remote"
    docker_host = "tcp://10.0.0.7:2376"
    tls = { ca_cert = "/etc/gymbox/ca.pem", client_cert = "/etc/gymbox/cert.pem",
            client_key = "/etc/gymbox/key.pem" }
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import ray

from gymbox.distributed.engines import EngineConfig, ScaleConfig
from gymbox.distributed.source import EngineSet
from gymbox.distributed.worker import gymbox_containers, reap_engine
from gymbox.runtime.breaker import InfraCircuitBreaker
from gymbox.runtime.recovery import RecoveringSandboxes, RecoveryPolicy
from gymbox.runtime.spec import SandboxSpec


@contextlib.contextmanager
def joined(address: str):
    """Ray connected to ``address`` for the block (left alone if already connected)."""
    if ray.is_initialized():
        yield
        return
    ray.init(address=address, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


@contextlib.asynccontextmanager
async def scaled_sandboxes(scale: ScaleConfig, *, spec: SandboxSpec | None = None,
                           policy: RecoveryPolicy | None = None,
                           breaker: InfraCircuitBreaker | None = None,
                           ) -> AsyncIterator[RecoveringSandboxes]:
    """Sandboxes spread over ``scale``'s engines, recovering across them, for one run.

    Yields a :class:`RecoveringSandboxes` whose ``source`` is the :class:`EngineSet` (its
    ``metrics()`` gives per-engine counts for the metrics line).

    Raises:
        ConfigurationError: no engines, repeated names, bad TLS files.
        EngineUnavailable: no engine could be reached.
    """
    with joined(scale.ray_address):
        async with EngineSet(scale.resolve_engines(), spec, trip_after=scale.trip_after) as pool:
            yield RecoveringSandboxes(pool, policy, breaker=breaker)


def gc_engines(scale: ScaleConfig, *, everything: bool = False) -> dict[str, list[str]]:
    """``gymbox gc`` on every engine of ``scale``, each run on the node that reaches it:
    engine name → the containers removed (``"<id>: <reason>"``)."""
    with joined(scale.ray_address):
        engines = scale.resolve_engines()
        return dict(zip((e.name for e in engines),
                        ray.get([_on_node(reap_engine, e).remote(e, everything=everything)
                                 for e in engines]), strict=True))


def containers_on_engines(scale: ScaleConfig) -> dict[str, list[dict[str, str]]]:
    """Engine name → the labels of every gymbox container on it (for leak checks)."""
    with joined(scale.ray_address):
        engines = scale.resolve_engines()
        return dict(zip((e.name for e in engines),
                        ray.get([_on_node(gymbox_containers, e).remote(e) for e in engines]),
                        strict=True))


def _on_node(function, engine: EngineConfig):
    options = {"num_cpus": 0, "max_retries": 0}
    if engine.resource is not None:
        options["resources"] = {engine.resource: 0.001}
    return ray.remote(function).options(**options)
