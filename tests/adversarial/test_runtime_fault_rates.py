"""Red team under real faults: at 0%, 10% and 30% injected infrastructure faults, with agents
that try to crash their sandboxes mixed among honest ones, no episode is masked that the
infrastructure did not cause, and every honest episode that is not masked is scored exactly as
without faults.

Episodes run one at a time, so the faults injected while an episode ran are that episode's.
"""

from __future__ import annotations

import pytest

from gymbox.runtime.faults import FaultPlan
from tests.adversarial.test_runtime_attacks import CONDITIONS, SPEC_SMALL, crash_if
from tests.faults.workload import (
    ProductEnv,
    call,
    containers_left,
    play,
    product_agent,
    recovering,
    scripted,
)

pytestmark = pytest.mark.docker

SEEDS = range(8)


def agent_for(seed: int):
    """Even seeds are honest; odd seeds attack, each on a condition of its own."""
    if seed % 2 == 0:
        return product_agent
    condition = list(CONDITIONS.values())[seed // 2 % len(CONDITIONS)]
    return scripted(call("shell", command="echo 6 > a.txt"), crash_if(condition),
                    call("python", code="print(open('a.txt').read().strip())"))


async def play_rate(rate: float):
    plan = FaultPlan.uniform(rate, seed=17, spare_s=15.0) if rate else None
    results = []
    async with recovering(plan, spec=SPEC_SMALL, pool_size=2) as (sandboxes, faults):
        for seed in SEEDS:
            before = len(faults.log) if faults else 0
            episode = await play(ProductEnv(sandboxes=sandboxes, max_turns=6), seed,
                                 agent_for(seed))
            struck = (len(faults.log) - before) if faults else 0
            results.append((seed, episode, struck))
    return results, sandboxes.metrics


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.3])
async def test_no_episode_the_agent_caused_is_masked_at_any_fault_rate(rate, docker_client):
    results, metrics = await play_rate(rate)
    masked_by_agent = [seed for seed, episode, struck in results
                       if episode.status != "completed" and not struck]
    assert masked_by_agent == []
    for seed, episode, _ in results:
        if episode.status == "completed":
            assert episode.record.valid, seed
            if seed % 2 == 1:  # the attacker's sandbox survived: its file is still there
                assert episode.messages[7]["content"] == "6", (seed, episode.messages[7])
        else:
            assert episode.status == "infra_failed" and not episode.record.valid
    if rate == 0.0:
        assert all(episode.status == "completed" for _, episode, _ in results)
        assert not (metrics.recovered or metrics.masked or metrics.agent_caused)
    # the attacks never took a sandbox down: whatever was recovered or masked was injected
    assert not metrics.agent_caused
    print(f"rate {rate:.0%}: {sum(s > 0 for *_, s in results)} of {len(results)} episodes "
          f"struck, recovered {dict(metrics.recovered)}, masked {dict(metrics.masked)}, "
          f"masked by the agent: {len(masked_by_agent)}")
    assert not await containers_left(docker_client)
