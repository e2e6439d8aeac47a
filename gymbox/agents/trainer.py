"""One optimiser step of GRPO-family training on a batch of trajectories.

The trainer sees token sequences, loss masks, behaviour log-probs and one advantage per
trajectory; it knows nothing of environments or how the advantages were made (see
:mod:`gymbox.rewards`). An invalid (infra-failed) trajectory arrives with an all-zero loss mask
and advantage 0: it adds no term to the loss and no token to the token-mean denominator, so the
update is exactly the one the batch without it would give.

A step:

1. split the batch into micro-batches of ``micro_batch_size`` (gradient accumulation);
2. for each: forward pass → ``log p(token_t | tokens_<t)`` at the sampling temperature →
   :func:`~gymbox.agents.loss.policy_loss` with the token-mean over the WHOLE step's mask;
3. ``backward`` on each micro-batch (gradients add up), clip the global grad norm, AdamW step.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gymbox.agents.checkpoints import atomic_directory
from gymbox.agents.loss import ClipRange, imitation_loss, policy_loss, token_logprobs_of
from gymbox.agents.policy import Interrupted


@dataclass(frozen=True, slots=True)
class TrainingSample:
    """One trajectory, ready for the loss.

    Attributes:
        token_ids: the whole episode as one sequence: prompt, model turns, env observations.
        loss_mask: 1 where the model generated the token, else 0 (all 0 for an invalid one).
        behaviour_logprobs: the log-prob each token had when it was sampled (0 where mask 0).
        advantage: the trajectory's advantage, broadcast over its model tokens.
    """

    token_ids: Sequence[int]
    loss_mask: Sequence[int]
    behaviour_logprobs: Sequence[float]
    advantage: float

    def __post_init__(self) -> None:
        n = len(self.token_ids)
        if len(self.loss_mask) != n or len(self.behaviour_logprobs) != n:
            raise ValueError(
                f"token_ids ({n}), loss_mask ({len(self.loss_mask)}) and behaviour_logprobs "
                f"({len(self.behaviour_logprobs)}) must have the same length"
            )
        if n and self.loss_mask[0]:
            raise ValueError("the first token has no context and cannot be in the loss")


@dataclass(frozen=True, slots=True)
class TrainerConfig:
    """Optimisation settings.

    Attributes:
        learning_rate: AdamW learning rate.
        weight_decay: AdamW weight decay.
        clip: PPO ratio clip range (asymmetric allowed).
        kl_coef: β of the KL(π‖π_ref) penalty; 0 disables it and the reference model.
        micro_batch_size: trajectories per forward/backward (gradient accumulation).
        max_grad_norm: global gradient-norm clip.
        temperature: the sampling temperature the behaviour log-probs were taken at.
        gradient_checkpointing: recompute each layer's activations in the backward pass
            instead of keeping them (transformers' gradient checkpointing): the activations of
            a micro-batch, the largest part of a step's peak memory, shrink to one layer's, for
            about a third more compute. Generation (eval mode) is unaffected.
    """

    learning_rate: float = 1e-5
    weight_decay: float = 0.0
    clip: ClipRange = field(default_factory=ClipRange)
    kl_coef: float = 0.0
    micro_batch_size: int = 4
    max_grad_norm: float = 1.0
    temperature: float = 1.0
    gradient_checkpointing: bool = False


@dataclass(frozen=True, slots=True)
class StepMetrics:
    """What one optimiser step did."""

    loss: float
    pg_loss: float
    kl: float
    clip_fraction: float
    mean_ratio: float
    grad_norm: float
    tokens: int
    trajectories: int


class PolicyTrainer:
    """Owns the model's optimiser and applies one GRPO-family update per :meth:`step`.

    Example:
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> torch.manual_seed(0) and None
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16,
        ...     intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        ...     num_key_value_heads=2))
        >>> trainer = PolicyTrainer(model, TrainerConfig(learning_rate=1e-3))
        >>> sample = TrainingSample([1, 5, 7], [0, 1, 1], [0.0, -3.4, -3.5], advantage=1.0)
        >>> trainer.step([sample]).tokens
        2
    """

    def __init__(
        self, model: nn.Module, config: TrainerConfig, *, ref_model: nn.Module | None = None
    ) -> None:
        if config.kl_coef > 0 and ref_model is None:
            raise ValueError("kl_coef > 0 needs a frozen ref_model")
        self.model = model
        self.config = config
        self.ref_model = ref_model
        if config.gradient_checkpointing:
            if not hasattr(model, "gradient_checkpointing_enable"):
                raise ValueError("gradient_checkpointing needs a transformers PreTrainedModel")
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        if ref_model is not None:
            ref_model.requires_grad_(False).eval()
        self.optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],
            lr=config.learning_rate,
            weight_decay=config.weight_decay,
        )
        self.steps_done = 0
        self.interrupt: threading.Event | None = None
        """Set it to make a step under way raise :class:`~gymbox.agents.policy.Interrupted`
        before its next micro-batch, its gradients dropped and the weights untouched (how
        Ctrl-C stops a run within a micro-batch's time)."""
        self.weights_lock: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        """Held while the optimiser writes the weights: a generator that samples from the same
        tensors (:meth:`~gymbox.agents.loop.SyncedPolicy.sharing`) holds it for each call, so
        every call sees one version of the weights (:func:`~gymbox.agents.loop.run_loop` sets
        it)."""

    def step(self, samples: Sequence[TrainingSample]) -> StepMetrics:
        """Apply one optimiser step on ``samples``; returns what it did."""
        cfg = self.config
        totals = dict(loss=0.0, pg=0.0, kl=0.0, clipped=0.0, ratio=0.0)

        def micro_loss(batch: _Batch, step_tokens: int) -> torch.Tensor:
            logprobs = _logprobs(self.model, batch, cfg.temperature)
            ref_logprobs = None
            if cfg.kl_coef > 0:
                assert self.ref_model is not None
                with torch.no_grad():
                    ref_logprobs = _logprobs(self.ref_model, batch, cfg.temperature)
            terms = policy_loss(
                logprobs, batch.behaviour_logprobs, batch.advantages, batch.loss_mask,
                clip=cfg.clip, step_tokens=step_tokens,
                ref_logprobs=ref_logprobs, kl_coef=cfg.kl_coef,
            )
            totals["loss"] += terms.loss.item()
            totals["pg"] += terms.pg_sum.item()
            totals["kl"] += terms.kl_sum.item()
            totals["clipped"] += terms.clipped_tokens.item()
            totals["ratio"] += terms.ratio_sum.item()
            return terms.loss

        step_tokens, grad_norm = self._optimise(samples, micro_loss, "a training step")
        self.steps_done += 1
        n = max(step_tokens, 1)
        return StepMetrics(
            loss=totals["loss"],
            pg_loss=totals["pg"] / n,
            kl=totals["kl"] / n,
            clip_fraction=totals["clipped"] / n,
            mean_ratio=totals["ratio"] / n if step_tokens else 1.0,
            grad_norm=grad_norm,
            tokens=step_tokens,
            trajectories=len(samples),
        )

    def imitation_step(self, samples: Sequence[TrainingSample]) -> float:
        """One supervised step on demonstrations: minimise the negative log-likelihood of
        their mask-1 tokens (:func:`~gymbox.agents.loss.imitation_loss`); advantages and
        behaviour log-probs are not used. Returns the loss before the step."""
        total = 0.0

        def micro_loss(batch: _Batch, step_tokens: int) -> torch.Tensor:
            nonlocal total
            loss = imitation_loss(_logprobs(self.model, batch, 1.0), batch.loss_mask,
                                  step_tokens=step_tokens)
            total += loss.item()
            return loss

        self._optimise(samples, micro_loss, "an imitation step")
        return total

    def _optimise(
        self,
        samples: Sequence[TrainingSample],
        micro_loss: Callable[[_Batch, int], torch.Tensor],
        what: str,
    ) -> tuple[int, float]:
        """Gradient accumulation over micro-batches, grad-norm clip, one AdamW step.

        ``micro_loss(batch, step_tokens)`` is one micro-batch's share of the step's loss (its
        token sums divided by ``step_tokens``, the whole step's mask-1 count). Returns
        ``(step_tokens, grad_norm)``; a step without a mask-1 token leaves the weights alone.
        The gradients are freed after the update (an optimiser step pre-hook sees them).
        """
        if not samples:
            raise ValueError(f"{what} needs at least one sample")
        step_tokens = sum(sum(s.loss_mask) for s in samples)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        size = self.config.micro_batch_size
        for start in range(0, len(samples), size):
            if self.interrupt is not None and self.interrupt.is_set():
                self.optimizer.zero_grad(set_to_none=True)
                raise Interrupted(f"{what} stopped before its update: a stop was requested")
            batch = samples[start : start + size]
            if not any(any(s.loss_mask) for s in batch):
                # Nothing in it to learn from, and an episode whose sandbox failed before the
                # model's first turn has no tokens at all: a batch of those cannot be run.
                continue
            micro_loss(_collate(batch), step_tokens).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), self.config.max_grad_norm
        )
        if step_tokens > 0:
            with self.weights_lock:
                self.optimizer.step()
        # The gradients are a copy of the weights' size that nothing reads until the next step
        # makes new ones: freed now, they are not resident through sampling and evaluation.
        self.optimizer.zero_grad(set_to_none=True)
        return step_tokens, float(grad_norm)

    def save_checkpoint(self, directory: str | Path,
                        extra: Mapping[str, str] | None = None,
                        state: Mapping[str, Any] | None = None) -> Path:
        """Write model weights, optimiser state and step count to ``directory``, atomically
        (:func:`~gymbox.agents.checkpoints.atomic_directory`: a complete checkpoint or none,
        whatever kills the process). ``extra`` maps file names to text written with them
        (``gymbox train`` adds the run's config); ``state`` is saved with the weights and
        returned by :meth:`load_checkpoint` (``gymbox train`` adds the reward mix's state)."""
        directory = Path(directory)
        with atomic_directory(directory) as tmp:
            torch.save(
                {
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "steps_done": self.steps_done,
                    "torch_rng": torch.get_rng_state(),
                    "state": dict(state or {}),
                },
                tmp / "trainer.pt",
            )
            (tmp / "trainer_config.json").write_text(
                json.dumps(asdict(self.config), indent=2, default=str)
            )
            for name, text in (extra or {}).items():
                (tmp / name).write_text(text)
        return directory

    def load_checkpoint(self, directory: str | Path) -> dict[str, Any]:
        """Restore what :meth:`save_checkpoint` wrote, so training continues the same curve;
        returns the ``state`` saved with it."""
        path = Path(directory) / "trainer.pt"
        if not path.is_file():
            raise FileNotFoundError(f"no trainer checkpoint at {path}")
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps_done = state["steps_done"]
        torch.set_rng_state(state["torch_rng"])
        return state.get("state", {})


