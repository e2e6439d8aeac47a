"""Recovery and attribution, one situation at a time, with real faults and real containers."""

from __future__ import annotations

import signal

import pytest
from workload import (
    SPEC,
    ProductEnv,
    call,
    containers_left,
    play,
    product_agent,
    recovering,
    scripted,
)

from gymbox.runtime import SandboxSpec
from gymbox.runtime.breaker import InfraCircuitBreaker, InfraFailureRateExceeded
from gymbox.runtime.faults import FaultKind, FaultPlan
from gymbox.runtime.recovery import RecoveryPolicy

pytestmark = pytest.mark.docker

# A sandbox whose workspace may outgrow its memory: filling the workspace exhausts the memory
# limit, and the kernel's OOM killer then takes the supervisor with the agent's processes.
FRAGILE = SandboxSpec(memory_mb=64, workspace_mb=256, grace_s=0.2, backstop_margin_s=1.0,
                      labels=SPEC.labels)
EXHAUST_MEMORY = call("shell", command="head -c 200M /dev/zero > fill; echo filled")


async def baseline(seed: int, agent=product_agent, spec: SandboxSpec = SPEC):
    async with recovering(spec=spec) as (sandboxes, _):
        return await play(ProductEnv(sandboxes=sandboxes), seed, agent)


async def test_a_recovered_episode_sees_exactly_what_it_would_have_seen(docker_client):
    expected = await baseline(3)
    # Request 3 is the cell that needs both the file and the interpreter's `x`.
    plan = FaultPlan(scripted={3: FaultKind.KILL_CONTAINER})
    async with recovering(plan) as (sandboxes, faults):
        episode = await play(ProductEnv(sandboxes=sandboxes), 3)
    assert [f.kind for f in faults.log] == [FaultKind.KILL_CONTAINER]
    assert episode.status == "completed" and episode.record.valid
    assert episode.messages == expected.messages
    assert episode.record == expected.record
    assert sandboxes.metrics.recovered == {"sandbox_died": 1}
    assert sandboxes.metrics.replays == 2
    assert not sandboxes.metrics.masked and not sandboxes.metrics.agent_caused
    assert not await containers_left(docker_client)


async def test_a_replay_that_diverges_masks_the_episode():
    agent = scripted(call("shell", command="cat /proc/sys/kernel/random/uuid"),
                     call("shell", command="echo next"))
    async with recovering(FaultPlan(scripted={2: FaultKind.GARBLE_RESPONSE})) as (sandboxes, _):
        episode = await play(ProductEnv(sandboxes=sandboxes), 0, agent)
    assert episode.status == "infra_failed"
    assert not episode.record.valid and episode.record.reason == "replay_diverged"
    assert sandboxes.metrics.masked == {"supervisor_fault": 1}


async def test_recovery_gives_up_after_its_attempts_and_the_episode_is_masked():
    # Every request is struck; only the re-run of the failed one is spared, so the replay of
    # the first call fails on every fresh sandbox.
    plan = FaultPlan({FaultKind.TRUNCATE_RESPONSE: 1.0})
    policy = RecoveryPolicy(max_attempts=2, deadline_s=10)
    async with recovering(plan, policy=policy) as (sandboxes, faults):
        episode = await play(ProductEnv(sandboxes=sandboxes), 1)
    assert episode.status == "infra_failed"
    assert not episode.record.valid and episode.record.reason == "ambiguous_execution"
    assert sandboxes.metrics.recovered == {"ambiguous_execution": 1}  # the first call's
    assert sandboxes.metrics.masked == {"ambiguous_execution": 1}  # the second call's
    assert len(faults.log) == 4  # call 1; call 2; its replays of call 1 on two fresh sandboxes


async def test_a_hung_sandbox_cannot_hold_an_episode_past_the_recovery_deadline():
    plan = FaultPlan({FaultKind.PAUSE_CONTAINER: 1.0})
    policy = RecoveryPolicy(max_attempts=10, deadline_s=2.0)
    async with recovering(plan, policy=policy) as (sandboxes, _):
        episode = await play(ProductEnv(sandboxes=sandboxes), 2)
    backstop = 2 + SPEC.grace_s + SPEC.backstop_margin_s
    assert episode.status == "infra_failed" and not episode.record.valid
    # call 1 hangs to its backstop and is recovered (spared); call 2 hangs, and its recovery
    # (whose replay of call 1 hangs) stops at the deadline
    assert episode.seconds < 2 * backstop + policy.deadline_s + 2.0


