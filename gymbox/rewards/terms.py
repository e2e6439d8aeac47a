r"""Reward terms: small named objects that score one group of trajectories.

A term is called with one group (the G episodes sampled for one task) and returns one reward per
member, ``[G]`` float32. It reads only what :class:`Scored` promises, which
:class:`gymbox.agents.rollout.Trajectory` has, so this layer never imports the agents layer.
Members the infrastructure broke (``reward.valid`` false) may get any value: the estimator
leaves them out of every statistic.

=========================  =========================================================  =========
name                       r_i                                                        intrinsic
=========================  =========================================================  =========
``gold``                   the env's verifier: ``reward.value``                       no
``majority_vote``          1[a_i ≡ majority answer] (TTRL, arXiv 2504.16084)          yes
``soft_vote``              share of the group that gave a_i's answer (SRT)            yes
``self_certainty``         mean_t KL(U ‖ p_t) over the model's tokens (Intuitor)      yes
``negative_entropy``       -mean_t H_t (or the sum) (EM-RL token level)               yes
``trajectory_logprob``     Σ_t log π(y_t) (or the mean) (EM-RL sequence level)        yes
``borda``                  1[a_i ≡ the self-certainty-weighted Borda winner]          yes
``rnd``                    RND novelty of the response's token features (Burda)       yes
=========================  =========================================================  =========

:data:`TERMS` maps each name to its class; :func:`make_term` builds one from a config's options.
Intrinsic terms use the statistics the policy recorded while sampling (the current policy), so
they cannot be maximised by pleasing a frozen scorer.

Example:
    >>> import torch
    >>> from types import SimpleNamespace as T
    >>> from gymbox.rewards.record import RewardRecord
    >>> group = [T(answer=a, reward=RewardRecord.of(gold=g), loss_mask=(0, 1), token_ids=(1, 2),
    ...            entropy=torch.zeros(2), self_certainty=torch.zeros(2), logprobs=torch.zeros(2))
    ...          for a, g in [("4", 1.0), ("4", 1.0), ("5", 0.0)]]
    >>> MajorityVote()(group).tolist(), Gold()(group).tolist()
    ([1.0, 1.0, 0.0], [1.0, 1.0, 0.0])
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

import torch
from torch import Tensor

from gymbox.rewards.extract import boxed
from gymbox.rewards.gold import ExactMatch, MathEquivalence, NumericMatch
from gymbox.rewards.intrinsic import (
    Equivalence,
    borda_vote,
    cluster_answers,
    likelihood_semantic_entropy,
    majority_vote,
    seed_scale,
    semantic_entropy,
)
from gymbox.rewards.novelty import RNDNovelty
from gymbox.rewards.record import RewardRecord
from gymbox.rewards.tokens import Reduction


class Scored(Protocol):
    """What a reward term may read of one episode (``Trajectory`` has all of it)."""

    @property
    def token_ids(self) -> Sequence[int]: ...
    @property
    def seed(self) -> int | None: ...
    @property
    def answer(self) -> str | None: ...
    @property
    def reward(self) -> RewardRecord: ...
    @property
    def loss_mask(self) -> Sequence[int]: ...
    @property
    def entropy(self) -> Tensor: ...
    @property
    def self_certainty(self) -> Tensor: ...
    @property
    def logprobs(self) -> Tensor: ...


class RewardTerm(Protocol):
    """Scores one group: ``[G]`` float32 rewards. ``intrinsic`` terms need no label."""

    intrinsic: ClassVar[bool]

    def __call__(self, group: Sequence[Scored]) -> Tensor: ...


Match = Literal["exact", "numeric", "math"]
_MATCHES: dict[str, Callable[[], Any]] = {
    "exact": ExactMatch, "numeric": NumericMatch, "math": MathEquivalence,
}


def _equivalence(match: Match) -> Equivalence:
    if match not in _MATCHES:
        raise ValueError(f"match must be one of {', '.join(_MATCHES)}, got {match!r}")
    return _MATCHES[match]().equivalent


def final_answer(trajectory: Scored) -> str | None:
    """The answer a vote counts: the env's extracted answer, its ``\\boxed{}`` content if any."""
    if trajectory.answer is None:
        return None
    return boxed(trajectory.answer) or trajectory.answer.strip() or None


def _masked_mean(values: Tensor, mask: Sequence[int]) -> Tensor:
    m = torch.as_tensor(mask, dtype=torch.bool)
    return values[m].float().mean() if m.any() else torch.tensor(0.0)


