"""Where a run's envs come from: the env factory, and the sandboxes sandbox envs share.

A sandbox env gets its sandboxes from one warm :class:`~gymbox.runtime.pool.SandboxPool` behind
:class:`~gymbox.runtime.recovery.RecoveringSandboxes` (journal replay on infra failures, agent
attribution) and an :class:`~gymbox.runtime.breaker.InfraCircuitBreaker`, so a flaky engine
slows the run down or stops it instead of biasing it. With ``faults.rate > 0`` the pool's
backend is a :class:`~gymbox.runtime.faults.FaultInjector`: the run meets real faults, and the
metrics count them by kind next to what recovery made of them.

Example:
    >>> import asyncio
    >>> from gymbox.agents.run_config import TrainConfig
    >>> async def main():
    ...     async with env_supply(TrainConfig(), episodes_at_once=2) as supply:
    ...         env = supply.make()
    ...         await env.aclose()
    ...         return type(env).__name__, supply.metrics()
    >>> asyncio.run(main())
    ('Calculator', {})
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import gymnasium

import gymbox.envs  # noqa: F401 - registers the built-in env ids
from gymbox.agents.run_config import FaultsConfig, SandboxSupplyConfig, TrainConfig
from gymbox.envs.core import ToolEnv
from gymbox.envs.registry import require_registered
from gymbox.runtime.backends import select_backend
from gymbox.runtime.breaker import InfraCircuitBreaker
from gymbox.runtime.errors import ConfigurationError
from gymbox.runtime.faults import REQUEST_KINDS, FaultInjector, FaultKind, FaultPlan
from gymbox.runtime.pool import SandboxPool
from gymbox.runtime.recovery import RecoveringSandboxes


def make_env_factory(config: TrainConfig) -> Callable[..., ToolEnv]:
    """A factory of the configured env, unwrapped to its :class:`ToolEnv`; keyword arguments
    go to the env's constructor on top of ``config.env_kwargs``.

    Raises:
        ConfigurationError: the env id is unknown, or the env is not a gymbox ToolEnv.
    """
    require_registered(config.env)

    def make(**extra: Any) -> ToolEnv:
        env = gymnasium.make(config.env, **{**config.env_kwargs, **extra}).unwrapped
        if not isinstance(env, ToolEnv):
            raise ConfigurationError(f"{config.env} is not a gymbox ToolEnv")
        return env

    return make


@dataclass
class EnvSupply:
    """A run's envs: ``make()`` builds one; sandbox envs share ``sandboxes``.

    Attributes:
        make: builds one env (sharing the run's sandboxes, if it needs any).
        sandboxes: the recovering sandbox source, None for host-only envs.
        faults: the fault injector, None unless faults are configured.
    """

    make: Callable[[], ToolEnv]
    sandboxes: RecoveringSandboxes | None = None
    faults: FaultInjector | None = None

    def metrics(self) -> dict[str, float]:
        """Cumulative ``recovery/*`` and ``faults/injected/*`` counts for the metrics line."""
        row: dict[str, float] = {}
        if self.sandboxes is not None:
            row.update(self.sandboxes.metrics.as_dict())
        if self.faults is not None:
            row.update(self.faults.log.as_dict())
        return row


def fault_plan(config: FaultsConfig) -> FaultPlan:
    """The :class:`FaultPlan` of ``faults.*``: ``rate`` split evenly over ``kinds``."""
    kinds = frozenset(FaultKind(k) for k in config.kinds) or REQUEST_KINDS
    return FaultPlan.uniform(config.rate, seed=config.seed, kinds=kinds)


@contextlib.asynccontextmanager
async def env_supply(config: TrainConfig, *, episodes_at_once: int) -> AsyncIterator[EnvSupply]:
    """The configured env, with a shared recovering sandbox pool when it needs sandboxes.

    Raises:
        ConfigurationError: faults are configured for an env that runs no sandbox.
    """
    make = make_env_factory(config)
    probe = make()
    needs_sandbox = probe.needs_sandbox
    await probe.aclose()
    if not needs_sandbox:
        if config.faults.rate > 0:
            raise ConfigurationError(
                f"faults.rate = {config.faults.rate} but {config.env} runs no sandbox: faults "
                "strike sandbox requests; use a sandbox env or set faults.rate = 0")
        yield EnvSupply(make)
        return
    supply = config.sandboxes
    if config.scale.enabled:
        if config.faults.rate > 0:
            raise ConfigurationError(
                "faults.rate with scale.ray_address: faults are injected into the local engine's "
                "backend; fault-test the run in-process first, then scale out with faults.rate = 0")
        from gymbox.distributed import scaled_sandboxes  # the [ray] extra, only when scaling out

        async with scaled_sandboxes(config.scale, spec=supply.spec, policy=supply.recovery,
                                    breaker=_breaker(supply)) as sandboxes:
            yield EnvSupply(lambda: make(sandboxes=sandboxes), sandboxes)
        return
    backend = select_backend(supply.backend)
    injector = None
    if config.faults.rate > 0:
        injector = FaultInjector(backend, fault_plan(config.faults))
        backend = injector
    async with SandboxPool(supply.spec, size=pool_size(supply, episodes_at_once),
                           backend=backend) as pool:
        sandboxes = RecoveringSandboxes(pool, supply.recovery, breaker=_breaker(supply))
        yield EnvSupply(lambda: make(sandboxes=sandboxes), sandboxes, injector)


def pool_size(supply: SandboxSupplyConfig, episodes_at_once: int) -> int:
    """``pool_size``, or the episodes in flight (at most 16) when it is 0."""
    return supply.pool_size or max(1, min(episodes_at_once, 16))


def _breaker(supply: SandboxSupplyConfig) -> InfraCircuitBreaker:
    b = supply.breaker
    try:
        return InfraCircuitBreaker(window=b.window, min_episodes=b.min_episodes,
                                   slow_down_rate=b.slow_down_rate, stop_rate=b.stop_rate)
    except ValueError as exc:
        raise ConfigurationError(f"sandboxes.breaker: {exc}") from None
