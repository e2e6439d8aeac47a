r"""Group-relative advantage estimators that honour infrastructure masking.

**Batch layout.** Every estimator takes a flat batch of N trajectories:

* ``rewards`` — ``[N]`` float; entries of invalid trajectories may hold anything, NaN included;
* ``valid``   — ``[N]`` bool; ``False`` marks a trajectory the infrastructure broke;
* ``groups``  — ``[N]`` int; trajectories sampled for the same prompt share an id (any integers,
  in any order).

and returns :class:`Advantages`: ``values [N]`` and ``keep [N]``. An invalid trajectory is
left out of every group statistic, gets advantage 0 and ``keep=False``, so the trainer masks all
of its tokens out of the loss. A group with fewer than ``min_valid`` valid members has no
trustworthy baseline: all of its members get advantage 0 and ``keep=False``, and its id is
reported in ``dropped_groups`` for the trainer to log.

For a group with valid rewards r_1..r_K, mean r̄ and unbiased std s = sqrt(Σ(r_i - r̄)²/(K-1)):

* :class:`GRPO`   (DeepSeekMath, arXiv 2402.03300):  A_i = (r_i - r̄) / (s + ε)
* :class:`DrGRPO` (Dr. GRPO, arXiv 2503.20783):       A_i = r_i - r̄
* :class:`RLOO`   (Ahmadian et al., arXiv 2402.14740): A_i = r_i - (1/(K-1)) Σ_{j≠i} r_j

Example:
    >>> import torch
    >>> adv = GRPO()(torch.tensor([1.0, 0.0, float("nan"), 5.0, 5.0]),
    ...              torch.tensor([True, True, False, True, False]),
    ...              torch.tensor([0, 0, 0, 1, 1]))
    >>> [round(a, 3) for a in adv.values.tolist()]
    [0.707, -0.707, 0.0, 0.0, 0.0]
    >>> adv.keep.tolist(), adv.dropped_groups.tolist()
    ([True, True, False, False, False], [1])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from gymbox.rewards.record import RewardRecord


@dataclass(frozen=True, slots=True)
class Advantages:
    """Per-trajectory advantages and which trajectories may enter the loss.

    Attributes:
        values: ``[N]`` float32; 0 wherever ``keep`` is false.
        keep: ``[N]`` bool; valid and in a group with enough valid members. Multiply each
            trajectory's token loss mask by it.
        dropped_groups: ids of the groups dropped for having fewer than ``min_valid`` valid
            members.
        invalid: how many trajectories were invalid.
    """

    values: Tensor
    keep: Tensor
    dropped_groups: Tensor
    invalid: int

    def metrics(self) -> dict[str, float]:
        """Counts for the training log: invalid trajectories, dropped groups, kept share."""
        total = self.keep.numel()
        return {
            "invalid": float(self.invalid),
            "valid_fraction": 1.0 - self.invalid / total if total else 0.0,
            "groups_dropped": float(self.dropped_groups.numel()),
            "kept_fraction": self.keep.float().mean().item() if total else 0.0,
        }


class AdvantageEstimator(Protocol):
    """Maps a flat batch ``(rewards [N], valid [N], groups [N])`` to :class:`Advantages`."""

    def __call__(self, rewards: Tensor, valid: Tensor, groups: Tensor) -> Advantages: ...


@dataclass(frozen=True, slots=True)
class _GroupStats:
    """Statistics of each trajectory's group over its valid members, gathered back to [N]."""

    count: Tensor  # valid members in the trajectory's group
    total: Tensor  # Σ of their rewards
    mean: Tensor
    std: Tensor  # unbiased; 0 for a group of one
    keep: Tensor
    dropped_groups: Tensor
    rewards: Tensor  # float64, 0 where invalid


