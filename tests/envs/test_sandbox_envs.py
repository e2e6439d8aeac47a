"""The sandbox envs against the real engine: PythonMath-v0, ShellTask-v0, EnvPool over a pool."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import pytest_asyncio

import gymbox.envs  # noqa: F401 - registers the ids
from gymbox.envs import EnvPool
from gymbox.envs.builtin.python_math import PythonMath
from gymbox.envs.builtin.shell_task import CHORES, ShellTask
from gymbox.rewards.record import RewardRecord
from gymbox.runtime import SandboxPool, SandboxStartError
from gymbox.runtime.recovery import RecoveringSandboxes, RecoveryPolicy

pytestmark = [pytest.mark.docker, pytest.mark.asyncio(loop_scope="module")]


def call(name: str, **arguments) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sandboxes():
    async with SandboxPool(size=4) as pool:
        yield pool


async def test_python_state_persists_across_turns_and_answers_are_scored(sandboxes):
    env = PythonMath(sandboxes=sandboxes)
    _, info = await env.areset(seed=0, options={"template": "savings"})
    assert info["tools"][0]["function"]["name"] == "python"
    start, weekly, weeks, spent = map(int, re.findall(r"\d+", env.task.prompt)[:4])
    obs, *_ = await env.astep(call("python", code=f"total = {start} + {weekly} * {weeks}"))
    assert obs == "[no output]"
    obs, _, _, _, info = await env.astep(call("python", code=f"total - {spent}"))
    assert obs == env.task.reference
    result = info["tool_results"][0]
    assert result.ok and result.exec_result.stdout == f"{env.task.reference}\n"
    _, reward, terminated, _, info = await env.astep(f"<answer>{obs}</answer>")
    assert terminated and reward == 1.0 and info["reward_record"] == RewardRecord.of(gold=1.0)
    assert [r.call.arguments["code"] for r in env.journal] == [
        f"total = {start} + {weekly} * {weeks}", f"total - {spent}"]
    await env.aclose()


async def test_the_agents_failing_code_is_an_observation_not_an_infra_failure(sandboxes):
    env = PythonMath(sandboxes=sandboxes)
    await env.areset(seed=1)
    obs, _, terminated, truncated, info = await env.astep(call("python", code="1 / 0"))
    assert "ZeroDivisionError" in obs and "[exit code 1]" in obs
    assert not info["tool_results"][0].ok and info["status"] == "running"
    assert not (terminated or truncated)
    obs, *_ = await env.astep(call("python", code="import os; os._exit(3)"))
    assert "interpreter was restarted" in obs
    obs, *_ = await env.astep(call("python", code="print('still here')"))
    assert obs == "still here"
    obs, *_ = await env.astep(call("python", code="print(1)\u0000"))
    assert obs.startswith("Error: the sandbox refused the call: code contains a NUL byte")
    await env.aclose()


async def test_a_sandbox_killed_from_outside_is_recovered_even_from_a_plain_pool(
        sandboxes, docker_client):
    env = PythonMath(sandboxes=sandboxes)  # a plain SandboxPool: the env adds recovery itself
    await env.areset(seed=2)
    await env.astep(call("python", code="x = 1"))
    first = env.sandbox.id
    docker_client.containers.get(first).kill()  # a fault injected on purpose
    obs, _, terminated, truncated, info = await env.astep(call("python", code="print(x)"))
    assert (obs, terminated, truncated, info["status"]) == ("1", False, False, "running")
    assert env.sandbox.id != first  # a fresh sandbox, rebuilt from the journal
    *_, info = await env.astep("<answer>0</answer>")
    assert info["status"] == "completed" and info["reward_record"].valid
    assert env.sandbox is None
    await env.aclose()


SOLUTIONS = {
    "count_errors": "grep -c ERROR logs/app.log > error_count.txt",
    "sum_numbers": "python3 -c 'import sys; print(sum(map(int, sys.stdin)))' "
                   "< data/numbers.txt > total.txt",
    "sort_names": "LC_ALL=C sort names.txt > sorted.txt",
    "copy_csv": "mkdir backup && cp data/*.csv backup/",
}


@pytest.mark.parametrize("chore", sorted(CHORES))
async def test_shell_chores_are_checked_in_the_container(sandboxes, chore):
    env = ShellTask(sandboxes=sandboxes)
    await env.areset(seed=5, options={"chore": chore})
    _, reward, terminated, _, info = await env.astep(
        call("shell", command=SOLUTIONS[chore]) + "<answer>done</answer>")
    assert info["tool_results"][0].ok, info["tool_results"][0].content
    assert terminated and reward == 1.0
    await env.areset(seed=5, options={"chore": chore})  # a fresh sandbox: nothing done yet
    _, reward, terminated, _, _ = await env.astep("<answer>done</answer>")
    assert terminated and reward == 0.0
    await env.aclose()


async def test_a_wrong_file_scores_zero(sandboxes):
    env = ShellTask(sandboxes=sandboxes)
    await env.areset(seed=6, options={"chore": "count_errors"})
    obs, *_ = await env.astep(call("shell", command="echo 999999 > error_count.txt; ls"))
    assert "error_count.txt" in obs and "logs" in obs
    _, reward, *_ = await env.astep("<answer>done</answer>")
    assert reward == 0.0
    await env.aclose()


async def test_env_pool_over_one_sandbox_pool_recovers_a_dead_sandbox(sandboxes, docker_client):
    async def agent(messages, tools):
        """Reads the numbers off a savings problem, computes in Python, answers the output."""
        if messages[-1]["role"] == "tool":
            return f"<answer>{messages[-1]['content']}</answer>"
        start, weekly, weeks, spent = map(int, re.findall(r"\d+", messages[1]["content"])[:4])
        return call("python", code=f"print({start} + {weekly} * {weeks} - {spent})")

    envs = []

    def make():
        envs.append(PythonMath(sandboxes=sandboxes))
        return envs[-1]

    async def agent_that_breaks_seed_4(messages, tools):
        if messages[1]["content"] == doomed_prompt and messages[-1]["role"] == "user":
            sandbox = next(e.sandbox for e in envs if e.task and e.task.prompt == doomed_prompt)
            docker_client.containers.get(sandbox.id).kill()  # a fault injected on purpose
        return await agent(messages, tools)

    doomed_prompt = PythonMath().draw_task(np.random.default_rng(4), template="savings").prompt
    pool = EnvPool(make, concurrency=3)
    results = {r.seed: r async for r in pool.run(agent_that_breaks_seed_4, seeds=range(8),
                                                 options={"template": "savings"})}
    await pool.aclose()
    assert sorted(results) == list(range(8))
    assert all(r.status == "completed" and r.reward_record.value == 1.0
               for r in results.values()), {s: r.status for s, r in results.items()}
    assert len(envs) == 3


class _DiesDuringSetup(PythonMath):
    """A fault injected on purpose: the container is killed while the task is being set up."""

    killer = None

    async def setup(self, task, sandbox):
        self.killer.containers.get(sandbox.id).kill()
        await sandbox.write_file("input.txt", "never written")


async def test_a_sandbox_lost_during_setup_is_recovered_before_the_first_turn(sandboxes,
                                                                             docker_client):
    _DiesDuringSetup.killer = docker_client
    env = _DiesDuringSetup(sandboxes=sandboxes)
    await env.areset(seed=0)
    obs, *_, info = await env.astep(call("python", code="print(open('input.txt').read())"))
    assert obs == "never written" and info["status"] == "running"
    await env.aclose()


class _NoSandboxes:
    """A sandbox source whose every start fails: the platform cannot give a first sandbox."""

    def acquire(self):
        raise SandboxStartError("the engine refused to start a container")  # on purpose


async def test_no_first_sandbox_is_an_infra_failure_not_a_crash():
    async def never_called(messages, tools):
        raise AssertionError("no episode should start")

    policy = RecoveryPolicy(deadline_s=1.0)
    pool = EnvPool(lambda: PythonMath(sandboxes=RecoveringSandboxes(_NoSandboxes(), policy)),
                   concurrency=2)
    results = [r async for r in pool.run(never_called, seeds=range(3))]
    await pool.aclose()
    assert {r.status for r in results} == {"infra_failed"}
    assert not any(r.reward_record.valid for r in results)
