"""gymbox.distributed: rollout sandboxes scaled out over Docker engines, on Ray.

The learner, the policy and the envs stay on the driver; each Docker engine is served by one
Ray actor (:class:`EngineWorker`) that owns that engine's :class:`~gymbox.runtime.SandboxPool`.
:class:`EngineSet` spreads episodes over the engines and drains a failing one with its own
breaker, while :class:`~gymbox.runtime.recovery.RecoveringSandboxes` replays an interrupted
episode's journal on another engine. ``[scale]`` in a run config (:class:`ScaleConfig`) turns
it on; see docs/scaling.md.

This layer sits above ``agents``, ``envs`` and ``runtime``; nothing below imports it, and it
needs ``pip install 'ray==2.60.0'`` (the ``[ray]`` extra).

Example:
    >>> ScaleConfig().enabled
    False
"""

from gymbox.distributed.engines import EngineConfig, ScaleConfig, TLSFiles, discover_engines
from gymbox.runtime.errors import ConfigurationError

# Everything that needs Ray loads on first use, so a run config (ScaleConfig) reads without
# the [ray] extra installed.
_LAZY = {
    "EngineBreaker": "source", "EngineSet": "source", "NoEngineAvailable": "source",
    "RemoteSandbox": "source", "EngineWorker": "worker", "containers_on_engines": "scale",
    "gc_engines": "scale", "scaled_sandboxes": "scale",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        try:
            module = importlib.import_module(f"gymbox.distributed.{_LAZY[name]}")
        except ModuleNotFoundError as exc:
            if exc.name != "ray":
                raise
            raise ConfigurationError(
                f"gymbox.distributed.{name} needs Ray: pip install 'ray==2.60.0' (the [ray] "
                "extra)") from exc
        return getattr(module, name)
    raise AttributeError(f"module 'gymbox.distributed' has no attribute {name!r}")


__all__ = [
    "EngineBreaker",
    "EngineConfig",
    "EngineSet",
    "EngineWorker",
    "NoEngineAvailable",
    "RemoteSandbox",
    "ScaleConfig",
    "TLSFiles",
    "containers_on_engines",
    "discover_engines",
    "gc_engines",
    "scaled_sandboxes",
]