def _reduce(values: Tensor, mask: Sequence[int], reduce: Reduction) -> Tensor:
    if reduce == "mean":
        return _masked_mean(values, mask)
    m = torch.as_tensor(mask, dtype=torch.bool)
    return values[m].float().sum()


def _check_reduce(reduce: str) -> None:
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")


@dataclass(frozen=True)
class Gold:
    """The env's own verifier score (``reward.value``): needs a labelled task."""

    intrinsic: ClassVar[bool] = False

    def __call__(self, group: Sequence[Scored]) -> Tensor:
        return torch.tensor([float(t.reward.value) for t in group], dtype=torch.float32)


@dataclass(frozen=True)
class MajorityVote:
    """TTRL's reward: 1 where the answer agrees with the group's majority answer, else 0.

    Args:
        match: how two answers are compared (``exact``, ``numeric`` or ``math``).
    """

    match: Match = "numeric"
    intrinsic: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _equivalence(self.match)

    def __call__(self, group: Sequence[Scored]) -> Tensor:
        answers = [final_answer(t) if t.reward.valid else None for t in group]
        return majority_vote(answers, _equivalence(self.match)).rewards.float()


@dataclass(frozen=True)
class SoftVote:
    """The share of the group that gave the same answer (graded majority vote, SRT)."""

    match: Match = "numeric"
    intrinsic: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _equivalence(self.match)

    def __call__(self, group: Sequence[Scored]) -> Tensor:
        answers = [final_answer(t) if t.reward.valid else None for t in group]
        return majority_vote(answers, _equivalence(self.match)).soft_rewards.float()


@dataclass(frozen=True)
class SelfCertainty:
    """Intuitor's reward: the mean over the model's tokens of KL(U ‖ p_t)."""

    intrinsic: ClassVar[bool] = True

    def __call__(self, group: Sequence[Scored]) -> Tensor:
        return torch.stack([_masked_mean(t.self_certainty, t.loss_mask) for t in group])


@dataclass(frozen=True)
class NegEntropy:
    """Entropy minimisation (EM-RL token level): -H over the model's tokens, mean or sum."""

    reduce: Reduction = "mean"
    intrinsic: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_reduce(self.reduce)

    def __call__(self, group: Sequence[Scored]) -> Tensor:
        return torch.stack([-_reduce(t.entropy, t.loss_mask, self.reduce) for t in group])


@dataclass(frozen=True)
class TrajectoryLogprob:
    """EM-RL sequence level: Σ_t log π(y_t | y_<t) of the sampled tokens (or the mean)."""

    reduce: Reduction = "mean"
    intrinsic: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_reduce(self.reduce)

    def __call__(self, group: Sequence[Scored]) -> Tensor:
        return torch.stack([_reduce(t.logprobs, t.loss_mask, self.reduce) for t in group])


@dataclass(frozen=True)
class Borda:
    """1 where the answer agrees with the Borda winner: answers vote with weight
    (G - rank + 1)^power, ranked by self-certainty (Kang et al., arXiv 2502.18581)."""

    power: float = 0.5
    match: Match = "numeric"
    intrinsic: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _equivalence(self.match)

    def __call__(self, group: Sequence[Scored]) -> Tensor:
        equivalent = _equivalence(self.match)
        answers = [final_answer(t) if t.reward.valid else None for t in group]
        certainty = [float(_masked_mean(t.self_certainty, t.loss_mask)) for t in group]
        vote = borda_vote(answers, certainty, power=self.power, equivalent=equivalent)
        if vote.label is None:
            return torch.zeros(len(group))
        return torch.tensor(
            [float(a is not None and equivalent(a, vote.label)) for a in answers])


