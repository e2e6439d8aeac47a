"""Recovery and attribution, one situation at a time, with real faults and real containers."""

from __future__ import annotations

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

# A sandbox that keeps no memory for its supervisor (supervisor_reserve_mb=0): filling the
# workspace exhausts the memory limit, and once the agent's processes are gone the kernel's OOM
# killer takes the supervisor (tmpfs pages belong to no process).
FRAGILE = SandboxSpec(memory_mb=64, workspace_mb=56, tmp_mb=1, shm_mb=1, supervisor_reserve_mb=0,
                      grace_s=0.2, backstop_margin_s=1.0, labels=SPEC.labels)
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


async def test_an_agent_that_breaks_a_sandbox_without_a_reserve_is_scored_on_the_oom_evidence():
    # FRAGILE keeps no memory for the supervisor: once the workspace holds most of the memory,
    # the kernel runs out of agent processes to kill and takes the lease loop or the
    # supervisor. The engine saw the OOM kill: the agent's doing, scored at once, not masked.
    agent = scripted(call("shell", command="echo 6 > a.txt"),
                     call("python", code="x = int(open('a.txt').read())"),
                     EXHAUST_MEMORY,
                     call("python", code="print(x * 7)"))
    async with recovering(spec=FRAGILE) as (sandboxes, _):
        episode = await play(ProductEnv(sandboxes=sandboxes), 0, agent)
    assert episode.status == "completed" and episode.record.valid
    seen = [m["content"] for m in episode.messages[7:10:2]]
    destroyed = [text for text in seen if "destroyed its sandbox" in text]
    assert all("OOM-killed" in text for text in destroyed)
    assert sum(sandboxes.metrics.agent_caused.values()) == len(destroyed)
    assert not sandboxes.metrics.masked and not sandboxes.metrics.recovered


async def test_with_the_default_reserve_exhausting_memory_leaves_the_supervisor_alive():
    # The default spec sizes every tmpfs below the memory limit minus the supervisor's
    # reserve: filling them all, then forking, kills only the agent's processes.
    spec = SandboxSpec(memory_mb=128, grace_s=0.2, backstop_margin_s=1.0, labels=SPEC.labels)
    fill = "; ".join(f"head -c 200M /dev/zero > {d}/fill 2>/dev/null" for d in
                     ("/workspace", "/tmp", "/dev/shm"))
    agent = scripted(call("python", code="x = 6"),
                     call("shell", command=fill + "; echo filled"),
                     call("python", code="import subprocess; subprocess.run(['true']); "
                                         "b = bytearray(200 << 20)"),
                     call("shell", command="echo alive"))
    async with recovering(spec=spec) as (sandboxes, _):
        episode = await play(ProductEnv(sandboxes=sandboxes), 0, agent)
    assert episode.status == "completed" and episode.record.valid
    assert "killed" in episode.messages[7]["content"]
    assert episode.messages[9]["content"] == "alive"
    metrics = sandboxes.metrics
    assert not (metrics.recovered or metrics.masked or metrics.agent_caused)


async def test_exhausting_the_sandbox_does_not_dodge_a_bad_reward():
    agent = scripted(EXHAUST_MEMORY)  # then answers with what it saw: wrong
    async with recovering(spec=FRAGILE) as (sandboxes, _):
        episode = await play(ProductEnv(sandboxes=sandboxes), 0, agent)
    assert episode.status == "completed"
    assert episode.record.valid and episode.record.value == 0.0
    assert not sandboxes.metrics.masked


async def test_an_ambiguous_failure_is_re_tested_and_recovered_when_it_replays_faithfully():
    # A garbled answer leaves no trace at the engine: without the injector's testimony it is
    # ambiguous. The re-test (replay, then the call again) succeeds: the episode goes on.
    expected = await baseline(3)
    plan = FaultPlan(scripted={3: FaultKind.GARBLE_RESPONSE})
    async with recovering(plan, testimony=False) as (sandboxes, _):
        episode = await play(ProductEnv(sandboxes=sandboxes), 3)
    assert episode.messages == expected.messages and episode.record == expected.record
    assert sandboxes.metrics.recovered == {"supervisor_fault": 1}
    assert not sandboxes.metrics.masked and not sandboxes.metrics.agent_caused


async def test_an_ambiguous_failure_after_nondeterministic_calls_is_scored_not_masked():
    # The class "crash conditioned on what differs between sandboxes": the replay diverges, so
    # the failure cannot be re-tested faithfully. Ambiguous, it is the agent's outcome, scored.
    agent = scripted(call("shell", command="cat /proc/sys/kernel/random/uuid"),
                     call("shell", command="echo after"), call("shell", command="echo next"))
    plan = FaultPlan(scripted={2: FaultKind.GARBLE_RESPONSE})
    async with recovering(plan, testimony=False) as (sandboxes, _):
        episode = await play(ProductEnv(sandboxes=sandboxes), 0, agent)
    assert episode.status == "completed" and episode.record.valid
    assert "this command destroyed its sandbox (supervisor_fault)" in episode.messages[5]["content"]
    assert "different outcomes when replayed" in episode.messages[5]["content"]
    assert episode.messages[7]["content"] == "next"  # the rebuild serves the next call
    assert sandboxes.metrics.agent_caused == {"supervisor_fault": 1}
    assert not sandboxes.metrics.masked


async def test_the_same_infra_failure_with_its_evidence_is_masked_when_the_replay_diverges():
    # The counterpart: with the injector's testimony the failure is infra, and a rebuild that
    # cannot be faithful masks the episode (an honest agent's `date` must not cost it a reward).
    agent = scripted(call("shell", command="cat /proc/sys/kernel/random/uuid"),
                     call("shell", command="echo after"))
    plan = FaultPlan(scripted={2: FaultKind.GARBLE_RESPONSE})
    async with recovering(plan) as (sandboxes, _):
        episode = await play(ProductEnv(sandboxes=sandboxes), 0, agent)
    assert episode.status == "infra_failed" and not episode.record.valid
    assert sandboxes.metrics.masked == {"supervisor_fault": 1}


async def test_nondeterministic_output_before_exhausting_memory_is_still_scored():
    agent = scripted(call("shell", command="cat /proc/sys/kernel/random/uuid"), EXHAUST_MEMORY)
    async with recovering(spec=FRAGILE) as (sandboxes, _):
        episode = await play(ProductEnv(sandboxes=sandboxes), 0, agent)
    assert episode.status == "completed" and episode.record.valid
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
    # Exhausting the pids limit takes nothing of the platform's down (the lease loop and the
    # supervisor need no new process): the episode is scored, and the sandbox serves on.
    bomb = call("shell", command="sh -c 'f() { f | f & }; f' 2>/dev/null; sleep 1")
    agent = scripted(bomb, call("shell", command="echo still here"))
    async with recovering() as (sandboxes, _):
        episode = await play(ProductEnv(sandboxes=sandboxes), 0, agent)
    assert episode.status == "completed" and episode.record.valid
    assert episode.messages[5]["content"] == "still here"
    assert not sandboxes.metrics.masked
    assert not sandboxes.metrics.recovered and not sandboxes.metrics.agent_caused


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
