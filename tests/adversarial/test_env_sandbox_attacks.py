"""Red team, sandbox side: an agent attacking its sandbox through the built-in envs' tools,
with the env's *own* sandboxes (`gymnasium.make`, no recovery configured by the user) and over
a plain `SandboxPool` in an `EnvPool`: recovery and attribution must be on by default.

Each attack asserts: `step` returns, the episode is scored (a valid record; a wrong answer 0),
the sandbox still serves the agent afterwards, and no container outlives the env.
"""

from __future__ import annotations

import json
import re

import gymnasium
import numpy as np
import pytest

import gymbox.envs  # noqa: F401 - registers the ids
from gymbox.envs import EnvPool
from gymbox.envs.builtin.python_math import PythonMath
from gymbox.runtime import SandboxPool

pytestmark = pytest.mark.docker


def call(name: str, **arguments) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


# Everything the agent's uid can take at once: the writable mounts, memory, processes.
DESTROY = (
    "import subprocess\n"
    "subprocess.run('for d in /workspace /tmp /dev/shm; do head -c 600M /dev/zero > $d/fill; "
    "done; for i in $(seq 400); do sleep 30 & done', shell=True)\n"
    "hog = [bytearray(64 << 20) for _ in range(64)]\n"
)


def conditioned(condition: str) -> str:
    """DESTROY, only when ``condition`` holds inside the sandbox: the crash that breaks the
    first sandbox and would not break a replay that sees a different host or time."""
    return f"import os, socket, time\nif {condition}:\n" + "".join(
        f"    {line}\n" for line in DESTROY.splitlines())


ATTACKS = {
    "destroy": DESTROY,
    "hostname": conditioned("socket.gethostname() == {host!r}"),  # the first sandbox's name
    "time": conditioned("int(time.time() * 10) % 2 == 0"),  # half the time: a replay may differ
    "pid": conditioned("os.getpid() % 2 == 0"),
    "surrogate": "print('\ud800')",
    "huge_output": "print('x' * (100 << 20))",
    "kill_everything": "import os, signal\nos.kill(-1, signal.SIGKILL)",
}


def containers_of(docker_client, ids: set[str]) -> list:
    return [c for c in docker_client.api.containers(all=True) if c["Id"] in ids]


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_an_attack_on_the_envs_own_sandbox_is_scored_and_the_sandbox_survives(
        attack, docker_client):
    env = gymnasium.make("gymbox/PythonMath-v0")
    env.reset(seed=0)
    seen = {env.unwrapped.sandbox.id}
    host, *_ = env.step(call("python", code="import socket; socket.gethostname()"))
    assert host
    code = ATTACKS[attack].replace("{host!r}", repr(host))
    obs, _, terminated, truncated, info = env.step(call("python", code=code))
    assert info["status"] == "running" and not (terminated or truncated), info.get("infra_error")
    assert len(obs) < 200_000  # capped, whatever the cell printed
    seen.add(env.unwrapped.sandbox.id)
    obs, *_, info = env.step(call("python", code="print(6 * 7)"))
    assert obs == "42" and info["status"] == "running"  # the sandbox serves the agent still
    _, reward, terminated, _, info = env.step("<answer>-1</answer>")
    assert terminated and info["reward_record"].valid and reward == 0.0  # scored, not masked
    seen.add(env.unwrapped.sandbox.id if env.unwrapped.sandbox else next(iter(seen)))
    env.close()
    assert containers_of(docker_client, seen) == []


def test_a_shell_fork_bomb_is_scored_and_the_sandbox_survives():
    env = gymnasium.make("gymbox/ShellTask-v0")
    env.reset(seed=0, options={"chore": "sum_numbers"})
    obs, *_, info = env.step(call("shell", command=":(){ :|:& };: ; sleep 2; echo done"))
    assert info["status"] == "running"
    obs, *_ = env.step(call("shell", command="echo alive"))
    assert obs == "alive"
    _, reward, terminated, _, info = env.step("<answer>done</answer>")
    assert terminated and info["reward_record"].valid and reward == 0.0
    env.close()


async def test_env_pool_over_a_plain_pool_scores_attackers_and_recovers_the_honest(
        docker_client):
    """A plain SandboxPool, as the docs' EnvPool example has it: attackers on odd seeds, honest
    solvers on even ones, one honest sandbox killed from outside mid-episode."""
    async with SandboxPool(size=3) as sandboxes:
        envs = []

        def make():
            envs.append(PythonMath(sandboxes=sandboxes))
            return envs[-1]

        doomed = PythonMath().draw_task(np.random.default_rng(2), template="savings").prompt

        async def agent(messages, tools):
            prompt = messages[1]["content"]
            seed_is_odd = prompt != doomed and prompt in attackers
            if messages[-1]["role"] == "tool":
                if seed_is_odd and len(messages) < 6:
                    return call("python", code=DESTROY)
                return f"<answer>{messages[-1]['content']}</answer>"
            if prompt == doomed:
                sandbox = next(e.sandbox for e in envs if e.task and e.task.prompt == doomed)
                docker_client.containers.get(sandbox.id).kill()  # a fault injected on purpose
            start, weekly, weeks, spent = map(int, re.findall(r"\d+", prompt)[:4])
            return call("python", code=f"print({start} + {weekly} * {weeks} - {spent})")

        attackers = {PythonMath().draw_task(np.random.default_rng(s), template="savings").prompt
                     for s in (1, 3, 5)}
        pool = EnvPool(make, concurrency=3)
        results = {r.seed: r async for r in pool.run(agent, seeds=range(6),
                                                     options={"template": "savings"})}
        await pool.aclose()
    assert all(r.error is None and r.reward_record.valid for r in results.values()), {
        s: (r.status, r.reward_record, r.error) for s, r in results.items()}
    assert {s for s, r in results.items() if r.reward_record.value == 1.0} >= {0, 2, 4}
