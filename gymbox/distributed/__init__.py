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

from gymbox.distributed.engines import EngineConfig, TLSFiles, discover_engines
from gymbox.distributed.scale import (
    ScaleConfig,
    containers_on_engines,
    gc_engines,
    scaled_sandboxes,
)
from gymbox.distributed.source import EngineBreaker, EngineSet, NoEngineAvailable, RemoteSandbox
from gymbox.distributed.worker import EngineWorker

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