def _logprobs(model: nn.Module, batch: _Batch, temperature: float) -> torch.Tensor:
    """``[B, T]`` log-probs of the tokens at every position where some row's loss mask is 1,
    0 elsewhere (where the loss multiplies them by 0).

    The model's own head (``logits_to_keep``) runs only on the positions that predict those
    tokens: an episode is mostly prompt and env observations, and logits over a 49k vocabulary
    at every position were the largest allocation of a step.
    """
    targets = batch.loss_mask.any(dim=0).nonzero().squeeze(-1)
    if targets.numel() == 0:
        return torch.zeros(batch.token_ids.shape)
    logits = model(input_ids=batch.token_ids, attention_mask=batch.attention_mask,
                   logits_to_keep=targets - 1, use_cache=False).logits  # no KV cache to keep
    kept = token_logprobs_of(logits, batch.token_ids[:, targets], temperature=temperature)
    return torch.zeros(batch.token_ids.shape, dtype=kept.dtype).index_copy(1, targets, kept)


@dataclass(frozen=True, slots=True)
class _Batch:
    token_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    behaviour_logprobs: torch.Tensor
    advantages: torch.Tensor


def _collate(samples: Sequence[TrainingSample]) -> _Batch:
    """Right-pad to the longest sample; padding is outside the attention and the loss."""
    length = max(len(s.token_ids) for s in samples)
    shape = (len(samples), length)
    token_ids = torch.zeros(shape, dtype=torch.long)
    attention = torch.zeros(shape, dtype=torch.long)
    loss_mask = torch.zeros(shape, dtype=torch.float32)
    behaviour = torch.zeros(shape, dtype=torch.float32)
    for row, s in enumerate(samples):
        n = len(s.token_ids)
        token_ids[row, :n] = torch.tensor(s.token_ids, dtype=torch.long)
        attention[row, :n] = 1
        loss_mask[row, :n] = torch.tensor(s.loss_mask, dtype=torch.float32)
        behaviour[row, :n] = torch.tensor(s.behaviour_logprobs, dtype=torch.float32)
    advantages = torch.tensor([s.advantage for s in samples], dtype=torch.float32)
    return _Batch(token_ids, attention, loss_mask, behaviour, advantages)
