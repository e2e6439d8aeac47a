"""Group-failure policies: keep the valid members, re-run the failed ones, or drop the group.

The failures are injected on purpose: an env whose first tool turns raise the runtime's own
``SandboxDied``, as a dead container does; the env turns it into an ``infra_failed`` episode.
"""

from __future__ import annotations

import asyncio
import copy
import itertools

import pytest

from gymbox.agents.groups import DropGroup, KeepValid, Rerun, make_group_policy
from gymbox.agents.loop import LoopConfig, SyncedPolicy, run_loop
from gymbox.agents.policy import SamplingParams, TransformersPolicy
from gymbox.agents.rollout import TURN_STOPS, Budget
from gymbox.agents.trainer import PolicyTrainer, TrainerConfig
from gymbox.envs.builtin.calculator import Calculator
from gymbox.rewards.mix import RewardMix, Term
from gymbox.rewards.terms import Gold
from gymbox.runtime.errors import SandboxDied

SAMPLING = SamplingParams(max_new_tokens=6, temperature=1.0, stop=TURN_STOPS, seed=0)
BUDGET = Budget(max_tokens=512, max_turns=1)


class FlakyCalculator(Calculator):
    """The first ``failures`` turns across all instances die as a lost container would."""

    turns = itertools.count()
    failures = 0

    async def _respond(self, action):
        if next(FlakyCalculator.turns) < FlakyCalculator.failures:
            raise SandboxDied("container killed (injected)")
        return await super()._respond(action)


def run_one_step(tiny, policy, failures: int):
    FlakyCalculator.turns, FlakyCalculator.failures = itertools.count(), failures
    model = copy.deepcopy(tiny.model)
    trainer = PolicyTrainer(model, TrainerConfig(learning_rate=1e-3))
    mix = RewardMix({"gold": Term(1.0, reward=Gold())})
    reports = []
    asyncio.run(run_loop(
        generator=SyncedPolicy(TransformersPolicy(model, tiny.tokenizer)), trainer=trainer,
        make_env=FlakyCalculator,
        score=lambda groups, step: mix.score([g.trajectories for g in groups], step=step),
        config=LoopConfig(steps=1, groups_per_step=1, group_size=4, rollout_workers=1),
        sampling=SAMPLING, budget=BUDGET, on_step=reports.append, group_failures=policy,
    ))
    (report,) = reports
    (group,) = report.groups
    return group, report.advantages


def test_keep_valid_trains_on_the_valid_members_only(tiny):
    group, advantages = run_one_step(tiny, KeepValid(), failures=2)
    assert [t.status for t in group.trajectories].count("infra_failed") == 2
    assert advantages.keep.tolist() == [t.valid for t in group.trajectories]
    assert (group.reruns, group.replaced, group.dropped) == (0, 0, False)


def test_rerun_replaces_failed_members_with_fresh_episodes_of_the_same_task(tiny):
    group, advantages = run_one_step(tiny, Rerun(max_reruns=2), failures=2)
    assert all(t.valid for t in group.trajectories)
    assert {t.seed for t in group.trajectories} == {group.seed}
    assert (group.reruns, group.replaced) == (2, 2)
    assert advantages.keep.all()


def test_rerun_is_bounded_and_what_still_fails_stays_masked(tiny):
    # 4 first turns fail, then the 2 re-runs of attempt 1 fail too; attempt 2 is not allowed.
    group, advantages = run_one_step(tiny, Rerun(max_reruns=1), failures=8)
    assert group.reruns == 4 and group.replaced == 0
    assert not any(t.valid for t in group.trajectories)
    assert not advantages.keep.any() and advantages.values.abs().sum() == 0


def test_drop_group_masks_every_member_when_one_fails(tiny):
    group, advantages = run_one_step(tiny, DropGroup(), failures=1)
    assert group.dropped and not any(t.valid for t in group.trajectories)
    reasons = sorted(t.reward.reason for t in group.trajectories)
    assert reasons == ["group_dropped"] * 3 + ["sandbox_died"]
    assert not advantages.keep.any()
    group, advantages = run_one_step(tiny, DropGroup(), failures=0)
    assert not group.dropped and advantages.keep.all()


def test_no_policy_replays_an_episode_the_agent_ended(tiny):
    # Without infra failures nothing is re-run: a wrong or truncated episode is scored as is.
    group, _ = run_one_step(tiny, Rerun(max_reruns=3), failures=0)
    assert group.reruns == 0
    assert all(t.status in ("completed", "truncated") for t in group.trajectories)


def test_policies_by_name():
    assert make_group_policy("keep_valid") == KeepValid()
    assert make_group_policy("rerun", 3) == Rerun(3)
    with pytest.raises(ValueError, match="choose from rerun, keep_valid, drop_group"):
        make_group_policy("retry")
