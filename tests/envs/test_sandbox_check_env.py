"""The sandbox envs pass Gymnasium's checker through the sync API, each with a private pool."""

from __future__ import annotations

import gymnasium
import pytest
from gymnasium.utils.env_checker import check_env

import gymbox.envs  # noqa: F401 - registers the ids

pytestmark = pytest.mark.docker


@pytest.mark.parametrize(
    "env_id", ["gymbox/PythonCalc-v0", "gymbox/PythonMath-v0", "gymbox/ShellTask-v0"]
)
def test_registered_sandbox_envs_pass_check_env(env_id, docker_client):
    env = gymnasium.make(env_id)
    check_env(env.unwrapped)
    _, info = env.reset(seed=0)
    tool = info["tools"][0]["function"]["name"]
    command = "print(6 * 7)" if tool == "python" else "echo $((6 * 7))"
    argument = "code" if tool == "python" else "command"
    obs, *_ = env.step(f'<tool_call>{{"name": "{tool}", "arguments": '
                       f'{{"{argument}": "{command}"}}}}</tool_call>')
    assert obs == "42"
    sandbox_id = env.unwrapped.sandbox.id
    env.close()
    assert docker_client.api.containers(all=True, filters={"id": sandbox_id}) == []


def test_the_envs_own_sandbox_recovers_a_kill_from_outside(docker_client):
    """gymnasium.make with no sandbox source given: the private pool is behind recovery."""
    env = gymnasium.make("gymbox/PythonMath-v0")
    env.reset(seed=0)
    env.step('<tool_call>{"name": "python", "arguments": {"code": "x = 41"}}</tool_call>')
    first = env.unwrapped.sandbox.id
    docker_client.containers.get(first).kill()  # a fault injected on purpose
    obs, _, _, _, info = env.step(
        '<tool_call>{"name": "python", "arguments": {"code": "print(x + 1)"}}</tool_call>')
    assert (obs, info["status"]) == ("42", "running")
    second = env.unwrapped.sandbox.id
    assert second != first
    _, reward, terminated, _, info = env.step("<answer>0</answer>")
    assert terminated and info["reward_record"].valid and reward == 0.0
    env.close()
    assert docker_client.api.containers(all=True, filters={"id": second}) == []
