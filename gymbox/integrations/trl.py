"""gymbox tool environments inside TRL's ``GRPOTrainer`` (trl >= 1.16), infra masking intact.

:class:`GymboxRollout` is a ``rollout_func``: TRL hands it a batch of prompts (each already
repeated ``num_generations`` times by TRL's sampler) and it plays each one as a gymbox episode,
multi-turn, with the trainer's current model: the env's sandboxes come from one warm
:class:`~gymbox.runtime.SandboxPool` behind :class:`~gymbox.runtime.recovery.RecoveringSandboxes`
(journal replay after an infrastructure failure, attribution of failures the agent caused) and
an :class:`~gymbox.runtime.breaker.InfraCircuitBreaker`, exactly as under ``gymbox train``.

What TRL gets back for each episode:

* ``prompt_ids`` / ``completion_ids``: the episode as one token sequence, split after the
  prompt; the env's replies between model turns are in the completion, and ``env_mask`` (TRL's
  name) marks them 0 so TRL's loss skips them.
* the reward, through :attr:`GymboxRollout.reward_func`: the env's own score, or ``None`` for an
  episode the infrastructure broke (``infra_failed``, an invalid
  :class:`~gymbox.rewards.RewardRecord`). TRL 1.16 turns ``None`` into NaN; a completion that
  every reward function left NaN is *unscorable*: it is left out of its group's mean and std
  (``nanmean``/``nanstd``) and of the logged reward statistics, and its advantage is forced to 0.
  gymbox also sets its ``env_mask`` to 0 throughout, so none of its tokens reach the loss (nor
  its token count, nor a KL term). It is never scored 0.

Other reward functions must keep that contract: a number for an infra-failed episode would make
it scorable again. Wrap them with :func:`mask_invalid`.

Example (see docs/integrations.md for a full run)::

    from trl import GRPOConfig, GRPOTrainer
    from gymbox.integrations.trl import GymboxRollout

    with GymboxRollout("gymbox/PythonCalc-v0", max_turns=3, temperature=1.0) as rollout:
        trainer = GRPOTrainer(
            model="path/to/model", args=GRPOConfig(temperature=1.0, num_generations=4, ...),
            train_dataset=rollout.dataset(64), reward_funcs=[rollout.reward_func],
            rollout_func=rollout,
        )
        trainer.train()
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from gymnasium.utils import seeding

from gymbox.agents.policy import SamplingParams, TransformersPolicy
from gymbox.agents.rollout import TURN_STOPS, Budget, Trajectory, rollout
from gymbox.agents.run_config import TrainConfig
from gymbox.agents.supply import make_env_factory
from gymbox.envs.core import ToolEnv, _LoopThread
from gymbox.runtime.backend import Backend
from gymbox.runtime.breaker import InfraCircuitBreaker
from gymbox.runtime.errors import ConfigurationError
from gymbox.runtime.pool import SandboxPool
from gymbox.runtime.recovery import RecoveringSandboxes, RecoveryPolicy
from gymbox.runtime.spec import SandboxSpec

if TYPE_CHECKING:
    from datasets import Dataset

REWARD_FIELD = "gymbox_reward"
"""The per-completion field (from the rollout to the reward functions): the env's reward, or
None for an infra-failed episode."""
STATUS_FIELD = "gymbox_status"
"""The per-completion field holding the episode's status (``completed``, ``truncated``,
``infra_failed``); set by gymbox from what the runtime observed, never by the agent's text."""
INFRA_ERROR_FIELD = "gymbox_infra_error"
"""The per-completion field holding the kind of infrastructure failure, or None."""

RewardFunc = Callable[..., list[float | None]]


