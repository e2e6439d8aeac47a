"""The actor-learner loop: staleness 0 is synchronous GRPO; more overlaps; nothing hangs."""

from __future__ import annotations

import asyncio
import copy
import threading
from dataclasses import replace

import pytest
import torch

from gymbox.agents.loop import Group, LoopConfig, StalenessGate, SyncedPolicy, run_loop
from gymbox.agents.policy import SamplingParams, TransformersPolicy
from gymbox.agents.rollout import TURN_STOPS, Budget, rollout
from gymbox.agents.run_config import TrainConfig
from gymbox.agents.supply import env_supply
from gymbox.agents.train import train
from gymbox.agents.trainer import PolicyTrainer, TrainerConfig, TrainingSample
from gymbox.config import from_mapping
from gymbox.envs.builtin.calculator import Calculator
from gymbox.rewards.advantages import GRPO
from gymbox.rewards.terms import Gold

SAMPLING = SamplingParams(max_new_tokens=6, temperature=1.0, stop=TURN_STOPS, seed=0)
BUDGET = Budget(max_tokens=512, max_turns=1)


def gold_advantages(groups, step):
    flat = [t for g in groups for t in g.trajectories]
    rewards = torch.cat([Gold()(g.trajectories) for g in groups])
    # A signal even when every answer is wrong: prefer shorter completions.
    rewards = rewards - 0.01 * torch.tensor([float(t.model_tokens) for t in flat])
    ids = torch.tensor([g.index for g in groups for _ in g.trajectories])
    return GRPO()(rewards, torch.tensor([t.valid for t in flat]), ids)


def fresh(tiny: TransformersPolicy) -> TransformersPolicy:
    return TransformersPolicy(copy.deepcopy(tiny.model), tiny.tokenizer)


def run(policy, config: LoopConfig, generator=None):
    trainer = PolicyTrainer(policy.model, TrainerConfig(learning_rate=1e-2, micro_batch_size=4))
    losses = []
    asyncio.run(run_loop(
        generator=generator or SyncedPolicy(policy), trainer=trainer, make_env=Calculator,
        score=gold_advantages, config=config, sampling=SAMPLING, budget=BUDGET,
        on_step=lambda report: losses.append(report),
    ))
    return trainer, losses


