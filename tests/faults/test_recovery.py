"""Recovery and attribution, one situation at a time, with real faults and real containers."""

from __future__ import annotations

import signal

import pytest

from gymbox.runtime import SandboxAPI, SandboxSpec
from gymbox.runtime.breaker import InfraCircuitBreaker, InfraFailureRateExceeded
from gymbox.runtime.faults import FaultKind, FaultPlan
from gymbox.runtime.recovery import RecoveryPolicy
from tests.faults.workload import (
    BACKSTOP_S,
    SPEC,
    ProductEnv,
    call,
    play,
    product_agent,
    recovering,
    scripted,
)

pytestmark = pytest.mark.docker

# A sandbox whose workspace may outgrow its memory: filling the workspace exhausts the memory
# limit, and the kernel's OOM killer then takes the supervisor with the agent's processes.
FRAGILE = SandboxSpec(memory_mb=64, workspace_mb=256, grace_s=0.2, backstop_margin_s=1.0,
                      labels=SPEC.labels)
EXHAUST_MEMORY = call("shell", command="head -c 200M /dev/zero > fill; echo filled")


async def baseline(seed: int, agent=product_agent, spec: SandboxSpec = SPEC):
    async with recovering(spec=spec) as (sandboxes, _):
        return await play(ProductEnv(sandboxes=sandboxes), seed, agent)


async def test_a_recovered_episode_sees_exactly_what_it_would_have_seen():
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
    # What the fault cost the episode: no more than the episode took, and not nothing.
    assert list(sandboxes.metrics.stalled_s) == ["sandbox_died"]
    assert 0 < sandboxes.metrics.stalled_s["sandbox_died"] < episode.seconds


async def test_a_replay_that_diverges_masks_the_episode():
    agent = scripted(call("shell", command="cat /proc/sys/kernel/random/uuid"),
                     call("shell", command="echo next"))
    async with recovering(FaultPlan(scripted={2: FaultKind.GARBLE_RESPONSE})) as (sandboxes, _):
        episode = await play(ProductEnv(sandboxes=sandboxes), 0, agent)
    assert episode.status == "infra_failed"
    assert not episode.record.valid and episode.record.reason == "replay_diverged"
    assert sandboxes.metrics.masked == {"supervisor_fault": 1}


async def test_recovery_gives_up_after_its_attempts_and_the_episode_is_masked():
    # Request 2 is the second call; request 3 is the replay of the first call into the one
    # fresh sandbox the policy allows.
    plan = FaultPlan(scripted={2: FaultKind.TRUNCATE_RESPONSE, 3: FaultKind.TRUNCATE_RESPONSE})
    policy = RecoveryPolicy(max_attempts=1, deadline_s=10)
    async with recovering(plan, policy=policy) as (sandboxes, faults):
        episode = await play(ProductEnv(sandboxes=sandboxes), 1)
    assert episode.status == "infra_failed"
    assert not episode.record.valid and episode.record.reason == "ambiguous_execution"
    assert sandboxes.metrics.masked == {"ambiguous_execution": 1}
    assert not sandboxes.metrics.recovered and not sandboxes.metrics.agent_caused
    assert len(faults.log) == 2


async def test_a_hung_sandbox_cannot_hold_an_episode_past_the_recovery_deadline():
    # Request 2 (the second call) hangs, and so does every replay of call 1 into a fresh
    # sandbox after it (faults that are not transient: nothing is spared).
    plan = FaultPlan(scripted=dict.fromkeys(range(2, 40), FaultKind.PAUSE_CONTAINER), spare_s=0)
    policy = RecoveryPolicy(max_attempts=10, deadline_s=2.0)
    async with recovering(plan, policy=policy) as (sandboxes, _):
        episode = await play(ProductEnv(sandboxes=sandboxes), 2)
    assert episode.status == "infra_failed" and not episode.record.valid
    assert sandboxes.metrics.masked == {"sandbox_unresponsive": 1}
    # the call's own backstop, then recovery cut off at its deadline (plus the calls that ran)
    assert episode.seconds < BACKSTOP_S + policy.deadline_s + 1.5


async def test_an_agent_that_exhausts_its_sandbox_is_scored_not_masked():
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


async def test_a_fork_bomb_is_never_masked():
    # Exhausting the pids limit sometimes takes the container's lease loop down with it (it
    # cannot fork `sleep`), sometimes not: either way the episode is scored, never masked.
    bomb = call("shell", command="sh -c 'f() { f | f & }; f' 2>/dev/null; sleep 1")
    agent = scripted(bomb, call("shell", command="echo still here"))
    async with recovering() as (sandboxes, _):
        episode = await play(ProductEnv(sandboxes=sandboxes), 0, agent)
    assert episode.status == "completed" and episode.record.valid
    assert episode.messages[5]["content"] == "still here"
    assert not sandboxes.metrics.masked


async def test_the_breaker_stops_new_episodes_when_infra_failures_dominate():
    # In each episode: call 1 passes, call 2 and the replay of call 1 are garbled (masked).
    plan = FaultPlan(scripted=dict.fromkeys([2, 3, 5, 6], FaultKind.GARBLE_RESPONSE))
    breaker = InfraCircuitBreaker(window=4, min_episodes=2, slow_down_rate=0.5, stop_rate=0.5)
    policy = RecoveryPolicy(max_attempts=1, deadline_s=5)
    async with recovering(plan, policy=policy, breaker=breaker) as (sandboxes, _):
        for seed in range(2):
            episode = await play(ProductEnv(sandboxes=sandboxes), seed)
            assert episode.status == "infra_failed"
        with pytest.raises(InfraFailureRateExceeded, match="supervisor_fault x2"):
            await play(ProductEnv(sandboxes=sandboxes), 2)
    assert breaker.failing_kinds == {"supervisor_fault": 2}


async def test_file_operations_and_their_errors_are_journalled_and_replayed():
    plan = FaultPlan(scripted={4: FaultKind.KILL_CONTAINER})
    async with recovering(plan) as (sandboxes, faults), sandboxes.acquire() as sandbox:
        await sandbox.write_file("notes/a.txt", "alpha")
        with pytest.raises(FileNotFoundError):  # the agent's error: an outcome, journalled
            await sandbox.read_file("missing.txt")
        assert [e.name for e in await sandbox.list_dir("notes")] == ["a.txt"]
        first = sandbox.sandbox.id
        assert (await sandbox.exec("cat notes/a.txt", timeout=2)).stdout == "alpha"
        assert sandbox.sandbox.id != first
        assert sandbox.id == sandbox.sandbox.id and sandbox.workdir == sandbox.sandbox.workdir
        assert isinstance(sandbox, SandboxAPI) and isinstance(sandbox.sandbox, SandboxAPI)
        assert [c.method for c in sandbox.journal] == [
            "write_file", "read_file", "list_dir", "exec"]
    assert [f.kind for f in faults.log] == [FaultKind.KILL_CONTAINER]
    assert sandboxes.metrics.recovered == {"sandbox_died": 1}
    assert sandboxes.metrics.replays == 3
