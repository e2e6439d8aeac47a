r"""Mixing gold and intrinsic rewards into one advantage.

Each reward *term* (``"gold"``, ``"self_certainty"``, ``"majority_vote"``, ...) is turned into
advantages on its own, by the same group-relative estimator, and the advantages are summed with
the terms' weights at the current step:

    A_i = Σ_k w_k(step) · g_k · A_k,i     (g_k: the entropy-guard factor if k is intrinsic, else 1)

Normalising each term separately keeps one term's scale from drowning the others; this is how
Intuitor (arXiv 2505.19590) adds a gold term to self-certainty. Which samples a term applies to
is decided by a small policy object:

* :class:`Additive` — every term applies to every valid sample;
* :class:`GoldWhereLabelled` — semi-supervised: gold terms apply where the prompt has a label,
  intrinsic terms where it does not.

Weights follow :class:`Constant`, :class:`Linear` or :class:`Cosine` schedules, and an
:class:`EntropyGuard` lowers the intrinsic weights when the policy's mean token entropy falls
below a fraction of its starting value: internal-feedback rewards sharpen the policy until it
collapses after a few dozen steps (arXiv 2506.17219), and entropy is the early warning.

Example:
    >>> import torch
    >>> mix = RewardMix({"gold": Term(1.0), "self_certainty": Term(0.5, intrinsic=True)})
    >>> out = mix.advantages(
    ...     {"gold": torch.tensor([1.0, 0.0]), "self_certainty": torch.tensor([0.2, 0.4])},
    ...     valid=torch.tensor([True, True]), groups=torch.tensor([0, 0]), step=0)
    >>> [round(a, 3) for a in out.values.tolist()]     # 0.707 - 0.5·0.707, and its opposite
    [0.354, -0.354]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from gymbox.rewards.advantages import GRPO, AdvantageEstimator, Advantages
from gymbox.rewards.record import RewardComponent, RewardRecord
from gymbox.rewards.terms import RewardTerm, Scored, is_labelled


class GroupScale(Protocol):
    """A factor for one group's advantages (e.g. :class:`~gymbox.rewards.terms.SeedScale`)."""

    def __call__(self, group: Sequence[Scored]) -> float: ...


class Schedule(Protocol):
    """A weight as a function of the training step."""

    def __call__(self, step: int) -> float: ...


@dataclass(frozen=True, slots=True)
class Constant:
    """w(step) = value."""

    value: float

    def __call__(self, step: int) -> float:
        return self.value


@dataclass(frozen=True, slots=True)
class _Ramp:
    """A weight that moves from ``start`` to ``end`` over ``steps`` steps, then stays."""

    start: float
    end: float
    steps: int

    def __post_init__(self) -> None:
        if self.steps <= 0:
            raise ValueError(f"steps must be > 0, got {self.steps}")

    def progress(self, step: int) -> float:
        return min(step / self.steps, 1.0)


@dataclass(frozen=True, slots=True)
class Linear(_Ramp):
    """w(step) = start + (end - start) · min(step / steps, 1).

    Example:
        >>> Linear(1.0, 0.0, steps=10)(5)
        0.5
    """

    def __call__(self, step: int) -> float:
        return self.start + (self.end - self.start) * self.progress(step)


@dataclass(frozen=True, slots=True)
class Cosine(_Ramp):
    """w(step) = end + (start - end) · (1 + cos(π · min(step / steps, 1))) / 2.

    Example:
        >>> Cosine(1.0, 0.0, steps=10)(5)
        0.5
    """

    def __call__(self, step: int) -> float:
        cosine = math.cos(math.pi * self.progress(step))
        return self.end + (self.start - self.end) * (1.0 + cosine) / 2.0


@dataclass(slots=True)
class EntropyGuard:
    """Scales intrinsic weights by min(1, H / (fraction · H₀)).

    H₀ is the mean token entropy first seen (or given as ``start``), H the current one. Above
    ``fraction · H₀`` the factor is 1; below it the intrinsic weight falls in proportion, to 0
    when the entropy does.

    Example:
        >>> guard = EntropyGuard(fraction=0.5)
        >>> guard(2.0), guard(1.5), guard(0.5)
        (1.0, 1.0, 0.5)
    """

    fraction: float = 0.5
    start: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")

    def __call__(self, mean_entropy: float) -> float:
        if not math.isfinite(mean_entropy) or mean_entropy < 0:
            raise ValueError(f"mean_entropy must be finite and >= 0, got {mean_entropy}")
        if self.start is None:
            self.start = mean_entropy
        floor = self.fraction * self.start
        return 1.0 if floor <= 0 else min(1.0, mean_entropy / floor)