def test_staleness_zero_is_exactly_synchronous_grpo(tiny):
    config = LoopConfig(steps=3, groups_per_step=2, group_size=3, max_staleness=0,
                        rollout_workers=2, seed=5)
    policy = fresh(tiny)
    _, reports = run(policy, config)

    reference = fresh(tiny)
    trainer = PolicyTrainer(reference.model, TrainerConfig(learning_rate=1e-2, micro_batch_size=4))
    expected = []
    for step in range(config.steps):
        groups = []
        for index in range(step * 2, step * 2 + 2):
            seed = config.task_seed(index)
            trajectories = asyncio.run(rollout(
                reference, [Calculator() for _ in range(3)], seeds=[seed] * 3,
                sampling=replace(SAMPLING, seed=seed), budget=BUDGET,
            ))
            groups.append(Group(index, step, seed, trajectories))
        adv = gold_advantages(groups, step)
        flat = [t for g in groups for t in g.trajectories]
        samples = [TrainingSample(t.token_ids, t.loss_mask, t.logprobs.tolist(), float(a))
                   for t, a in zip(flat, adv.values, strict=True)]
        expected.append(trainer.step(samples).loss)

    assert [r.update.loss for r in reports] == pytest.approx(expected, abs=1e-6)
    assert all(g.version == r.step for r in reports for g in r.groups)
    for a, b in zip(policy.model.parameters(), reference.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def assert_one_step_stale_at_most(reports, *, steps):
    lags = [r.step - g.version for r in reports for g in r.groups]
    assert max(lags) <= 1 and len(reports) == steps
    assert any(lag == 1 for lag in lags), "sampling never overlapped an update"


def test_async_groups_are_at_most_max_staleness_old(tiny):
    learner = fresh(tiny)
    generator = SyncedPolicy(fresh(tiny))
    config = LoopConfig(steps=4, groups_per_step=1, group_size=2, max_staleness=1,
                        rollout_workers=2, seed=1)
    trainer, reports = run(learner, config, generator=generator)
    assert_one_step_stale_at_most(reports, steps=4)
    for a, b in zip(generator.policy.model.parameters(), trainer.model.parameters(), strict=True):
        assert torch.equal(a, b), "the generator did not receive the last weights"


def test_max_staleness_needs_a_weight_copy_or_a_module_of_its_own(tiny):
    policy = fresh(tiny)
    with pytest.raises(ValueError, match="weight copy or through a module of its own"):
        run(policy, LoopConfig(steps=1, groups_per_step=1, group_size=1, max_staleness=1))


def test_async_training_can_share_the_learners_tensors_instead_of_copying_them(tiny):
    learner = fresh(tiny)
    learner.model.gradient_checkpointing_enable()
    generator = SyncedPolicy.sharing(learner)
    assert generator.policy.model is not learner.model
    assert [p.data_ptr() for p in generator.policy.model.parameters()] == \
        [p.data_ptr() for p in learner.model.parameters()]  # no second copy of the weights
    config = LoopConfig(steps=4, groups_per_step=1, group_size=2, max_staleness=1,
                        rollout_workers=2, seed=1)
    trainer, reports = run(learner, config, generator=generator)
    assert_one_step_stale_at_most(reports, steps=4)
    assert trainer.weights_lock is generator.lock
    # Sampling in eval mode through its own module leaves the trainer's module as it was.
    learner.model.train()
    generator.generate([[1, 2, 3]], SAMPLING)
    assert learner.model.training and not generator.policy.model.training


def test_an_update_of_shared_weights_waits_for_the_generate_call_under_way(tiny):
    learner = fresh(tiny)
    generator = SyncedPolicy.sharing(learner)
    trainer = PolicyTrainer(learner.model, TrainerConfig(learning_rate=1e-2))
    trainer.weights_lock = generator.lock
    before = [p.clone() for p in learner.model.parameters()]

    def unchanged() -> bool:
        return all(torch.equal(a, b)
                   for a, b in zip(before, learner.model.parameters(), strict=True))

    sample = TrainingSample([1, 5, 7, 9], [0, 1, 1, 1], [0.0, -3.0, -3.0, -3.0], advantage=1.0)
    with generator.lock:  # a generate call under way
        stepping = threading.Thread(target=trainer.step, args=([sample],))
        stepping.start()
        stepping.join(timeout=5)
        assert stepping.is_alive(), "the update did not wait for the generate call"
        assert unchanged()
    stepping.join(timeout=30)
    assert not stepping.is_alive() and trainer.steps_done == 1
    assert not unchanged()


class BrokenCalculator(Calculator):
    async def areset(self, *, seed=None, options=None):
        raise RuntimeError("a bug in the env's own code")


def test_a_crashing_worker_stops_the_loop_instead_of_hanging_it(tiny):
    trainer = PolicyTrainer(fresh(tiny).model, TrainerConfig())
    with pytest.raises(RuntimeError, match="bug in the env"):
        asyncio.run(asyncio.wait_for(run_loop(
            generator=SyncedPolicy(tiny), trainer=trainer, make_env=BrokenCalculator,
            score=gold_advantages, config=LoopConfig(steps=2, groups_per_step=1, group_size=2),
            sampling=SAMPLING, budget=BUDGET,
        ), timeout=60))


async def test_the_gate_admits_one_step_ahead_per_unit_of_staleness():
    gate = StalenessGate(groups_per_step=2, max_staleness=1)
    assert [await gate.reserve() for _ in range(4)] == [(0, 0), (1, 0), (2, 0), (3, 0)]
    blocked = asyncio.ensure_future(gate.reserve())
    await asyncio.sleep(0.05)
    assert not blocked.done()
    await gate.advance()
    assert await asyncio.wait_for(blocked, 1) == (4, 1)


@pytest.mark.docker
def test_training_on_a_sandbox_env_shares_a_recovering_pool(tmp_path, tiny_model_dir):
    config = from_mapping(TrainConfig, {
        "env": "gymbox/PythonMath-v0", "policy": {"model": str(tiny_model_dir)},
        "run_dir": str(tmp_path / "run"),
        "loop": {"steps": 1, "group_size": 2, "groups_per_step": 1, "rollout_workers": 1},
        "budget": {"max_turns": 1}, "sampling": {"max_new_tokens": 8}, "eval": {"episodes": 2},
    })
    summary = train(config, evaluate_before=False)
    assert summary.steps == 1 and summary.after.valid_fraction == 1.0
    rows = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert '"recovery/masked": 0.0' in rows


async def test_env_supply_gives_host_envs_no_sandboxes():
    async with env_supply(TrainConfig(), episodes_at_once=4) as supply:
        assert supply.sandboxes is None and supply.metrics() == {}
        env = supply.make()
        assert isinstance(env, Calculator)
        await env.aclose()