async def test_an_agent_that_exhausts_its_sandbox_is_scored_not_masked(docker_client):
    agent = scripted(call("shell", command="echo 6 > a.txt"),
                     call("python", code="x = int(open('a.txt').read())"),
                     EXHAUST_MEMORY,
                     call("python", code="print(x * 7)"))
    async with recovering(spec=FRAGILE) as (sandboxes, _):
        episode = await play(ProductEnv(sandboxes=sandboxes), 0, agent)
    assert episode.status == "completed" and episode.record.valid
    destroyed = episode.messages[7]["content"]
    assert "this command destroyed its sandbox" in destroyed
    assert f"[killed by signal {int(signal.SIGKILL)}]" in destroyed
    # the sandbox was rebuilt without the fatal call: the file and `x` are back
    assert episode.messages[9]["content"] == "42"
    assert sum(sandboxes.metrics.agent_caused.values()) == 1
    assert not sandboxes.metrics.masked
    assert not await containers_left(docker_client)


async def test_crashing_the_sandbox_does_not_dodge_a_bad_reward():
    agent = scripted(EXHAUST_MEMORY)  # then answers with what it saw: wrong
    async with recovering(spec=FRAGILE) as (sandboxes, _):
        episode = await play(ProductEnv(sandboxes=sandboxes), 0, agent)
    assert episode.status == "completed"
    assert episode.record.valid and episode.record.value == 0.0
    assert sum(sandboxes.metrics.agent_caused.values()) == 1


async def test_nondeterministic_output_before_the_crash_does_not_dodge_blame_either():
    agent = scripted(call("shell", command="cat /proc/sys/kernel/random/uuid"), EXHAUST_MEMORY)
    async with recovering(spec=FRAGILE) as (sandboxes, _):
        episode = await play(ProductEnv(sandboxes=sandboxes), 0, agent)
    assert episode.status == "completed" and episode.record.valid
    assert sum(sandboxes.metrics.agent_caused.values()) == 1
    assert not sandboxes.metrics.masked


@pytest.mark.parametrize("command", [
    "kill -9 -1; echo survived",  # every process the agent may signal
    "sh -c 'f() { f | f & }; f' 2>/dev/null; sleep 1",  # a fork bomb, stopped by the pids limit
    "python3 -c 'b = bytearray(2 << 30)'",  # the agent's own process OOM-killed
])
async def test_an_agent_killing_its_own_processes_is_just_an_outcome(command):
    agent = scripted(call("shell", command=command), call("shell", command="echo still here"))
    async with recovering() as (sandboxes, _):
        episode = await play(ProductEnv(sandboxes=sandboxes), 0, agent)
    assert episode.status == "completed" and episode.record.valid
    assert episode.messages[5]["content"] == "still here"
    metrics = sandboxes.metrics
    assert not (metrics.recovered or metrics.masked or metrics.agent_caused)


async def test_the_breaker_stops_new_episodes_when_infra_failures_dominate():
    plan = FaultPlan({FaultKind.GARBLE_RESPONSE: 1.0}, spare_s=1.0)
    breaker = InfraCircuitBreaker(window=4, min_episodes=2, slow_down_rate=0.5, stop_rate=0.5)
    policy = RecoveryPolicy(max_attempts=1, deadline_s=5)
    async with recovering(plan, policy=policy, breaker=breaker) as (sandboxes, _):
        for seed in range(2):
            episode = await play(ProductEnv(sandboxes=sandboxes), seed)
            assert episode.status == "infra_failed"
        with pytest.raises(InfraFailureRateExceeded, match="supervisor_fault x2"):
            await play(ProductEnv(sandboxes=sandboxes), 2)
    assert breaker.failing_kinds == {"supervisor_fault": 2}