@dataclass(frozen=True, slots=True)
class Term:
    """One reward term of a mix: its weight (a number or a :class:`Schedule`), its kind, and
    (for :meth:`RewardMix.score`) the :class:`~gymbox.rewards.terms.RewardTerm` that scores a
    group. With ``reward`` given, ``intrinsic`` defaults to the reward term's own."""

    weight: Schedule | float
    intrinsic: bool | None = None
    reward: RewardTerm | None = None

    def __post_init__(self) -> None:
        if self.intrinsic is None:
            kind = bool(getattr(self.reward, "intrinsic", False))
            object.__setattr__(self, "intrinsic", kind)

    def weight_at(self, step: int) -> float:
        """The weight at ``step``: the schedule's value, or the constant."""
        return self.weight(step) if callable(self.weight) else float(self.weight)


class Applicability(Protocol):
    """Which valid samples a term applies to, given the per-sample ``labelled`` mask."""

    def __call__(self, term: Term, labelled: Tensor) -> Tensor: ...


@dataclass(frozen=True, slots=True)
class Additive:
    """Every term applies to every sample."""

    def __call__(self, term: Term, labelled: Tensor) -> Tensor:
        return torch.ones_like(labelled)


@dataclass(frozen=True, slots=True)
class GoldWhereLabelled:
    """Gold terms where the sample's prompt has a label, intrinsic terms where it has none."""

    def __call__(self, term: Term, labelled: Tensor) -> Tensor:
        return ~labelled if term.intrinsic else labelled.clone()


@dataclass(frozen=True, slots=True)
class MixedAdvantages(Advantages):
    """The mixed advantages and how they were made (an :class:`Advantages` the loop trains on).

    Attributes:
        values: ``[N]`` float32, Σ_k w_k · A_k (times the group's scale); 0 where ``keep`` is
            false.
        keep: ``[N]`` bool; the trajectories that entered at least one term's statistics.
        dropped_groups: ids of groups none of whose members were kept.
        invalid: how many trajectories were invalid.
        weights: each term's effective weight at this step (schedule × guard).
        terms: each term's own :class:`Advantages`.
        rewards: each term's ``[N]`` raw rewards (only from :meth:`RewardMix.score`).
        applies: each term's ``[N]`` bool: valid and covered by the term.
        records: one :class:`RewardRecord` per trajectory (only from :meth:`RewardMix.score`).
        guard_factor: the entropy guard's factor on the intrinsic weights, None without one.
        mean_entropy: the batch's mean token entropy the guard saw.
        labelled: ``[N]`` bool, whether each sample's task counted as labelled.
        scales: ``[N]`` each member's group scale (SEED-GRPO), all 1 without one.
    """

    weights: dict[str, float]
    terms: dict[str, Advantages]
    rewards: dict[str, Tensor] = field(default_factory=dict)
    applies: dict[str, Tensor] = field(default_factory=dict)
    records: tuple[RewardRecord, ...] = ()
    guard_factor: float | None = None
    mean_entropy: float | None = None
    labelled: Tensor | None = None
    scales: Tensor | None = None

    def metrics(self) -> dict[str, float]:
        """Per-step log values: ``reward/<term>`` (mean over the samples the term covers),
        ``weight/<term>``, ``guard/factor``, ``guard/entropy``, ``labelled_fraction``,
        ``seed_scale``, next to :meth:`Advantages.metrics`'s counts."""
        row = super(MixedAdvantages, self).metrics()
        for name, weight in self.weights.items():
            row[f"weight/{name}"] = weight
            covered = self.applies.get(name)
            if name in self.rewards and covered is not None and bool(covered.any()):
                row[f"reward/{name}"] = float(self.rewards[name][covered].float().mean())
        if self.guard_factor is not None:
            row["guard/factor"] = self.guard_factor
        if self.mean_entropy is not None:
            row["guard/entropy"] = self.mean_entropy
        if self.labelled is not None and self.labelled.numel():
            row["labelled_fraction"] = float(self.labelled.float().mean())
        if self.scales is not None and self.scales.numel():
            row["seed_scale"] = float(self.scales.float().mean())
        return row