class GymboxRollout:
    """A TRL ``rollout_func`` that plays each prompt as an episode of a gymbox env.

    Use it as ``rollout_func=rollout`` together with ``reward_funcs=[rollout.reward_func]``
    and ``train_dataset=rollout.dataset(n)``; close it (or use ``with``) after training to
    remove its sandboxes. The trainer's ``GRPOConfig.temperature`` must equal ``temperature``:
    TRL recomputes the log-probs at its own temperature.

    Args:
        env: a registered env id, e.g. ``"gymbox/PythonCalc-v0"`` or ``"module:Env-v0"``.
        env_kwargs: the env's constructor arguments.
        reset_options: the env's reset options for every task (e.g. ``{"operations": 1}``).
        max_turns: model turns per episode.
        max_tokens: the longest episode, prompt and env replies included, in tokens.
        max_new_tokens: the most tokens sampled per turn.
        temperature: sampling temperature (> 0).
        top_p: nucleus mass; keep 1.0 for exactly on-policy log-probs.
        pool_size: warm sandboxes kept ready (sandboxed envs only).
        sandbox_spec: the sandboxes' spec; the default :class:`SandboxSpec` when None.
        backend: where sandboxes run (a :class:`~gymbox.runtime.faults.FaultInjector` to
            fault-test); the default backend when None.
        recovery: how hard recovery tries; :class:`RecoveryPolicy` defaults when None.
        breaker: the circuit breaker on the infra-failure rate; a default
            :class:`InfraCircuitBreaker` when None. When it trips, the rollout raises
            :class:`~gymbox.runtime.breaker.InfraFailureRateExceeded` and training stops.
        max_concurrent_episodes: episodes played at once (a batch is played in chunks of this
            size); None plays the whole batch at once.

    Raises:
        ConfigurationError: ``env`` is not registered, or is not a gymbox ``ToolEnv``.
        ValueError: ``pool_size`` or ``max_concurrent_episodes`` below 1.
        InvalidRequest: a sampling or budget value out of range.
    """

    def __init__(
        self,
        env: str,
        *,
        env_kwargs: Mapping[str, Any] | None = None,
        reset_options: Mapping[str, Any] | None = None,
        max_turns: int = 3,
        max_tokens: int = 1024,
        max_new_tokens: int = 96,
        temperature: float = 1.0,
        top_p: float = 1.0,
        pool_size: int = 8,
        sandbox_spec: SandboxSpec | None = None,
        backend: Backend | None = None,
        recovery: RecoveryPolicy | None = None,
        breaker: InfraCircuitBreaker | None = None,
        max_concurrent_episodes: int | None = None,
    ) -> None:
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, got {pool_size}")
        if max_concurrent_episodes is not None and max_concurrent_episodes < 1:
            raise ValueError("max_concurrent_episodes must be at least 1 or None, "
                             f"got {max_concurrent_episodes}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 for RL sampling, got {temperature}")
        self.env_id = env
        self._make = make_env_factory(TrainConfig(env=env, env_kwargs=dict(env_kwargs or {})))
        self.reset_options = dict(reset_options or {})
        self.sampling = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature,
                                       top_p=top_p, stop=TURN_STOPS)
        self.budget = Budget(max_tokens=max_tokens, max_turns=max_turns)
        self.pool_size = pool_size
        self.sandbox_spec = sandbox_spec
        self.backend = backend
        self.recovery = recovery
        self.breaker = breaker if breaker is not None else InfraCircuitBreaker()
        self.max_concurrent_episodes = max_concurrent_episodes
        self.statuses: Counter[str] = Counter()
        """Episodes played so far, by status."""
        self._seeds: dict[str, int] = {}
        self._envs: list[ToolEnv] = []
        self._loop: _LoopThread | None = None
        self._pool: SandboxPool | None = None
        self._sandboxes: RecoveringSandboxes | None = None
        probe = self._make()
        self.needs_sandbox = probe.needs_sandbox
        probe.close()
        self.reward_func = self._reward_func()
        """The reward function to pass to ``GRPOTrainer(reward_funcs=[...])``."""

    # -- the dataset ----------------------------------------------------------------------------

    def dataset(self, size: int, *, first_seed: int = 0) -> Dataset:
        """``size`` tasks (seeds ``first_seed`` ...) as a TRL dataset: a conversational
        ``prompt`` column (the task's user message) and ``task_id``. Drawing a task starts no
        sandbox. The rollout plays a prompt from here as the task it was drawn as; a prompt
        it has never seen raises :class:`ConfigurationError`."""
        from datasets import Dataset

        env = self._make()
        rows = []
        try:
            for seed in range(first_seed, first_seed + size):
                rng, _ = seeding.np_random(seed)  # what gymnasium's reset(seed=) seeds
                task = env.draw_task(rng, **self.reset_options)
                self._seeds.setdefault(task.prompt, seed)
                rows.append({"prompt": [{"role": "user", "content": task.prompt}],
                             "task_id": task.id})
        finally:
            env.close()
        return Dataset.from_list(rows)

    # -- the rollout ----------------------------------------------------------------------------

    def __call__(self, prompts: Sequence[Any], trainer: Any) -> dict[str, list[Any]]:
        """Play one episode per prompt with ``trainer``'s current model (TRL calls this)."""
        args = trainer.args
        if getattr(args, "use_vllm", False):
            raise ConfigurationError(
                "GymboxRollout samples with the trainer's own model; set use_vllm=False")
        if not math.isclose(args.temperature, self.sampling.temperature):
            raise ConfigurationError(
                f"GRPOConfig.temperature is {args.temperature} but the rollout samples at "
                f"{self.sampling.temperature}; make them equal, or TRL's log-probs and the "
                "sampled ones are of different distributions")
        seeds = [self._seed_of(prompt) for prompt in prompts]
        model = trainer.accelerator.unwrap_model(trainer.model)
        tokenizer = trainer.processing_class
        was_training = model.training
        policy = TransformersPolicy(model, tokenizer)
        model.train(was_training)
        trajectories = self._run(self._play(policy, seeds))
        self.statuses.update(t.status for t in trajectories)
        out: dict[str, list[Any]] = {"prompt_ids": [], "completion_ids": [], "logprobs": [],
                                     "env_mask": [], REWARD_FIELD: [], STATUS_FIELD: [],
                                     INFRA_ERROR_FIELD: []}
        for t, prompt in zip(trajectories, prompts, strict=True):
            prompt_ids, completion_ids, mask, logprobs = _row(t, _prompt_text(prompt), tokenizer)
            out["prompt_ids"].append(prompt_ids)
            out["completion_ids"].append(completion_ids)
            out["env_mask"].append(mask)
            out["logprobs"].append(logprobs)
            out[REWARD_FIELD].append(float(t.reward.value) if t.valid else None)
            out[STATUS_FIELD].append(t.status)
            out[INFRA_ERROR_FIELD].append(t.info.get("infra_error"))
        return out

    def recovery_metrics(self) -> dict[str, float]:
        """What recovery did so far (recovered, masked, agent-caused, by kind)."""
        return self._sandboxes.metrics.as_dict() if self._sandboxes is not None else {}

    def close(self) -> None:
        """Release the envs and remove the sandboxes. Safe to call twice."""
        if self._loop is None:
            return
        self._loop.run(self._close())
        self._loop.stop()
        self._loop = None

    def __enter__(self) -> GymboxRollout:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------

    def _reward_func(self) -> RewardFunc:
        rollout_ = self

        def gymbox(completions: list[Any], gymbox_reward: list[float | None],
                   gymbox_status: list[str], log_metric: Callable[[str, float], None] | None = None,
                   **_: Any) -> list[float | None]:
            """The env's reward; None (unscorable) for an infra-failed episode."""
            if log_metric is not None:
                failed = sum(s == "infra_failed" for s in gymbox_status)
                log_metric("gymbox/infra_failed", float(failed))
                log_metric("gymbox/valid_fraction", 1 - failed / max(len(gymbox_status), 1))
                for name, value in rollout_.recovery_metrics().items():
                    log_metric(f"gymbox/{name}", value)
            return list(gymbox_reward)

        return gymbox

    def _seed_of(self, prompt: Any) -> int:
        text = _prompt_text(prompt)
        seed = self._seeds.get(text)
        if seed is None:
            raise ConfigurationError(
                f"the prompt {text[:80]!r} is not a task of this rollout; build the training "
                "dataset with GymboxRollout.dataset(), which records the task behind each prompt")
        return seed

    def _run(self, coroutine: Any) -> Any:
        if self._loop is None:
            self._loop = _LoopThread()
        return self._loop.run(coroutine)

    async def _play(self, policy: TransformersPolicy, seeds: list[int]) -> list[Trajectory]:
        if self.needs_sandbox and self._sandboxes is None:
            self._pool = SandboxPool(self.sandbox_spec, size=self.pool_size, backend=self.backend)
            await self._pool.start()
            self._sandboxes = RecoveringSandboxes(self._pool, self.recovery, breaker=self.breaker)
        while len(self._envs) < len(seeds):
            extra = {"sandboxes": self._sandboxes} if self._sandboxes is not None else {}
            self._envs.append(self._make(**extra))
        chunk = self.max_concurrent_episodes or len(seeds)
        trajectories: list[Trajectory] = []
        for start in range(0, len(seeds), chunk):
            part = seeds[start:start + chunk]
            trajectories += await rollout(policy, self._envs[:len(part)], seeds=part,
                                          sampling=self.sampling, budget=self.budget,
                                          options=self.reset_options)
        return trajectories

    async def _close(self) -> None:
        envs, self._envs = self._envs, []
        await asyncio.gather(*(env.aclose() for env in envs), return_exceptions=True)
        pool, self._pool, self._sandboxes = self._pool, None, None
        if pool is not None:
            await pool.close()


