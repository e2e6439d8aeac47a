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