@dataclass
class RewardMix:
    """Weighted sum of separately group-normalised advantages of several reward terms.

    Args:
        terms: name → :class:`Term`; the names key the reward tensors given to
            :meth:`advantages`.
        estimator: the advantage estimator applied to each term (default :class:`GRPO`).
        applies: which samples each term covers (:class:`Additive` or
            :class:`GoldWhereLabelled`).
        guard: an optional :class:`EntropyGuard` for the intrinsic weights.
    """

    terms: Mapping[str, Term]
    estimator: AdvantageEstimator = field(default_factory=GRPO)
    applies: Applicability = field(default_factory=Additive)
    guard: EntropyGuard | None = None
    scale: GroupScale | None = None
    labelled_fraction: float = 1.0
    train_on: int | None = None

    def __post_init__(self) -> None:
        if not self.terms:
            raise ValueError("RewardMix needs at least one term")
        if not 0.0 <= self.labelled_fraction <= 1.0:
            raise ValueError(f"labelled_fraction must be in [0, 1], got {self.labelled_fraction}")
        if self.train_on is not None and self.train_on < 1:
            raise ValueError(f"train_on must be >= 1 or None, got {self.train_on}")

    def score(self, groups: Sequence[Sequence[Scored]], *, step: int,
              ids: Sequence[int] | None = None) -> MixedAdvantages:
        """Score whole groups with the terms' own :class:`RewardTerm` objects, then mix.

        Each term scores each group (votes see every valid member); the estimator then uses
        the first ``train_on`` members of each group (all when None: TTRL votes on more samples
        than it trains on). A task is labelled when :func:`~gymbox.rewards.terms.is_labelled`
        says so for its seed at ``labelled_fraction``; the applicability policy decides which
        terms cover it. The ``scale`` (SEED-GRPO) multiplies each group's advantages.

        Args:
            groups: each group's members, in order; the result is flat in that order.
            step: the training step, for the schedules.
            ids: each group's id (its position by default).

        Raises:
            ValueError: a term has no ``reward`` to score with, or an empty group.
        """
        unscored = [name for name, term in self.terms.items() if term.reward is None]
        if unscored:
            raise ValueError(f"score() needs every Term to have a reward; {unscored} have none")
        if any(len(g) == 0 for g in groups):
            raise ValueError("every group needs at least one member")
        ids = list(range(len(groups))) if ids is None else list(ids)
        flat = [t for g in groups for t in g]
        group_ids = torch.tensor([i for i, g in zip(ids, groups, strict=True) for _ in g])
        valid = torch.tensor([t.reward.valid for t in flat], dtype=torch.bool)
        position = torch.tensor([k for g in groups for k in range(len(g))])
        trained = valid if self.train_on is None else valid & (position < self.train_on)
        labelled = torch.tensor(
            [is_labelled(t.seed, self.labelled_fraction) for t in flat], dtype=torch.bool)
        rewards = {name: torch.cat([term.reward(g).float() for g in groups])  # type: ignore[misc]
                   for name, term in self.terms.items()}
        mean_entropy = None
        if self.guard is not None:
            means = [float(t.entropy[torch.as_tensor(t.loss_mask, dtype=torch.bool)].mean())
                     for t in flat if t.reward.valid and any(t.loss_mask)]
            mean_entropy = sum(means) / len(means) if means else 0.0
        mixed = self.advantages(rewards, trained, group_ids, step=step, labelled=labelled,
                                mean_entropy=mean_entropy)
        scales = torch.ones(len(flat))
        if self.scale is not None:
            scales = torch.cat([torch.full((len(g),), self.scale(g)) for g in groups])
        applies = {name: trained & self.applies(term, labelled)
                   for name, term in self.terms.items()}
        return dataclasses.replace(
            mixed, invalid=int((~valid).sum()), values=(mixed.values * scales).float(),
            rewards=rewards, applies=applies,
            records=tuple(self.records(rewards, valid, mixed.weights, labelled)),
            guard_factor=self._guard_factor(mean_entropy), mean_entropy=mean_entropy,
            labelled=labelled[valid], scales=scales[valid])

    def state_dict(self) -> dict[str, Any]:
        """What the mix learnt while scoring, for a checkpoint: the state of every term that
        has one (RND's networks and statistics) and the guard's starting entropy H₀. Without
        it a resumed run would score with a fresh RND and measure the guard from a new H₀."""
        terms = {name: term.reward.state_dict() for name, term in self.terms.items()
                 if hasattr(term.reward, "state_dict")}
        return {"terms": terms, "guard_start": self.guard.start if self.guard else None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        Raises:
            ValueError: the state is of a mix with other stateful terms.
        """
        mine = {name for name, term in self.terms.items() if hasattr(term.reward, "state_dict")}
        if set(state["terms"]) != mine:
            raise ValueError(f"the saved reward state has terms {sorted(state['terms'])}, this "
                             f"mix's stateful terms are {sorted(mine)}")
        for name, term_state in state["terms"].items():
            self.terms[name].reward.load_state_dict(term_state)  # type: ignore[union-attr]
        if self.guard is not None:
            self.guard.start = state["guard_start"]

    def _guard_factor(self, mean_entropy: float | None) -> float | None:
        if self.guard is None or mean_entropy is None:
            return None
        return self.guard(mean_entropy)

    def weights(self, step: int, mean_entropy: float | None = None) -> dict[str, float]:
        """Each term's weight at ``step``, intrinsic ones scaled by the entropy guard.

        Raises:
            ValueError: if a guard is set and ``mean_entropy`` is not given.
        """
        if self.guard is not None and mean_entropy is None:
            raise ValueError("this RewardMix has an EntropyGuard: pass mean_entropy")
        factor = self._guard_factor(mean_entropy)
        factor = 1.0 if factor is None else factor
        return {
            name: term.weight_at(step) * (factor if term.intrinsic else 1.0)
            for name, term in self.terms.items()
        }

    def advantages(
        self,
        rewards: Mapping[str, Tensor],
        valid: Tensor,
        groups: Tensor,
        *,
        step: int,
        labelled: Tensor | None = None,
        mean_entropy: float | None = None,
    ) -> MixedAdvantages:
        """Mixed advantages for a flat batch (layout of :mod:`gymbox.rewards.advantages`).

        Args:
            rewards: name → ``[N]`` reward tensor for every term of the mix. Entries a term does
                not apply to (invalid, or gold without a label) may hold anything, NaN included.
            valid: ``[N]`` bool, false for trajectories the infrastructure broke.
            groups: ``[N]`` int group ids.
            step: the training step, for the weight schedules.
            labelled: ``[N]`` bool, whether each sample's prompt has a gold label; defaults to
                all true.
            mean_entropy: the policy's mean token entropy on this batch, required with a guard.

        Raises:
            KeyError: if a term has no reward tensor, or a tensor names no term.
        """
        missing, unknown = set(self.terms) - set(rewards), set(rewards) - set(self.terms)
        if missing or unknown:
            raise KeyError(
                f"rewards must match the mix's terms {sorted(self.terms)}: "
                f"missing {sorted(missing)}, unknown {sorted(unknown)}"
            )
        labelled = torch.ones_like(valid) if labelled is None else labelled.bool()
        weights = self.weights(step, mean_entropy)
        per_term = {
            name: self.estimator(rewards[name], valid & self.applies(term, labelled), groups)
            for name, term in self.terms.items()
        }
        values = sum(weights[name] * adv.values for name, adv in per_term.items())
        keep = torch.stack([adv.keep for adv in per_term.values()]).any(dim=0)
        ids = torch.unique(groups)
        dropped = ids[~torch.isin(ids, groups[keep])]
        invalid = int((~valid).sum())
        return MixedAdvantages(
            torch.where(keep, values, 0.0).float(), keep, dropped, invalid, weights, per_term,
            applies={name: valid & self.applies(term, labelled)
                     for name, term in self.terms.items()},
            rewards=dict(rewards),
        )

    def records(
        self,
        rewards: Mapping[str, Tensor],
        valid: Tensor,
        weights: Mapping[str, float],
        labelled: Tensor | None = None,
    ) -> list[RewardRecord]:
        """One :class:`RewardRecord` per trajectory with each applicable term's value and
        weight (``weights`` as returned in :attr:`MixedAdvantages.weights`), for logs.

        Invalid trajectories get ``RewardRecord.invalid("infra_failed")``.
        """
        labelled = torch.ones_like(valid) if labelled is None else labelled.bool()
        applies = {name: self.applies(term, labelled) for name, term in self.terms.items()}
        records = []
        for i in range(valid.numel()):
            if not bool(valid[i]):
                records.append(RewardRecord.invalid("infra_failed"))
                continue
            components = {
                name: RewardComponent(float(rewards[name][i]), weights[name])
                for name in self.terms
                if bool(applies[name][i])
            }
            records.append(RewardRecord.weighted(components))
        return records
