"""The cold start before RL: imitate an env's scripted expert for a few supervised steps.

A step::

    demonstrate(tokenizer, envs, seeds)        the expert plays each episode; its turns are
                                               tokenised into the same sequence + loss mask a
                                               sampled rollout has (gymbox.agents.rollout)
    keep the episodes the env scored 1.0       (a failed demonstration teaches nothing good)
    trainer.imitation_step(samples)            NLL of the expert's tokens, token-mean

Example:
    >>> import asyncio
    >>> from gymbox.agents.policy import TransformersPolicy
    >>> from gymbox.agents.trainer import PolicyTrainer, TrainerConfig
    >>> from gymbox.envs.builtin.python_calc import PythonCalc
    >>> policy = TransformersPolicy.load()                                    # doctest: +SKIP
    >>> trainer = PolicyTrainer(policy.model, TrainerConfig(learning_rate=1e-4))  # doctest: +SKIP
    >>> losses = asyncio.run(imitate_expert(                                  # doctest: +SKIP
    ...     trainer, policy.tokenizer, PythonCalc, steps=4, episodes_per_step=8, first_seed=0,
    ...     budget=Budget(max_tokens=1024, max_turns=2)))
    >>> losses[-1] < losses[0]                                                # doctest: +SKIP
    True
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from transformers import PreTrainedTokenizerBase

from gymbox.agents.rollout import Budget, Trajectory, demonstrate
from gymbox.agents.trainer import PolicyTrainer, TrainingSample
from gymbox.envs.core import ToolEnv
from gymbox.runtime.errors import ConfigurationError


class NoDemonstrations(ConfigurationError):
    """Not one demonstration of a warm-up step was scored 1.0: the expert cannot solve the
    env's tasks (or every sandbox failed), so there is nothing to imitate."""


async def imitate_expert(
    trainer: PolicyTrainer,
    tokenizer: PreTrainedTokenizerBase,
    make_env: Callable[[], ToolEnv],
    *,
    steps: int,
    episodes_per_step: int,
    first_seed: int,
    budget: Budget,
    on_step: Callable[[int, float], None] = lambda step, nll: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> list[float]:
    """Run ``steps`` imitation steps, each on ``episodes_per_step`` fresh demonstrations (task
    seeds ``first_seed``, ``first_seed + 1``, ...); returns each step's NLL before its update.
    ``should_stop`` is asked before each step: a stop ends the warm-up early.

    Raises:
        NotImplementedError: the env has no scripted expert.
        NoDemonstrations: a step had no successful demonstration.
    """
    envs = [make_env() for _ in range(episodes_per_step)]
    losses: list[float] = []
    try:
        for step in range(steps):
            if should_stop():
                break
            seeds = [first_seed + step * episodes_per_step + i for i in range(episodes_per_step)]
            played = await demonstrate(tokenizer, envs, seeds=seeds, budget=budget)
            samples = [_sample(t) for t in played if t.valid and t.reward.value >= 1.0]
            if not samples:
                statuses = sorted({t.status for t in played})
                raise NoDemonstrations(
                    f"warm-up step {step}: none of {len(played)} demonstrations was scored 1.0 "
                    f"(statuses: {', '.join(statuses)}); check the env's demonstrate() and the "
                    "rollout budget, or set warmup.sft_steps = 0"
                )
            losses.append(await asyncio.to_thread(trainer.imitation_step, samples))
            on_step(step, losses[-1])
    finally:
        for env in envs:
            await env.aclose()
    return losses


def _sample(trajectory: Trajectory) -> TrainingSample:
    return TrainingSample(trajectory.token_ids, trajectory.loss_mask,
                          trajectory.logprobs.tolist(), advantage=0.0)
