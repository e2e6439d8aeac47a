"""The actor-learner loop: rollout workers feed groups to the trainer, with bounded staleness.

::

    workers (asyncio tasks)                          learner
    ───────────────────────                          ───────
    gate.reserve() → version v, group index g        take groups_per_step groups from the queue
    rollout(generator, group_size envs, seed_g)      drop any older than max_staleness versions
    queue.put(Group(v, g, trajectories))  ───────▶   advantages (masked), trainer.step
                                                     new weights → generator (copied, or written
                                                     in place under its lock), version += 1,
                                                     gate.advance()

A worker may start group ``g`` only while ``g < (version + max_staleness + 1) · groups_per_step``:
the group will then be consumed at most ``max_staleness`` optimiser steps after the version it
samples with. With ``max_staleness = 0`` the workers sample exactly one step's groups with the
current weights and wait for the update: synchronous on-policy GRPO. With more, sampling of the
next steps overlaps the update and the env waits, and the importance ratio in the loss corrects
for the policy having moved (the recorded behaviour log-probs are the denominator).

Everything random is derived from the group index (task seed, sampling seed), and the learner
orders each step's groups by index, so a run is reproducible whatever order workers finish in.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

import torch
from transformers import PreTrainedTokenizerBase

from gymbox.agents.groups import GroupFailurePolicy, Rerun
from gymbox.agents.policy import Completion, SamplingParams, TransformersPolicy
from gymbox.agents.rollout import Budget, Trajectory, rollout
from gymbox.agents.trainer import PolicyTrainer, StepMetrics, TrainingSample
from gymbox.envs.core import ToolEnv
from gymbox.rewards.advantages import Advantages


@dataclass(frozen=True, slots=True)
class Group:
    """``group_size`` episodes of one task, sampled with policy ``version``, after the
    group-failure policy (:mod:`gymbox.agents.groups`) settled its failed members.

    Attributes:
        index: the group's index in the run (its task seed derives from it).
        version: the policy version (optimiser steps done) it was sampled with.
        seed: the task seed.
        trajectories: the members.
        reruns: failed members re-played by the policy.
        replaced: failed members a re-run replaced by a valid episode.
        dropped: the policy left the whole group out of the step.
    """

    index: int
    version: int
    seed: int
    trajectories: list[Trajectory]
    reruns: int = 0
    replaced: int = 0
    dropped: bool = False


@dataclass(frozen=True, slots=True)
class LoopConfig:
    """Shape of the loop.

    Attributes:
        steps: optimiser steps to run.
        groups_per_step: GRPO groups (tasks) per optimiser step.
        group_size: episodes per group (same task, different samples).
        max_staleness: how many optimiser steps old a group may be when it is used.
        rollout_workers: concurrent group rollouts.
        seed: the run's seed; group ``g`` draws task ``seed·1_000_003 + g``.
    """

    steps: int = 10
    groups_per_step: int = 2
    group_size: int = 8
    max_staleness: int = 0
    rollout_workers: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.steps, self.groups_per_step, self.group_size, self.rollout_workers) < 1:
            raise ValueError("steps, groups_per_step, group_size and rollout_workers must be >= 1")
        if self.max_staleness < 0:
            raise ValueError("max_staleness must be >= 0")

    def task_seed(self, group_index: int) -> int:
        return self.seed * 1_000_003 + group_index


@dataclass(frozen=True, slots=True)
class StepReport:
    """What the learner did at one step, for metrics."""

    step: int
    groups: list[Group]
    advantages: Advantages
    update: StepMetrics
    stale_groups_dropped: int
    wall_s: float
    generator_idle_s: float


Scorer = Callable[[Sequence[Group], int], Advantages]
"""Turns one step's groups into masked advantages (flat, in group-index then episode order);
:meth:`gymbox.rewards.mix.RewardMix.score` gives a :class:`MixedAdvantages`, which is one."""

RERUN_SEED_STRIDE = 10_000_019
"""A re-run of a failed episode samples with the group's seed + this × (attempt + 1)."""