def mask_invalid(func: RewardFunc) -> RewardFunc:
    """``func`` as a TRL reward function that returns None for every infra-failed episode of a
    :class:`GymboxRollout`, so the episode stays unscorable whatever ``func`` would say.

    Example:
        >>> def length(completions, **kwargs):
        ...     return [float(len(c)) for c in completions]
        >>> masked = mask_invalid(length)
        >>> masked(["ab", "abc"], gymbox_status=["completed", "infra_failed"])
        [2.0, None]
    """
    def masked(*args: Any, **kwargs: Any) -> list[float | None]:
        values = func(*args, **kwargs)
        statuses = kwargs[STATUS_FIELD]
        return [None if s == "infra_failed" else v for v, s in zip(values, statuses, strict=True)]

    masked.__name__ = getattr(func, "__name__", "reward")
    return masked


def _prompt_text(prompt: Any) -> str:
    """The user message of a conversational prompt, or a plain-text prompt itself."""
    if isinstance(prompt, str):
        return prompt
    return str(prompt[-1]["content"])


def _row(t: Trajectory, prompt: str, tokenizer: Any
         ) -> tuple[list[int], list[int], list[int], list[float]]:
    """One episode as TRL's ``prompt_ids``, ``completion_ids``, ``env_mask``, ``logprobs``."""
    if t.turns == 0:
        # The model never acted (no sandbox could be prepared): TRL needs a non-empty
        # completion, so it gets one EOS that nothing trains on.
        return tokenizer.encode(prompt), [tokenizer.eos_token_id], [0], [0.0]
    cut = t.prompt_length
    mask = list(t.loss_mask[cut:]) if t.valid else [0] * (len(t.token_ids) - cut)
    return list(t.token_ids[:cut]), list(t.token_ids[cut:]), mask, t.logprobs[cut:].tolist()
