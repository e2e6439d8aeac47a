"""The reward of one trajectory, with what made it and whether it may be used at all."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class RewardComponent:
    """One term of a reward: its raw value and the weight it entered the sum with."""

    value: float
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class RewardRecord:
    """A trajectory's reward.

    ``valid=False`` marks a trajectory that the infrastructure broke (status ``infra_failed``):
    its ``value`` means nothing, and every group statistic, baseline and loss term must skip it.
    ``components`` names each term (``"gold"``, ``"majority_vote"``, ``"self_certainty"``, ...)
    so a user can see why a trajectory scored what it did.

    Example:
        >>> r = RewardRecord.of(gold=1.0)
        >>> r.value, r.valid
        (1.0, True)
        >>> RewardRecord.invalid("sandbox_died").valid
        False
    """

    value: float
    valid: bool = True
    components: Mapping[str, RewardComponent] = field(default_factory=dict)
    reason: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "components", MappingProxyType(dict(self.components)))

    @classmethod
    def of(cls, **terms: float) -> RewardRecord:
        """A valid record whose value is the unweighted sum of the named terms."""
        components = {name: RewardComponent(float(v)) for name, v in terms.items()}
        return cls(value=sum(c.value for c in components.values()), components=components)

    @classmethod
    def weighted(cls, terms: Mapping[str, RewardComponent]) -> RewardRecord:
        """A valid record whose value is Σ weight·value over ``terms``."""
        return cls(value=sum(c.weight * c.value for c in terms.values()), components=terms)

    @classmethod
    def invalid(cls, reason: str) -> RewardRecord:
        """A record to be masked out: the infrastructure, not the agent, ended the episode."""
        return cls(value=0.0, valid=False, reason=reason)