class StalenessGate:
    """Admits group ``g`` once ``g < (version + max_staleness + 1) · groups_per_step``."""

    def __init__(self, groups_per_step: int, max_staleness: int, *, first_step: int = 0) -> None:
        self.groups_per_step = groups_per_step
        self.max_staleness = max_staleness
        self.version = first_step
        self._next_group = first_step * groups_per_step
        self._changed = asyncio.Condition()

    async def reserve(self) -> tuple[int, int]:
        """Wait for a slot; returns ``(group_index, version)``."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: self._next_group
                < (self.version + self.max_staleness + 1) * self.groups_per_step
            )
            index = self._next_group
            self._next_group += 1
            return index, self.version

    async def advance(self) -> None:
        async with self._changed:
            self.version += 1
            self._changed.notify_all()


class SyncedPolicy:
    """The policy the workers sample from, and the learner's way to update it between batches.

    It wraps one of three things:

    * the trainer's own model (synchronous training: sampling and updating never overlap);
    * a :meth:`sharing` view: a module of its own over the trainer's parameter tensors, for
      asynchronous training without a second copy of the weights. The trainer writes them in
      place under :attr:`lock` (:attr:`PolicyTrainer.weights_lock`), so an update lands between
      two ``generate`` calls, never inside one, exactly where :meth:`load_weights` would have
      copied it in;
    * a copy of the weights (asynchronous, or another engine's, as vLLM's): new weights are
      copied in by :meth:`load_weights` after each step.

    The lock makes each ``generate`` call see one version of the weights. It also times
    generation, so the loop can report how long the generator sat idle.
    """

    def __init__(self, policy: TransformersPolicy) -> None:
        self.policy = policy
        self._lock = threading.Lock()
        self.busy_s = 0.0

    @classmethod
    def sharing(cls, learner: TransformersPolicy) -> SyncedPolicy:
        """A generator over ``learner``'s parameter tensors (no copy of the weights), through a
        module of its own: it stays in eval mode while the trainer runs the learner's module in
        train mode (gradient checkpointing on), and neither flips the other's."""
        return cls(TransformersPolicy(shared_parameters_view(learner.model), learner.tokenizer))

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.policy.tokenizer

    @property
    def lock(self) -> threading.Lock:
        """Held for each ``generate`` call and each weight copy; whoever writes shared weights
        in place holds it too."""
        return self._lock

    def generate(
        self, prompts: Sequence[Sequence[int]], sampling: SamplingParams
    ) -> list[Completion]:
        with self._lock:
            start = time.perf_counter()
            try:
                return self.policy.generate(prompts, sampling)
            finally:
                self.busy_s += time.perf_counter() - start

    def shares_weights_with(self, model: torch.nn.Module) -> bool:
        """Whether the generator samples from ``model``'s parameter tensors themselves."""
        ours = getattr(self.policy, "model", None)
        if ours is model:
            return True
        if not isinstance(ours, torch.nn.Module):
            return False
        theirs = {id(p) for p in model.parameters()}
        return all(id(p) in theirs for p in ours.parameters())

    def samples_through(self, model: torch.nn.Module) -> bool:
        """Whether the generator runs ``model`` itself (not a module of its own)."""
        return getattr(self.policy, "model", None) is model

    def load_weights(self, source: torch.nn.Module) -> None:
        if self.shares_weights_with(source):
            return
        with self._lock, torch.no_grad():
            for target, value in zip(
                self.policy.model.parameters(), source.parameters(), strict=True
            ):
                target.copy_(value)


