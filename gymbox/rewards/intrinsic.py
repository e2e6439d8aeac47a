r"""Label-free rewards that compare a group's answers with each other.

A *group* is the G responses sampled for one prompt, reduced to their extracted answers
(``str``, or ``None`` when a response holds no parseable answer; see
:mod:`gymbox.rewards.extract`). Answers are clustered by an equivalence test, by default a
verifier's :meth:`~gymbox.rewards.gold.Verifier.equivalent`, so ``"0.5"`` and ``"\frac12"``
vote together under :class:`~gymbox.rewards.gold.MathEquivalence`.

All of these must be computed on answers sampled from the CURRENT policy: a reward that scores
a fixed model's opinion can be maximised by pleasing that model rather than by being right.

Example:
    >>> vote = majority_vote(["4", "5", "4", None])
    >>> vote.label, vote.rewards.tolist(), vote.agreement
    ('4', [1.0, 0.0, 1.0, 0.0], 0.5)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from gymbox.rewards.gold import ExactMatch

Equivalence = Callable[[str, str], bool]
"""Whether two extracted answers mean the same thing."""

_exact = ExactMatch().equivalent


def cluster_answers(
    answers: Sequence[str | None], equivalent: Equivalence = _exact
) -> list[int | None]:
    """The cluster index of each answer; ``None`` for an unparseable answer.

    Clusters are numbered in order of first appearance. Each answer joins the first cluster whose
    first member it is equivalent to, so a non-transitive equivalence still gives one answer.
    An answer the equivalence does not match to itself (``"..."`` under a numeric match) is
    unparseable too: it could never agree with anything, so it must not become a cluster, and
    with it a pseudo-label that a policy is paid to repeat.

    Example:
        >>> cluster_answers(["a", "b", None, "A"])
        [0, 1, None, 0]
        >>> from gymbox.rewards.gold import NumericMatch
        >>> cluster_answers(["...", "42", "42.0", "..."], NumericMatch().equivalent)
        [None, 0, 0, None]
    """
    representatives: list[str] = []
    clusters: list[int | None] = []
    for answer in answers:
        if answer is None or not equivalent(answer, answer):
            clusters.append(None)
            continue
        index = next((k for k, rep in enumerate(representatives) if equivalent(answer, rep)), None)
        if index is None:
            index = len(representatives)
            representatives.append(answer)
        clusters.append(index)
    return clusters


@dataclass(frozen=True, slots=True)
class Vote:
    """The outcome of a group vote.

    Attributes:
        label: the pseudo-label (first-seen member of the winning cluster), or ``None`` when no
            two answers in the group agree (or none parsed).
        rewards: ``[G]`` float32, 1.0 where the answer is equivalent to the label, else 0.0.
        soft_rewards: ``[G]`` float32, the share of the group that gave the same answer.
        agreement: the label's share of the group (its majority ratio), 0.0 without a label.
        clusters: each answer's cluster index (``None`` if unparseable).
    """

    label: str | None
    rewards: Tensor
    soft_rewards: Tensor
    agreement: float
    clusters: list[int | None]


def majority_vote(answers: Sequence[str | None], equivalent: Equivalence = _exact) -> Vote:
    r"""Majority-vote pseudo-label and rewards for one group.

    TTRL (arXiv 2504.16084): ŷ = argmax_y Σ_i 1[a_i ≡ y] over the parseable answers, and
    r_i = 1[a_i ≡ ŷ]. Unparseable answers cast no vote and score 0; a tie goes to the answer
    seen first. A vote needs agreement: when no two answers agree (in a group of two or more),
    there is no label and no member is paid. Otherwise the first answer of every such group
    would be its own "majority", and small groups (TTRL votes over 64 samples; GRPO groups are
    often 4) would pay one arbitrary answer in each, reinforcing noise. The soft reward gives
    each member the vote share of its own answer, s_i = |{j : a_j ≡ a_i}| / G (the graded
    counterpart of SRT's majority agreement, arXiv 2505.21444). ``agreement`` =
    |{j : a_j ≡ ŷ}| / G, the majority ratio both papers track as the pseudo-label's
    reliability.

    Raises:
        ValueError: for an empty group.
    """
    if not answers:
        raise ValueError("majority_vote needs at least one answer in the group")
    clusters = cluster_answers(answers, equivalent)
    size = len(answers)
    counts: dict[int, int] = {}
    for cluster in clusters:
        if cluster is not None:
            counts[cluster] = counts.get(cluster, 0) + 1
    # Clusters are numbered by first appearance, so max() keeps the first-seen one on a tie.
    winner = max(counts, key=lambda k: (counts[k], -k)) if counts else None
    if winner is not None and counts[winner] < 2 <= size:
        winner = None
    label = answers[clusters.index(winner)] if winner is not None else None
    rewards = torch.tensor([float(c is not None and c == winner) for c in clusters])
    soft = torch.tensor([counts[c] / size if c is not None else 0.0 for c in clusters])
    agreement = counts[winner] / size if winner is not None else 0.0
    return Vote(label, rewards, soft, agreement, clusters)


def semantic_entropy(clusters: Sequence[int | None]) -> float:
    r"""Semantic entropy of a group from its clusters (SEED-GRPO, arXiv 2505.12346).

    SE = -Σ_k p_k log p_k with p_k = |C_k| / G, the share of the group in cluster k (the
    count-based estimate; the paper's Monte-Carlo form weights clusters by sequence
    likelihood instead). Each unparseable answer counts as a cluster of its own: no two of them
    can be shown to agree. SE is 0 when all agree and log G when all differ.

    Example:
        >>> round(semantic_entropy([0, 0, 1, 1]), 4)   # two equal clusters: log 2
        0.6931
    """
    size = len(clusters)
    if size == 0:
        raise ValueError("semantic_entropy needs at least one answer in the group")
    counts: dict[int | str, int] = {}
    for position, cluster in enumerate(clusters):
        key: int | str = cluster if cluster is not None else f"unparsed-{position}"
        counts[key] = counts.get(key, 0) + 1
    return -sum((n / size) * math.log(n / size) for n in counts.values())


def likelihood_semantic_entropy(
    clusters: Sequence[int | None], sequence_logprobs: Sequence[float] | Tensor
) -> float:
    r"""SEED-GRPO's semantic entropy, clusters weighted by sequence likelihood (arXiv 2505.12346).

    p(C_k) = Σ_{i ∈ C_k} π(o_i | q) / Σ_i π(o_i | q), with π(o_i | q) = exp(Σ_t log π(y_t)) the
    sampled response's probability, and SE = -Σ_k p(C_k) log p(C_k). Unparseable answers are
    clusters of their own, as in :func:`semantic_entropy`. With equal likelihoods this is the
    count-based estimate.

    Example:
        >>> round(likelihood_semantic_entropy([0, 0, 1, 1], [-1.0, -1.0, -1.0, -1.0]), 4)
        0.6931
        >>> likelihood_semantic_entropy([0, 1], [0.0, -50.0]) < 1e-15   # one answer dominates
        True
    """
    logprobs = torch.as_tensor(sequence_logprobs, dtype=torch.float64)
    if logprobs.shape != (len(clusters),) or not clusters:
        raise ValueError("need one sequence log-prob per answer, and at least one answer")
    if not torch.isfinite(logprobs).all():
        raise ValueError("sequence log-probs must be finite")
    weights = torch.softmax(logprobs, dim=0)
    mass: dict[int | str, float] = {}
    for position, cluster in enumerate(clusters):
        key: int | str = cluster if cluster is not None else f"unparsed-{position}"
        mass[key] = mass.get(key, 0.0) + float(weights[position])
    return -sum(p * math.log(p) for p in mass.values() if p > 0)


def seed_scale(
    entropy: float,
    group_size: int,
    *,
    alpha: float = 1.0,
    form: Literal["linear", "exponential"] = "linear",
) -> float:
    r"""SEED-GRPO's advantage scale f(α · SE / SE_max), with SE_max = log G (arXiv 2505.12346).

    ``linear``: f(x) = max(0, 1 - x); ``exponential``: f(x) = exp(-x). Both are 1 for a
    confident group (SE = 0) and shrink the update as the group disagrees; the floor at 0 keeps
    an α > 1 from flipping an advantage's sign. Multiply a group's advantages by it:
    Â_i = A_i · f. A group of one has no disagreement to measure and gets 1.

    Example:
        >>> seed_scale(math.log(4), 4)          # all four answers differ
        0.0
        >>> round(seed_scale(math.log(4), 4, form="exponential"), 4)
        0.3679
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if group_size == 1:
        return 1.0
    x = alpha * entropy / math.log(group_size)
    if form == "linear":
        return max(0.0, 1.0 - x)
    if form == "exponential":
        return math.exp(-x)
    raise ValueError(f"form must be 'linear' or 'exponential', got {form!r}")


@dataclass(frozen=True, slots=True)
class BordaVote:
    """The outcome of a Borda vote.

    Attributes:
        label: the selected answer (first-seen member of the winning cluster), or ``None``.
        index: the position in the group of the response carrying ``label`` that ranked best,
            i.e. the best-of-N pick; ``None`` without a label.
        scores: each cluster's total vote weight, indexed by cluster.
        clusters: each answer's cluster index (``None`` if unparseable).
    """

    label: str | None
    index: int | None
    scores: list[float]
    clusters: list[int | None]


def borda_vote(
    answers: Sequence[str | None],
    certainty: Sequence[float] | Tensor,
    *,
    power: float = 0.5,
    equivalent: Equivalence = _exact,
) -> BordaVote:
    r"""Best-of-N selection by self-certainty-weighted voting (Kang et al., arXiv 2502.18581).

    Responses are ranked by self-certainty, rank 1 the most certain (ties keep group order).
    Each parseable answer votes for its cluster with weight v = (N - rank + 1)^p; the cluster
    with the largest total wins (ties to the one seen first). p = 0 is plain majority voting;
    a large p approaches picking the single most certain answer.

    Example:
        >>> borda_vote(["7", "8", "8"], [3.0, 1.0, 2.0], power=0.0).label     # majority
        '8'
        >>> borda_vote(["7", "8", "8"], [3.0, 1.0, 2.0], power=3.0).label     # 27 > 8 + 1
        '7'
    """
    size = len(answers)
    if size == 0:
        raise ValueError("borda_vote needs at least one answer in the group")
    certainty = torch.as_tensor(certainty, dtype=torch.float64)
    if certainty.shape != (size,):
        raise ValueError(
            f"certainty needs one value per answer ({size}), got shape {tuple(certainty.shape)}"
        )
    order = torch.argsort(-certainty, stable=True).tolist()
    rank = {position: r + 1 for r, position in enumerate(order)}
    clusters = cluster_answers(answers, equivalent)
    scores = [0.0] * (max((c for c in clusters if c is not None), default=-1) + 1)
    for position, cluster in enumerate(clusters):
        if cluster is not None:
            scores[cluster] += (size - rank[position] + 1) ** power
    if not scores:
        return BordaVote(None, None, scores, clusters)
    winner = max(range(len(scores)), key=lambda k: (scores[k], -k))
    members = [p for p in order if clusters[p] == winner]
    return BordaVote(answers[clusters.index(winner)], members[0], scores, clusters)
