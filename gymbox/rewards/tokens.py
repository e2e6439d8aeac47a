r"""Token-level intrinsic terms from the current policy's logits, and their trajectory rewards.

For each position t with logits z_t ∈ ℝ^V at sampling temperature τ, let
p_t = softmax(z_t / τ) and L_t = logsumexp(z_t / τ). Then

* entropy          H_t  = -Σ_j p_tj log p_tj          = L_t - Σ_j p_tj z_tj / τ
* self-certainty   SC_t = KL(U ‖ p_t) = -(1/V) Σ_j log(V·p_tj) = L_t - mean_j(z_tj) / τ - log V
* log-probability  ℓ_t  = log p_t[y_t]                = z_t[y_t] / τ - L_t

All three come from one exponential of each row, computed a chunk of rows at a time, so the only
extra [B, T, V]-sized memory is one chunk (``chunk_rows × V`` floats), never a full copy.

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
    chunk_rows: int = 32,
) -> TokenStats:
    """Entropy, self-certainty and (given ``tokens``) sampled-token log-probs from ``logits``.

    Args:
        logits: ``[B, T, V]`` (any float dtype; the math runs in float32), from the CURRENT
            policy: the terms are rewards about the policy being trained.
        tokens: ``[B, T]`` int64 ids of the sampled tokens, or ``None``.
        temperature: τ > 0, the sampling temperature; logits are divided by it first.
        chunk_rows: how many of the B·T rows are exponentiated at once; the extra memory is
            ``chunk_rows × V`` floats.

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
    rows = logits.reshape(batch * steps, vocab)
    flat_tokens = tokens.reshape(-1) if tokens is not None else None
    inv_tau = 1.0 / temperature
    entropy = torch.empty(batch * steps, dtype=torch.float32, device=logits.device)
    certainty = torch.empty_like(entropy)
    logprobs = torch.empty_like(entropy) if tokens is not None else None

    with torch.no_grad():
        for start in range(0, rows.shape[0], chunk_rows):
            z = rows[start : start + chunk_rows].float()
            peak = z.amax(dim=-1, keepdim=True)
            # exp((z - max) / τ) in one fused add and an in-place exp: the one extra buffer.
            weights = torch.add(peak * -inv_tau, z, alpha=inv_tau).exp_()
            total = weights.sum(dim=-1)
            log_norm = peak.squeeze(-1) * inv_tau + total.log()  # L = logsumexp(z/τ)
            expected_z = torch.linalg.vecdot(weights, z) / total * inv_tau  # Σ_j p_j z_j/τ
            end = start + z.shape[0]
            entropy[start:end] = log_norm - expected_z
            certainty[start:end] = log_norm - z.mean(dim=-1) * inv_tau - math.log(vocab)
            if logprobs is not None and flat_tokens is not None:
                picked = z.gather(-1, flat_tokens[start:end, None]).squeeze(-1)
                logprobs[start:end] = picked * inv_tau - log_norm

    shape = (batch, steps)
    return TokenStats(
        entropy=entropy.view(shape),
        self_certainty=certainty.view(shape),
        logprobs=logprobs.view(shape) if logprobs is not None else None,
    )


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