def shared_parameters_view(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model``'s modules whose parameters are ``model``'s own tensors (tied ones
    stay tied): no weight bytes of its own, its own train/eval flags and hooks. Buffers are
    copied (SmolLM2's are a few KiB of rotary frequencies)."""
    return copy.deepcopy(model, memo={id(p): p for p in model.parameters()})


async def run_loop(
    *,
    generator: SyncedPolicy,
    trainer: PolicyTrainer,
    make_env: Callable[[], ToolEnv],
    score: Scorer,
    config: LoopConfig,
    sampling: SamplingParams,
    budget: Budget,
    on_step: Callable[[StepReport], Awaitable[None] | None] = lambda _: None,
    should_stop: Callable[[], bool] = lambda: False,
    first_step: int = 0,
    group_failures: GroupFailurePolicy | None = None,
) -> int:
    """Run ``config.steps`` optimiser steps; returns the number of steps done.

    ``generator`` samples the episodes. With ``max_staleness > 0`` sampling and updating
    overlap, so it must not run the trainer's own module: it holds a copy of the weights, or
    shares the tensors through a module of its own (:meth:`SyncedPolicy.sharing`); when it
    shares them, the trainer is given the generator's lock to write them under
    (:attr:`PolicyTrainer.weights_lock`). ``on_step`` may be a coroutine
    function (evaluations run in it). ``group_failures`` settles a group
    whose members the infrastructure broke (default :class:`~gymbox.agents.groups.Rerun`).
    ``should_stop`` is polled between steps and while the learner waits for groups.
    """
    policy = group_failures if group_failures is not None else Rerun()
    if config.max_staleness > 0 and generator.samples_through(trainer.model):
        raise ValueError("max_staleness > 0 needs the generator to sample from a weight copy "
                         "or through a module of its own (SyncedPolicy.sharing)")
    if generator.shares_weights_with(trainer.model):
        trainer.weights_lock = generator.lock  # updates land between generate calls
    gate = StalenessGate(config.groups_per_step, config.max_staleness, first_step=first_step)
    queue: asyncio.Queue[Group] = asyncio.Queue()
    envs_per_worker = [[make_env() for _ in range(config.group_size)]
                       for _ in range(config.rollout_workers)]

    async def worker(envs: list[ToolEnv]) -> None:
        while True:
            index, version = await gate.reserve()
            seed = config.task_seed(index)
            group_sampling = replace(sampling, seed=seed) if sampling.seed is not None else sampling
            trajectories = await rollout(
                generator, envs, seeds=[seed] * len(envs), sampling=group_sampling, budget=budget
            )

            async def rerun(count: int, attempt: int, seed: int = seed,
                            group_sampling: SamplingParams = group_sampling) -> list[Trajectory]:
                fresh_sampling = group_sampling
                if group_sampling.seed is not None:
                    offset = RERUN_SEED_STRIDE * (attempt + 1)
                    fresh_sampling = replace(group_sampling, seed=group_sampling.seed + offset)
                fresh = [make_env() for _ in range(count)]
                try:
                    return await rollout(generator, fresh, seeds=[seed] * count,
                                         sampling=fresh_sampling, budget=budget)
                finally:
                    for env in fresh:
                        await env.aclose()

            settled = await policy.settle(trajectories, rerun)
            await queue.put(Group(index, version, seed, settled.trajectories, settled.reruns,
                                  settled.replaced, settled.dropped))

    workers = [asyncio.create_task(worker(envs)) for envs in envs_per_worker]
    steps_done = 0
    pending: list[Group] = []
    try:
        for step in range(first_step, first_step + config.steps):
            if should_stop():
                break
            start = time.perf_counter()
            busy_before = generator.busy_s
            dropped = 0
            while len(pending) < config.groups_per_step:
                group = await _next(queue, workers, should_stop)
                if group is None:
                    return steps_done
                if step - group.version > config.max_staleness:
                    dropped += 1
                    continue
                pending.append(group)
            pending.sort(key=lambda g: g.index)
            groups, pending = pending[: config.groups_per_step], pending[config.groups_per_step :]
            advantages = score(groups, step)
            samples = _training_samples(groups, advantages)
            update = await asyncio.to_thread(trainer.step, samples)
            await asyncio.to_thread(generator.load_weights, trainer.model)
            await gate.advance()
            wall = time.perf_counter() - start
            busy = generator.busy_s - busy_before
            reported = on_step(StepReport(step, groups, advantages, update, dropped, wall,
                                          generator_idle_s=max(wall - busy, 0.0)))
            if inspect.isawaitable(reported):
                await reported
            steps_done += 1
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        for envs in envs_per_worker:
            for env in envs:
                await env.aclose()
    return steps_done


STOP_POLL_S = 0.2
"""How often a learner waiting for groups checks whether a stop was requested."""


async def _next(queue: asyncio.Queue[Group], workers: list[asyncio.Task[None]],
                should_stop: Callable[[], bool]) -> Group | None:
    """The next finished group, or None once a stop is requested; a worker's crash surfaces
    here instead of hanging the learner."""
    getter = asyncio.ensure_future(queue.get())
    while True:
        done, _ = await asyncio.wait([getter, *workers], timeout=STOP_POLL_S,
                                     return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return getter.result()
        for task in done:
            if task.exception() is not None:
                getter.cancel()
                raise task.exception()  # type: ignore[misc]
        if should_stop():
            getter.cancel()
            return None


def _training_samples(groups: Sequence[Group], advantages: Advantages) -> list[TrainingSample]:
    trajectories = [t for g in groups for t in g.trajectories]
    samples = []
    for trajectory, value, keep in zip(
        trajectories, advantages.values.tolist(), advantages.keep.tolist(), strict=True
    ):
        mask = trajectory.loss_mask if keep else (0,) * len(trajectory.loss_mask)
        samples.append(TrainingSample(
            trajectory.token_ids, mask, trajectory.logprobs.tolist(), value if keep else 0.0
        ))
    return samples
