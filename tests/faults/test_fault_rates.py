"""At 10% and 30% real faults, 50 seeded episodes each: recovery changes nothing the agent sees
or is rewarded for, masked episodes never reach an advantage, and nothing hangs or leaks."""

from __future__ import annotations

import asyncio

import pytest
import torch

from gymbox.rewards import GRPO, RLOO, DrGRPO, batch_from_records
from gymbox.runtime.faults import FaultPlan
from tests.faults.workload import EPISODE_DEADLINE_S, play_many, recovering

pytestmark = pytest.mark.docker

SEEDS = range(50)
GROUP_SIZE = 5  # five consecutive seeds form one GRPO group
CONCURRENCY = 6


async def play_all(plan: FaultPlan | None):
    async with recovering(plan, pool_size=CONCURRENCY) as (sandboxes, faults):
        episodes = await play_many(sandboxes, SEEDS, concurrency=CONCURRENCY,
                                   deadline_s=EPISODE_DEADLINE_S)
    return episodes, sandboxes.metrics, faults


@pytest.fixture(scope="module")
def fault_free():
    episodes, metrics, _ = asyncio.run(play_all(None))
    assert all(e.status == "completed" for e in episodes)
    assert not (metrics.recovered or metrics.masked or metrics.agent_caused)
    rewards = [e.record.value for e in episodes]
    assert 0 < sum(rewards) < len(rewards)  # the scripted agent is wrong on some tasks
    return episodes


@pytest.mark.parametrize("rate", [0.1, 0.3])
async def test_faults_are_recovered_or_masked_never_scored(rate, fault_free):
    plan = FaultPlan.uniform(rate, seed=int(rate * 100), spare_s=15.0)
    episodes, metrics, faults = await play_all(plan)

    # Real faults, about as many as asked for (struck requests are spared for a while).
    assert len(faults.log) >= 0.5 * rate * faults.requests
    assert sum(metrics.recovered.values()) >= 0.5 * len(faults.log)

    # Every episode that was not masked saw and earned exactly what it would have without faults.
    for episode, expected in zip(episodes, fault_free, strict=True):
        assert episode.seconds < EPISODE_DEADLINE_S
        if episode.status == "infra_failed":
            assert not episode.record.valid
            continue
        assert episode.status == "completed"
        assert episode.record == expected.record, episode.seed
        assert episode.messages == expected.messages, episode.seed
    masked = sum(e.status == "infra_failed" for e in episodes)
    assert sum(metrics.masked.values()) == masked
    assert not metrics.agent_caused  # transient faults are never blamed on the agent

    # No invalid reward reaches an advantage: poisoning them changes nothing, and the valid
    # episodes get the advantages the fault-free rewards give under the same mask.
    rewards, valid = batch_from_records([e.record for e in episodes])
    poisoned = torch.where(valid, rewards, torch.tensor(1e6))
    clean, _ = batch_from_records([e.record for e in fault_free])
    groups = torch.tensor([seed // GROUP_SIZE for seed in SEEDS])
    for estimator in (GRPO(), DrGRPO(), RLOO()):
        advantages = estimator(rewards, valid, groups)
        assert torch.equal(advantages.values, estimator(poisoned, valid, groups).values)
        assert not advantages.keep[~valid].any()
        assert torch.allclose(advantages.values, estimator(clean, valid, groups).values)
