"""Short GRPO runs of the tiny model in ShellTask-v0 (every episode writes its input files into
its sandbox), with the learner on the driver and the sandboxes on engines behind Ray.

* One engine: the Ray run and the in-process run of the same seed are the same run: the same
  trajectories, rewards and losses, step by step.
* Two engines, one killed mid-step: the run finishes every step, each episode is valid or
  masked with an infrastructure kind, and nothing is left on any engine.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
import torch

from gymbox.agents.loop import LoopConfig, StepReport, SyncedPolicy, run_loop
from gymbox.agents.policy import SamplingParams, TransformersPolicy
from gymbox.agents.rollout import TURN_STOPS, Budget
from gymbox.agents.trainer import PolicyTrainer, TrainerConfig
from gymbox.distributed import EngineSet
from gymbox.envs.builtin.shell_task import ShellTask
from gymbox.rewards.advantages import GRPO
from gymbox.runtime.docker_backend import DockerBackend
from gymbox.runtime.pool import SandboxPool
from gymbox.runtime.recovery import RecoveringSandboxes

pytestmark = [pytest.mark.ray, pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(900)]

SAMPLING = SamplingParams(max_new_tokens=8, temperature=1.0, stop=TURN_STOPS, seed=0)
BUDGET = Budget(max_tokens=768, max_turns=1)


def score(groups, step):
    flat = [t for g in groups for t in g.trajectories]
    # A signal even when every answer is wrong: prefer shorter completions.
    rewards = torch.tensor([t.reward.value - 0.01 * t.model_tokens for t in flat])
    ids = torch.tensor([g.index for g in groups for _ in g.trajectories])
    return GRPO()(rewards, torch.tensor([t.valid for t in flat]), ids)


def train(model_dir: Path, open_source, env_class=ShellTask, *, steps: int, group_size: int
          ) -> tuple[list[StepReport], RecoveringSandboxes]:
    """A synchronous GRPO run, as ``gymbox train`` builds it, with sandboxes from
    ``open_source()`` (an async context manager) behind :class:`RecoveringSandboxes`."""
    torch.manual_seed(0)
    policy = TransformersPolicy.load(model_dir)
    trainer = PolicyTrainer(policy.model, TrainerConfig(learning_rate=1e-2, micro_batch_size=4))
    config = LoopConfig(steps=steps, groups_per_step=2, group_size=group_size,
                        max_staleness=0, rollout_workers=2, seed=3)
    reports: list[StepReport] = []

    async def session() -> RecoveringSandboxes:
        async with open_source() as source:
            sandboxes = RecoveringSandboxes(source)
            await run_loop(
                generator=SyncedPolicy(policy), trainer=trainer,
                make_env=lambda: env_class(sandboxes=sandboxes), score=score, config=config,
                sampling=SAMPLING, budget=BUDGET, on_step=reports.append)
            return sandboxes

    return reports, asyncio.run(session())


def transcript(reports: list[StepReport]):
    return [[(g.index, t.token_ids, t.loss_mask, t.status, t.reward.value, t.messages)
             for g in r.groups for t in g.trajectories] for r in reports]


def test_one_engine_ray_run_equals_the_in_process_run(rig, tiny_model_dir):
    engine = rig.engine(1)
    direct = engine.__class__(engine.name, docker_host=rig.host(1), pool_size=2)

    def in_process():
        return SandboxPool(size=2, backend=DockerBackend(direct.connect()))

    def on_ray():
        return EngineSet([engine])

    local, _ = train(tiny_model_dir, in_process, steps=2, group_size=2)
    remote, _ = train(tiny_model_dir, on_ray, steps=2, group_size=2)
    assert len(local) == len(remote) == 2
    assert all(t.valid for r in local for g in r.groups for t in g.trajectories)
    assert transcript(local) == transcript(remote)
    assert [r.update.loss for r in local] == [r.update.loss for r in remote]
    assert [r.update.grad_norm for r in local] == [r.update.grad_norm for r in remote]


def test_training_survives_an_engine_killed_mid_step(rig, tiny_model_dir):
    killed: list[int] = []
    once = threading.Lock()
    episodes = {"n": 0}

    class KillsEngine2(ShellTask):
        """ShellTask whose seventh episode kills engine 2 after writing its files there: in
        the second step, with that step's episodes in flight (a fault injected on purpose)."""

        async def setup(self, task, sandbox) -> None:
            await super().setup(task, sandbox)
            with once:
                episodes["n"] += 1
                due = episodes["n"] >= 7 and sandbox.sandbox.engine == "e2" and not killed
                if due:
                    killed.append(2)
            if due:
                await asyncio.to_thread(rig.script, "kill", 2)
                await sandbox.list_dir(".")  # on a dead engine: recovered on e1

    try:
        reports, sandboxes = train(tiny_model_dir, lambda: EngineSet(rig.engines()),
                                   KillsEngine2, steps=3, group_size=3)
    finally:
        rig.script("restart", 2)
    assert killed == [2]
    assert len(reports) == 3
    flat = [t for r in reports for g in r.groups for t in g.trajectories]
    for t in flat:
        assert t.valid or (t.status == "infra_failed" and t.reward.reason), t.reward
    assert sum(sandboxes.metrics.recovered.values()) >= 1, sandboxes.metrics
    rig.assert_clean()
