"""The GRPO-family policy-gradient loss, readable top to bottom.

For every model token t of trajectory i, with behaviour log-prob ``b_t`` (recorded when the
token was sampled), current log-prob ``l_t`` and the trajectory's advantage ``A_i``:

    ratio_t  = exp(l_t - b_t)                                   importance ratio (PPO)
    pg_t     = -min(ratio_t · A_i, clip(ratio_t, 1 - ε_low, 1 + ε_high) · A_i)
    kl_t     = exp(r_t - l_t) - (r_t - l_t) - 1                 k3 estimator of KL(π‖π_ref),
                                                                r_t the reference log-prob
    loss     = Σ_{i,t} m_it · (pg_t + β · kl_t) / N_tokens      token-mean (DAPO, 2503.14476)

``m_it`` is the loss mask: 1 on tokens the model generated, 0 on the prompt, on the env's
observations, on padding, and on every token of an invalid (infra-failed) trajectory. The
separate ``ε_low`` / ``ε_high`` are DAPO's asymmetric clip ("clip-higher"). ``N_tokens`` is the
number of mask-1 tokens in the whole optimiser step, not in one micro-batch, so gradient
accumulation gives the same update as one big batch.

The warm-up before RL (cold start, as in DeepSeek-R1, 2501.12948) imitates demonstrations with
the negative log-likelihood of the same masked tokens:

    nll      = -Σ_{i,t} m_it · l_t / N_tokens
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class ClipRange:
    """PPO ratio clipping, ``[1 - low, 1 + high]``. ``high > low`` is DAPO's clip-higher.

    Attributes:
        low: ε_low, how far below 1 the ratio is clipped.
        high: ε_high, how far above 1 the ratio is clipped.
    """

    low: float = 0.2
    high: float = 0.28

    def __post_init__(self) -> None:
        if not (0 <= self.low < 1 and self.high >= 0):
            raise ValueError(f"clip range needs 0 <= low < 1 and high >= 0, got {self}")


@dataclass(frozen=True, slots=True)
class LossTerms:
    """The loss of one micro-batch and what it is made of (sums, to be divided by the step's
    token count, so that micro-batches add up exactly)."""

    loss: torch.Tensor
    pg_sum: torch.Tensor
    kl_sum: torch.Tensor
    clipped_tokens: torch.Tensor
    ratio_sum: torch.Tensor


def token_logprobs(
    logits: torch.Tensor, token_ids: torch.Tensor, *, temperature: float = 1.0
) -> torch.Tensor:
    """Log-prob of each next token under ``softmax(logits / temperature)``.

    Args:
        logits: ``[B, T, V]`` from a forward pass over ``token_ids``.
        token_ids: ``[B, T]``.
    Returns:
        ``[B, T]`` where position ``t`` holds ``log p(token_t | tokens_<t)``; position 0 (no
        context) is 0.
    """
    return torch.nn.functional.pad(
        token_logprobs_of(logits[:, :-1], token_ids[:, 1:], temperature=temperature), (1, 0))


def token_logprobs_of(
    logits: torch.Tensor, targets: torch.Tensor, *, temperature: float = 1.0
) -> torch.Tensor:
    """Log-prob of ``targets`` under ``softmax(logits / temperature)``, position by position.

    Args:
        logits: ``[B, K, V]``, the logits that predict each target.
        targets: ``[B, K]`` token ids.
    Returns:
        ``[B, K]``.

    Example:
        >>> logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25]]]))
        >>> round(float(token_logprobs_of(logits, torch.tensor([[1]])).exp()), 3)
        0.25
    """
    scaled = logits.float()
    if temperature != 1.0:
        scaled = scaled / temperature
    picked = scaled.gather(-1, targets[..., None]).squeeze(-1)
    return picked - torch.logsumexp(scaled, dim=-1)


def policy_loss(
    logprobs: torch.Tensor,
    behaviour_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    clip: ClipRange,
    step_tokens: int,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> LossTerms:
    """The clipped policy-gradient loss of one micro-batch (see the module docstring).

    Args:
        logprobs: ``[B, T]`` current log-probs of the tokens (with grad).
        behaviour_logprobs: ``[B, T]`` log-probs recorded at sampling time.
        advantages: ``[B]`` one advantage per trajectory, broadcast over its tokens.
        loss_mask: ``[B, T]`` 1 on model tokens of valid trajectories, else 0.
        clip: the ratio clip range.
        step_tokens: mask-1 tokens in the whole optimiser step (the token-mean denominator).
        ref_logprobs: ``[B, T]`` reference-model log-probs, when ``kl_coef > 0``.
        kl_coef: β, the weight of the KL penalty.
    """
    mask = loss_mask.to(logprobs.dtype)
    log_ratio = (logprobs - behaviour_logprobs) * mask
    ratio = torch.exp(log_ratio)
    adv = advantages[:, None].to(logprobs.dtype)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - clip.low, 1 + clip.high) * adv
    pg = -torch.minimum(unclipped, clipped)
    denominator = max(step_tokens, 1)
    pg_sum = (pg * mask).sum()
    if kl_coef > 0:
        if ref_logprobs is None:
            raise ValueError("kl_coef > 0 needs ref_logprobs")
        delta = (ref_logprobs - logprobs) * mask
        kl_sum = ((torch.exp(delta) - delta - 1) * mask).sum()
    else:
        kl_sum = torch.zeros((), dtype=logprobs.dtype)
    with torch.no_grad():
        clipped_tokens = ((clipped != unclipped).to(mask.dtype) * mask).sum()
        ratio_sum = (ratio * mask).sum()
    return LossTerms(
        loss=(pg_sum + kl_coef * kl_sum) / denominator,
        pg_sum=pg_sum.detach(),
        kl_sum=kl_sum.detach(),
        clipped_tokens=clipped_tokens,
        ratio_sum=ratio_sum,
    )


def imitation_loss(
    logprobs: torch.Tensor, loss_mask: torch.Tensor, *, step_tokens: int
) -> torch.Tensor:
    """The token-mean negative log-likelihood of the mask-1 tokens of one micro-batch, divided
    by the whole step's mask-1 token count (see the module docstring).

    Example:
        >>> logprobs = torch.log(torch.tensor([[1.0, 0.5, 0.25]]))
        >>> float(imitation_loss(logprobs, torch.tensor([[0, 1, 1]]), step_tokens=2))
        1.0397207736968994
    """
    mask = loss_mask.to(logprobs.dtype)
    return -(logprobs * mask).sum() / max(step_tokens, 1)
