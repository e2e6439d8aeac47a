r"""Policies: what samples the agent's tokens, and what it reports about each one.

A :class:`Policy` takes a batch of prompts (token ids — the rollout owns the chat template) and
returns one :class:`Completion` per prompt: the sampled token ids, their text, and three numbers
per sampled token, all from the logits of the ONE forward pass that sampled it:

* ``logprobs`` — the behaviour log-probability ``log p_τ(y_t)`` of the sampled token, where
  ``p_τ = softmax(z_t / τ)`` is the **temperature-scaled** distribution (τ = the sampling
  temperature). Top-p truncation is *not* folded in: the recorded value is the tempered
  full-vocabulary probability, which is exactly what the trainer recomputes with
  :func:`gymbox.agents.loss.token_logprobs` at the same τ, so the on-policy importance ratio is
  exactly 1. (The truncation is a bias the importance ratio does not see; keep ``top_p`` at 1
  for exactly on-policy training.)
* ``entropy`` — ``H(p_τ)`` at that position;
* ``self_certainty`` — ``KL(U ‖ p_τ)`` at that position (Intuitor).

The three come from :func:`gymbox.rewards.tokens.token_stats`, the same function the rewards
layer uses, so a reward computed at sampling time and one recomputed later agree. For greedy
decoding (τ = 0) the sampling distribution is a point mass, which carries no ratio; the three
are then reported at τ = 1, the model's own distribution.

Example:
    >>> policy = TransformersPolicy.load()                                 # doctest: +SKIP
    >>> prompt = policy.tokenizer.apply_chat_template(                     # doctest: +SKIP
    ...     [{"role": "user", "content": "What is 2+2?"}],
    ...     add_generation_prompt=True, return_dict=False)
    >>> [c] = policy.generate([prompt], SamplingParams(max_new_tokens=32, temperature=0))
    ...                                                                    # doctest: +SKIP
    >>> c.text, c.finish_reason, len(c.token_ids) == len(c.logprobs)       # doctest: +SKIP
    ('The answer to this classic math problem is 4.', 'eos', True)
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Integral
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import Tensor
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from gymbox.agents.models import load_model
from gymbox.rewards.tokens import token_stats
from gymbox.runtime.errors import InvalidRequest

FinishReason = Literal["eos", "stop", "length"]
"""Why a completion ended: an end-of-sequence token, a stop string, or ``max_new_tokens``."""


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to sample one batch.

    Attributes:
        max_new_tokens: the most tokens sampled per completion (≥ 1).
        temperature: τ ≥ 0; 0 means greedy (argmax) decoding, for evaluation.
        top_p: nucleus sampling mass in (0, 1]; 1 samples from the whole vocabulary.
        stop: strings that end a completion once its text contains one. The token that
            completes the string is kept (its log-prob is part of the trajectory), so ``text``
            may run a few characters past the stop string, never fewer.
        seed: seeds a private generator, so the same prompts and seed give the same tokens;
            ``None`` draws from torch's global generator.

    Raises:
        InvalidRequest: for a value outside the ranges above.
    """

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise InvalidRequest(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise InvalidRequest(
                f"temperature must be >= 0 (0 = greedy), got {self.temperature}"
            )
        if not 0 < self.top_p <= 1:
            raise InvalidRequest(f"top_p must be in (0, 1], got {self.top_p}")
        if isinstance(self.stop, str) or any(not s for s in self.stop):
            raise InvalidRequest(
                f"stop must be a tuple of non-empty strings, got {self.stop!r}"
            )

    @property
    def stats_temperature(self) -> float:
        """The τ of the distribution the log-probs and token statistics are reported under."""
        return self.temperature if self.temperature > 0 else 1.0


@dataclass(frozen=True, slots=True)
class Completion:
    """One sampled continuation of one prompt.

    ``logprobs``, ``entropy`` and ``self_certainty`` are 1-D float32 CPU tensors aligned with
    ``token_ids`` (see the module docstring for the distribution they are under). ``token_ids``
    includes the end-of-sequence or stop-completing token when there is one; ``text`` is their
    decoding without special tokens.
    """

    token_ids: tuple[int, ...]
    text: str
    logprobs: Tensor
    entropy: Tensor
    self_certainty: Tensor
    finish_reason: FinishReason


@runtime_checkable
class Policy(Protocol):
    """Anything that samples completions for a batch of tokenised prompts.

    Contract: ``generate`` returns exactly one :class:`Completion` per prompt, in order; every
    completion has at least one token; the per-token tensors have the length of ``token_ids``.
    """

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer whose ids ``generate`` takes and returns."""
        ...

    def generate(
        self, prompts: Sequence[Sequence[int]], sampling: SamplingParams
    ) -> list[Completion]:
        """Sample one completion per prompt."""
        ...


class Interrupted(Exception):
    """A stop was requested while the policy was generating (see
    :attr:`TransformersPolicy.interrupt`)."""


class TransformersPolicy:
    """A :class:`Policy` over a transformers causal LM, on CPU or GPU.

    Prompts are left-padded into one batch, encoded once, then extended one token per step
    through the KV cache. A row that finishes (EOS, stop string) leaves the batch and the cache
    at once, so the remaining steps cost only what the unfinished rows need.

    Args:
        model: a causal LM; it is put in eval mode. The trainer may update its weights in place
            between calls: ``generate`` always samples from the current weights.
        tokenizer: its tokenizer. A missing pad token is set to the EOS token.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        self.model = model.eval()
        self.interrupt: threading.Event | None = None
        """Set it to make a ``generate`` under way raise :class:`Interrupted` at its next
        token (how Ctrl-C stops a run within a token's time)."""
        self._tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._eos_ids = _eos_token_ids(model, tokenizer)

    @classmethod
    def load(cls, source: str | os.PathLike[str] | None = None, *,
             cache_dir: str | os.PathLike[str] | None = None,
             dtype: torch.dtype = torch.float32,
             device: str | torch.device = "cpu") -> TransformersPolicy:
        """A policy over :func:`gymbox.agents.models.load_model` (the embedded default model
        when ``source`` is ``None``)."""
        model, tokenizer = load_model(source, cache_dir=cache_dir, dtype=dtype, device=device)
        return cls(model, tokenizer)

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self._tokenizer

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def context_length(self) -> int:
        """The most tokens (prompt + completion) the model can attend over."""
        return int(self.model.config.max_position_embeddings)

    @torch.no_grad()
    def generate(
        self, prompts: Sequence[Sequence[int]], sampling: SamplingParams
    ) -> list[Completion]:
        """Sample one completion per prompt (see the class and module docstrings).

        Raises:
            InvalidRequest: an empty batch, an empty prompt, a token id outside the vocabulary,
                or a prompt too long to leave room for ``max_new_tokens``. Nothing is sampled.
        """
        input_ids, attention = self._left_padded(prompts, sampling.max_new_tokens)
        # The trainer may have left the shared model in train mode; dropout while sampling would
        # make the recorded log-probs those of a random sub-network.
        was_training = self.model.training
        self.model.eval()
        try:
            return self._sample_batch(input_ids, attention, sampling)
        finally:
            self.model.train(was_training)

    def _sample_batch(
        self, input_ids: Tensor, attention: Tensor, sampling: SamplingParams
    ) -> list[Completion]:
        generator = None
        if sampling.seed is not None:
            generator = torch.Generator(self.device).manual_seed(sampling.seed)

        # Positions count real tokens only, so a left-padded prompt is encoded exactly as it
        # would be alone.
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        logits = self.model(
            input_ids=input_ids, attention_mask=attention, position_ids=positions,
            past_key_values=cache, use_cache=True, logits_to_keep=1,
        ).logits[:, -1]
        next_position = positions[:, -1:] + 1

        drafts = [_Draft() for _ in range(len(input_ids))]
        live = list(range(len(input_ids)))  # the prompt index of each row still in the batch
        for _ in range(sampling.max_new_tokens):
            if self.interrupt is not None and self.interrupt.is_set():
                raise Interrupted("generation stopped: a stop was requested")
            token = _sample(logits, sampling, generator)
            stats = token_stats(logits[:, None], token[:, None],
                                temperature=sampling.stats_temperature)
            columns = (token, stats.logprobs[:, 0], stats.entropy[:, 0],
                       stats.self_certainty[:, 0])
            keep = []
            for row, (prompt_index, *values) in enumerate(
                zip(live, *(c.tolist() for c in columns), strict=True)
            ):
                draft = drafts[prompt_index]
                draft.append(*values)
                draft.finish_reason = self._finish_reason(draft.token_ids, sampling.stop)
                if draft.finish_reason is None:
                    keep.append(row)
            if not keep:
                break
            if len(keep) < len(live):
                # Drop finished rows from the batch and the KV cache: they cost a full forward
                # per step otherwise, and RL completions vary a lot in length.
                rows = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(rows)
                attention, token, next_position = attention[rows], token[rows], next_position[rows]
                live = [live[row] for row in keep]
            attention = torch.cat([attention, attention.new_ones(len(live), 1)], dim=-1)
            logits = self.model(
                input_ids=token[:, None], attention_mask=attention, position_ids=next_position,
                past_key_values=cache, use_cache=True,
            ).logits[:, -1]
            next_position = next_position + 1
        return [draft.completion(self._tokenizer) for draft in drafts]

    def _left_padded(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int
    ) -> tuple[Tensor, Tensor]:
        if not prompts:
            raise InvalidRequest("generate needs at least one prompt, got an empty batch")
        vocab = self.model.get_input_embeddings().num_embeddings
        prompts = [_token_ids(i, prompt) for i, prompt in enumerate(prompts)]
        for i, prompt in enumerate(prompts):
            if not prompt:
                raise InvalidRequest(f"prompt {i} is empty; every prompt needs >= 1 token")
            if min(prompt) < 0 or max(prompt) >= vocab:
                raise InvalidRequest(
                    f"prompt {i} holds a token id outside the vocabulary [0, {vocab})"
                )
        longest = max(len(p) for p in prompts)
        if longest + max_new_tokens > self.context_length:
            raise InvalidRequest(
                f"a prompt of {longest} tokens plus max_new_tokens={max_new_tokens} exceeds the "
                f"model's context of {self.context_length} tokens; shorten the prompt or lower "
                "max_new_tokens"
            )
        input_ids = torch.full((len(prompts), longest), self._tokenizer.pad_token_id)
        attention = torch.zeros((len(prompts), longest), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, longest - len(prompt):] = torch.as_tensor(prompt)
            attention[row, longest - len(prompt):] = 1
        return input_ids.to(self.device), attention.to(self.device)

    def _finish_reason(self, token_ids: list[int], stop: tuple[str, ...]) -> FinishReason | None:
        if token_ids[-1] in self._eos_ids:
            return "eos"
        if stop:
            # A stop string found now ends in the newest token, so decoding a short tail
            # suffices; each token adds at least one character except for split UTF-8 bytes.
            window = max(len(s) for s in stop) + 4
            text = self._tokenizer.decode(token_ids[-window:], skip_special_tokens=True)
            if any(s in text for s in stop):
                return "stop"
        return None


@dataclass(slots=True)
class _Draft:
    """A completion being sampled."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)
    self_certainty: list[float] = field(default_factory=list)
    finish_reason: FinishReason | None = None

    def append(self, token_id: int, logprob: float, entropy: float, certainty: float) -> None:
        self.token_ids.append(token_id)
        self.logprobs.append(logprob)
        self.entropy.append(entropy)
        self.self_certainty.append(certainty)

    def completion(self, tokenizer: PreTrainedTokenizerBase) -> Completion:
        return Completion(
            token_ids=tuple(self.token_ids),
            text=tokenizer.decode(self.token_ids, skip_special_tokens=True),
            logprobs=torch.tensor(self.logprobs, dtype=torch.float32),
            entropy=torch.tensor(self.entropy, dtype=torch.float32),
            self_certainty=torch.tensor(self.self_certainty, dtype=torch.float32),
            finish_reason=self.finish_reason or "length",
        )


def _token_ids(index: int, prompt: object) -> list[int]:
    if isinstance(prompt, str | bytes) or not isinstance(prompt, Sequence) or not all(
        isinstance(t, Integral) for t in prompt
    ):
        raise InvalidRequest(
            f"prompt {index} is a {type(prompt).__name__}, not a sequence of int token ids; "
            "tokenise it first (the rollout owns the chat template; with transformers >= 5 call "
            "apply_chat_template(..., return_dict=False))"
        )
    return [int(t) for t in prompt]


def _sample(logits: Tensor, sampling: SamplingParams, generator: torch.Generator | None) -> Tensor:
    """One token per row of ``logits`` ``[B, V]``: argmax at τ = 0, else nucleus sampling from
    ``softmax(logits / τ)``."""
    if sampling.temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1:
        probs = _nucleus(probs, sampling.top_p)
    # argmax(p_j / E_j) with E_j ~ Exp(1) i.i.d. picks j with probability p_j (the "exponential
    # race"); it is one vectorised pass, several times faster than multinomial over a large
    # vocabulary.
    race = torch.empty_like(probs).exponential_(generator=generator)
    return (probs / race).argmax(dim=-1)


def _nucleus(probs: Tensor, top_p: float) -> Tensor:
    """Zero every token outside the smallest set of most likely tokens whose mass reaches
    ``top_p`` (the most likely token always stays). Left unnormalised: sampling does not
    need it."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    sorted_probs[mass_before >= top_p] = 0.0
    return torch.zeros_like(probs).scatter_(-1, order, sorted_probs)


def _eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    ids: set[int] = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)