def _group_stats(rewards: Tensor, valid: Tensor, groups: Tensor, min_valid: int) -> _GroupStats:
    if not (rewards.dim() == valid.dim() == groups.dim() == 1):
        raise ValueError("rewards, valid and groups must be flat [N] tensors")
    if not (rewards.shape == valid.shape == groups.shape):
        raise ValueError(
            f"rewards, valid and groups must have the same length, got {rewards.shape[0]}, "
            f"{valid.shape[0]} and {groups.shape[0]}"
        )
    if valid.dtype != torch.bool:
        raise TypeError(f"valid must be a bool tensor, got {valid.dtype}")
    if groups.dtype.is_floating_point:
        raise TypeError(f"groups must hold integer ids, got {groups.dtype}")
    r = torch.where(valid, rewards.double(), 0.0)
    if not torch.isfinite(r).all():
        raise ValueError("a valid trajectory has a non-finite reward; mark it valid=False")

    ids, inverse = torch.unique(groups, return_inverse=True)
    zeros = torch.zeros(ids.numel(), dtype=torch.float64)
    count = zeros.index_add(0, inverse, valid.double())
    total = zeros.index_add(0, inverse, r)
    mean = total / count.clamp(min=1)
    deviation = torch.where(valid, r - mean[inverse], 0.0)
    var = zeros.index_add(0, inverse, deviation.square()) / (count - 1).clamp(min=1)
    enough = count >= min_valid
    return _GroupStats(
        count=count[inverse],
        total=total[inverse],
        mean=mean[inverse],
        std=var.sqrt()[inverse],
        keep=valid & enough[inverse],
        dropped_groups=ids[~enough],
        rewards=r,
    )


def _finish(stats: _GroupStats, raw: Tensor, valid: Tensor) -> Advantages:
    values = torch.where(stats.keep, raw, 0.0).float()
    return Advantages(values, stats.keep, stats.dropped_groups, int((~valid).sum()))


def _check_min_valid(min_valid: int, least: int) -> None:
    if min_valid < least:
        raise ValueError(f"min_valid must be >= {least}, got {min_valid}")


@dataclass(frozen=True, slots=True)
class GRPO:
    """A_i = (r_i - r̄) / (s + ε), s the unbiased std of the group's valid rewards.

    A group whose valid rewards are all equal gets advantage 0 (s = 0). ``min_valid=1`` keeps
    groups of one, whose only member gets 0.
    """

    eps: float = 1e-6
    min_valid: int = 2

    def __post_init__(self) -> None:
        _check_min_valid(self.min_valid, 1)

    def __call__(self, rewards: Tensor, valid: Tensor, groups: Tensor) -> Advantages:
        stats = _group_stats(rewards, valid, groups, self.min_valid)
        return _finish(stats, (stats.rewards - stats.mean) / (stats.std + self.eps), valid)


@dataclass(frozen=True, slots=True)
class DrGRPO:
    """A_i = r_i - r̄: GRPO without the std division, which biases updates towards groups of
    near-identical rewards (Dr. GRPO, arXiv 2503.20783). Its other fix, summing the token loss
    over a constant length instead of each response's length, belongs to the trainer."""

    min_valid: int = 2

    def __post_init__(self) -> None:
        _check_min_valid(self.min_valid, 1)

    def __call__(self, rewards: Tensor, valid: Tensor, groups: Tensor) -> Advantages:
        stats = _group_stats(rewards, valid, groups, self.min_valid)
        return _finish(stats, stats.rewards - stats.mean, valid)


@dataclass(frozen=True, slots=True)
class RLOO:
    """A_i = r_i - mean of the other valid members' rewards = K/(K-1) · (r_i - r̄).

    The leave-one-out baseline needs at least one other member, so ``min_valid >= 2``.
    """

    min_valid: int = 2

    def __post_init__(self) -> None:
        _check_min_valid(self.min_valid, 2)

    def __call__(self, rewards: Tensor, valid: Tensor, groups: Tensor) -> Advantages:
        stats = _group_stats(rewards, valid, groups, self.min_valid)
        others = (stats.total - stats.rewards) / (stats.count - 1).clamp(min=1)
        return _finish(stats, stats.rewards - others, valid)


def batch_from_records(records: Sequence[RewardRecord]) -> tuple[Tensor, Tensor]:
    """``(rewards [N] float32, valid [N] bool)`` from reward records, in order.

    Example:
        >>> rewards, valid = batch_from_records([RewardRecord.of(gold=1.0),
        ...                                      RewardRecord.invalid("sandbox_died")])
        >>> rewards.tolist(), valid.tolist()
        ([1.0, 0.0], [True, False])
    """
    rewards = torch.tensor([r.value for r in records], dtype=torch.float32)
    valid = torch.tensor([r.valid for r in records], dtype=torch.bool)
    return rewards, valid
