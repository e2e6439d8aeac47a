r"""Token-level intrinsic terms from the current policy's logits, and their trajectory rewards.

For each position t with logits z_t ∈ ℝ^V at sampling temperature τ, let
p_t = softmax(z_t / τ) and L_t = logsumexp(z_t / τ). Then

* entropy          H_t  = -Σ_j p_tj log p_tj          = L_t - Σ_j p_tj z_tj / τ
* self-certainty   SC_t = KL(U ‖ p_t) = -(1/V) Σ_j log(V·p_tj) = L_t - mean_j(z_tj) / τ - log V
* log-probability  ℓ_t  = log p_t[y_t]                = z_t[y_t] / τ - L_t

With s_t = (z_t - max_j z_tj)/τ ≤ 0 and p_top the probability of the row's argmax, L_t =
max_j z_tj/τ - log p_top, so all three come from one softmax of s per row, and no separate
logsumexp pass is needed. Rows are processed a chunk at a time: the extra memory is two
``chunk_rows × V`` buffers (s and p), never a copy of the whole [B, T, V] tensor.

Trajectory rewards reduce these over the response tokens with a mask:

* :func:`self_certainty_reward` — Intuitor (arXiv 2505.19590) and Kang et al. (arXiv 2502.18581):
  r = (1/|o|) Σ_t SC_t.
* :func:`negative_entropy_reward` — EM-RL token level (arXiv 2505.15134): r = -Σ_t H_t (or the
  mean).
* :func:`trajectory_logprob_reward` — EM-RL sequence level (arXiv 2505.15134):
  r = Σ_t log π(y_t | y_<t), a one-sample estimate of -H(π(·|q)) (or the mean).

Example:
    >>> import torch
    >>> stats = token_stats(torch.zeros(1, 2, 4), torch.tensor([[0, 3]]))
    >>> [round(x, 4) for x in stats.entropy[0].tolist()]      # uniform: H = log 4
    [1.3863, 1.3863]
    >>> stats.self_certainty.abs().max().item() < 1e-6        # uniform: KL(U‖U) = 0
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Reduction = Literal["mean", "sum"]


@dataclass(frozen=True, slots=True)
class TokenStats:
    """Per-token terms of a batch, each ``[B, T]`` float32, computed without gradient.

    ``logprobs`` is ``None`` when no sampled tokens were given.
    """

    entropy: Tensor
    self_certainty: Tensor
    logprobs: Tensor | None


def token_stats(
    logits: Tensor,
    tokens: Tensor | None = None,
    *,
    temperature: float = 1.0,
    chunk_rows: int = 16,
) -> TokenStats:
    """Entropy, self-certainty and (given ``tokens``) sampled-token log-probs from ``logits``.

    Args:
        logits: ``[B, T, V]``, finite (raw model outputs, not top-k/top-p filtered), any float
            dtype (the math runs in float32), from the CURRENT policy: the terms are rewards
            about the policy being trained. A sliced, non-contiguous view is fine.
        tokens: ``[B, T]`` int64 ids of the sampled tokens, or ``None``.
        temperature: τ > 0, the sampling temperature; logits are divided by it first.
        chunk_rows: at most how many positions are exponentiated at once; the extra memory
            is ``2 × chunk_rows × V`` float32. Fewer, larger chunks cost fewer thread
            synchronisations; smaller ones stay in cache.

    Raises:
        ValueError: for a non-positive temperature or ``chunk_rows``, logits that are not
            3-D, or ``tokens`` whose shape is not ``logits.shape[:2]``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (got {temperature}); use 1.0 for greedy data")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, T, V], got shape {tuple(logits.shape)}")
    batch, steps, vocab = logits.shape
    if tokens is not None and tuple(tokens.shape) != (batch, steps):
        raise ValueError(
            f"tokens must be [B, T] = {(batch, steps)} to match logits, got {tuple(tokens.shape)}"
        )
    inv_tau = 1.0 / temperature
    with torch.no_grad():
        # Whole-tensor passes that allocate only [B, T] outputs: max (with its index), mean, and
        # the sampled tokens' logits. Nothing is reshaped, so a sliced (non-contiguous) logits
        # tensor is never copied.
        peak, top = logits.max(dim=-1)
        peak, mean_z = peak.float(), logits.mean(dim=-1, dtype=torch.float32)
        expected_shift = torch.empty_like(peak)  # Σ_j p_j s_j, s = (z - max)/τ ≤ 0
        top_p = torch.empty_like(peak)  # p at the argmax: p_top = exp(-L_s), L_s = L - max/τ
        offset = (peak * -inv_tau)[..., None]
        # Tiles of at most chunk_rows positions: whole sequences when they are short.
        tile_b, tile_t = max(1, chunk_rows // max(steps, 1)), max(1, min(steps, chunk_rows))
        for b0 in range(0, batch, tile_b):
            for t0 in range(0, steps, tile_t):
                tile = (slice(b0, b0 + tile_b), slice(t0, t0 + tile_t))
                # s = z/τ - max/τ in one fused op. Shifting by the max keeps s small, so the
                # float32 dot product below stays accurate to ~1e-5 however large the logits.
                shifted = torch.add(offset[tile], logits[tile], alpha=inv_tau)
                probs = torch.softmax(shifted, dim=-1)
                expected_shift[tile] = torch.linalg.vecdot(probs, shifted)
                top_p[tile] = probs.gather(-1, top[tile][..., None]).squeeze(-1)
        log_norm_shifted = -top_p.log()  # L_s
        entropy = log_norm_shifted - expected_shift
        certainty = log_norm_shifted + (peak - mean_z) * inv_tau - math.log(vocab)
        logprobs = None
        if tokens is not None:
            picked = logits.gather(-1, tokens[..., None]).squeeze(-1).float()
            logprobs = (picked - peak) * inv_tau - log_norm_shifted
    return TokenStats(entropy=entropy, self_certainty=certainty, logprobs=logprobs)


def masked_sum(values: Tensor, mask: Tensor) -> Tensor:
    """Σ_t values[b, t] over positions where ``mask`` is true: ``[B, T] → [B]``.

    Masked-out positions may hold anything, NaN included.
    """
    return torch.where(mask.bool(), values, 0.0).sum(dim=-1)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """The mean over positions where ``mask`` is true: ``[B, T] → [B]``; 0 for an empty row.

    Example:
        >>> import torch
        >>> masked_mean(torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[1, 1, 0]]))
        tensor([2.])
    """
    count = mask.bool().sum(dim=-1).clamp(min=1)
    return masked_sum(values, mask) / count


def _reduce(values: Tensor, mask: Tensor, reduce: Reduction) -> Tensor:
    if reduce == "mean":
        return masked_mean(values, mask)
    if reduce == "sum":
        return masked_sum(values, mask)
    raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")


def self_certainty_reward(stats: TokenStats, mask: Tensor) -> Tensor:
    """Intuitor's reward (arXiv 2505.19590): r = (1/|o|) Σ_t KL(U ‖ p_t) over response tokens."""
    return masked_mean(stats.self_certainty, mask)


def negative_entropy_reward(stats: TokenStats, mask: Tensor, reduce: Reduction = "mean") -> Tensor:
    """EM-RL token-level reward (arXiv 2505.15134): r = -Σ_t H_t (``"sum"``) or its mean."""
    return -_reduce(stats.entropy, mask, reduce)


def trajectory_logprob_reward(
    stats: TokenStats, mask: Tensor, reduce: Reduction = "mean"
) -> Tensor:
    """EM-RL sequence-level reward (arXiv 2505.15134): r = Σ_t log π(y_t|y_<t) or its mean.

    Raises:
        ValueError: if ``stats`` was computed without the sampled tokens.
    """
    if stats.logprobs is None:
        raise ValueError("trajectory_logprob_reward needs token_stats(logits, tokens=...)")
    return _reduce(stats.logprobs, mask, reduce)