@dataclass
class Novelty:
    """RND novelty (:class:`~gymbox.rewards.novelty.RNDNovelty`) of each response.

    The embedding is a hashed bag of the response's own tokens (the model's tokens, counted
    into ``dim`` buckets and L2-normalised): it needs no second model, and it is a feature of
    what the current policy sampled. Each call scores the group, then trains the predictor
    on it, so an answer the policy keeps giving earns less and less.
    """

    dim: int = 256
    lr: float = 1e-3
    seed: int = 0
    intrinsic: ClassVar[bool] = True
    rnd: RNDNovelty = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")
        self.rnd = RNDNovelty(self.dim, lr=self.lr, seed=self.seed)

    def embed(self, t: Scored, token_ids: Sequence[int]) -> Tensor:
        counts = torch.zeros(self.dim)
        for token, m in zip(token_ids, t.loss_mask, strict=True):
            if m:
                counts[token % self.dim] += 1.0
        return counts / counts.norm().clamp(min=1e-8)

    def __call__(self, group: Sequence[Scored]) -> Tensor:
        embeddings = torch.stack([self.embed(t, t.token_ids) for t in group])
        valid = torch.tensor([t.reward.valid for t in group])
        rewards = torch.zeros(len(group))
        if valid.any():
            rewards[valid] = self.rnd.reward(embeddings[valid]).float()
            self.rnd.update(embeddings[valid])
        return rewards

    def state_dict(self) -> dict[str, Any]:
        """The RND's learnt state (see :meth:`RNDNovelty.state_dict`), for a checkpoint."""
        return self.rnd.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rnd.load_state_dict(state)


@dataclass(frozen=True)
class SeedScale:
    """SEED-GRPO's group scale: a group's advantages times f(α · SE / log G), shrinking the
    update where the group's answers disagree (:func:`~gymbox.rewards.intrinsic.seed_scale`).

    Args:
        alpha: α, how strongly disagreement shrinks the update.
        form: f, ``linear`` (max(0, 1 - x)) or ``exponential`` (exp(-x)).
        entropy: ``likelihood``: the paper's estimate, clusters weighted by the responses'
            sequence probabilities (:func:`~gymbox.rewards.intrinsic.likelihood_semantic_entropy`);
            ``count``: clusters weighted by their share of the group
            (:func:`~gymbox.rewards.intrinsic.semantic_entropy`).
        match: how two answers are compared.
    """

    alpha: float = 1.0
    form: Literal["linear", "exponential"] = "linear"
    entropy: Literal["likelihood", "count"] = "likelihood"
    match: Match = "numeric"

    def __post_init__(self) -> None:
        _equivalence(self.match)
        if self.form not in ("linear", "exponential") or self.entropy not in ("likelihood",
                                                                               "count"):
            raise ValueError(f"bad SeedScale form/entropy: {self.form!r}, {self.entropy!r}")
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")

    def __call__(self, group: Sequence[Scored]) -> float:
        members = [t for t in group if t.reward.valid]
        if len(members) < 2:
            return 1.0
        clusters = cluster_answers([final_answer(t) for t in members], _equivalence(self.match))
        if self.entropy == "count":
            se = semantic_entropy(clusters)
        else:
            sequence = [float(_reduce(t.logprobs, t.loss_mask, "sum")) for t in members]
            se = likelihood_semantic_entropy(clusters, sequence)
        return seed_scale(se, len(members), alpha=self.alpha, form=self.form)


TERMS: Mapping[str, Callable[..., RewardTerm]] = {
    "gold": Gold,
    "majority_vote": MajorityVote,
    "soft_vote": SoftVote,
    "self_certainty": SelfCertainty,
    "negative_entropy": NegEntropy,
    "trajectory_logprob": TrajectoryLogprob,
    "borda": Borda,
    "rnd": Novelty,
}
"""Every reward term by the name a config uses."""


def make_term(name: str, options: Mapping[str, Any] | None = None) -> RewardTerm:
    """The term called ``name``, built with ``options`` (its constructor's keyword arguments).

    Raises:
        ValueError: an unknown name, or options the term does not take.

    Example:
        >>> make_term("negative_entropy", {"reduce": "sum"})
        NegEntropy(reduce='sum')
        >>> make_term("novelty")
        Traceback (most recent call last):
        ...
        ValueError: unknown reward term 'novelty'; choose from gold, majority_vote, soft_vote, \
self_certainty, negative_entropy, trajectory_logprob, borda, rnd
    """
    if name not in TERMS:
        raise ValueError(f"unknown reward term {name!r}; choose from {', '.join(TERMS)}")
    try:
        return TERMS[name](**dict(options or {}))
    except TypeError as exc:
        raise ValueError(f"reward term {name!r}: {exc}") from None


def is_labelled(task_seed: int | None, fraction: float) -> bool:
    """Whether the task drawn with ``task_seed`` counts as labelled when only ``fraction`` of
    tasks are: a fixed hash of the seed, so a task is labelled or not for the whole run.

    Example:
        >>> sum(is_labelled(s, 0.25) for s in range(1000))
        227
    """
    if fraction >= 1.0:
        return True
    if fraction <= 0.0 or task_seed is None:
        return False
    digest = hashlib.blake2b(str(task_seed).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction
