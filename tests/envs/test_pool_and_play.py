"""EnvPool on host envs (many episodes, failures contained) and the `play` terminal session."""

from __future__ import annotations

import asyncio
import io
import json

import pytest

from gymbox.envs import EnvPool, Task, ToolEnv, play, tool
from gymbox.envs.builtin.calculator import Calculator
from gymbox.rewards.record import RewardRecord


async def solver(messages, tools):
    """Calls the calculator on the task's expression, then answers with its result."""
    if messages[-1]["role"] == "tool":
        return f"<answer>{messages[-1]['content']}</answer>"
    expression = messages[1]["content"].removeprefix("What is ").split("?")[0]
    arguments = {"expression": expression}
    return f'<tool_call>{json.dumps({"name": "calculate", "arguments": arguments})}</tool_call>'


async def test_pool_plays_every_seed_with_bounded_concurrency():
    active = 0
    peak = 0

    async def slow_solver(messages, tools):
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.01)
        active -= 1
        return await solver(messages, tools)

    made = []

    def make():
        made.append(Calculator())
        return made[-1]

    pool = EnvPool(make, concurrency=3)
    results = [r async for r in pool.run(slow_solver, seeds=range(12))]
    await pool.aclose()
    assert sorted(r.seed for r in results) == list(range(12))
    assert all(r.status == "completed" and r.reward_record == RewardRecord.of(gold=1.0)
               for r in results)
    assert peak == 3 and len(made) == 3
    assert [m["role"] for m in results[0].messages] == [
        "system", "user", "assistant", "tool", "assistant"]


async def test_results_arrive_as_episodes_finish():
    others_seen = asyncio.Event()

    async def blocked_on_seed_zero(messages, tools):
        if messages[1]["content"] == "seed 0":
            await others_seen.wait()  # finishes only after the others were handed out
        return "<answer>1</answer>"

    class Tasks(Calculator):
        def draw_task(self, rng):
            return Task(prompt=f"seed {self.np_random_seed}", reference="1")

    pool = EnvPool(Tasks, concurrency=2)
    order = []
    async for result in pool.run(blocked_on_seed_zero, seeds=[0, 1, 2, 3]):
        order.append(result.seed)
        if len(order) == 3:
            others_seen.set()
    await pool.aclose()
    assert order == [1, 2, 3, 0]


@tool
def explode(x: int) -> str:
    """A tool with a bug in it.

    Args:
        x: anything
    """
    raise KeyError("bug in the env author's code")


class Buggy(ToolEnv):
    tools = (explode,)

    def draw_task(self, rng):
        if self.np_random_seed == 6:
            raise KeyError("bug in the env author's draw_task")
        return Task(prompt=str(self.np_random_seed), reference="0")

    async def score(self, answer, task, sandbox):
        return RewardRecord.of(gold=1.0)


async def test_one_failing_episode_never_takes_down_the_others():
    async def agent(messages, tools):
        if messages[1]["content"] == "3" and messages[-1]["role"] == "user":
            return '<tool_call>{"name": "explode", "arguments": {"x": 1}}</tool_call>'
        if messages[1]["content"] == "5":
            raise RuntimeError("the policy crashed")
        return "<answer>0</answer>"

    pool = EnvPool(Buggy, concurrency=2)
    results = {r.seed: r async for r in pool.run(agent, seeds=range(8))}
    await pool.aclose()
    assert sorted(results) == list(range(8))
    failed = {seed for seed, r in results.items() if r.error is not None}
    assert failed == {5, 6}
    assert isinstance(results[6].error, KeyError) and results[6].reward_record is None
    assert str(results[5].error) == "the policy crashed"
    # A tool that raises on the agent's arguments is an observation; the episode goes on.
    tool_reply = results[3].messages[3]
    assert tool_reply["role"] == "tool" and "KeyError" in tool_reply["content"]
    assert all(results[s].status == "completed" for s in set(range(8)) - failed)


async def test_leaving_early_stops_the_rest():
    pool = EnvPool(Calculator, concurrency=2)
    seen = []
    async for result in pool.run(solver, seeds=range(1000)):
        seen.append(result)
        if len(seen) == 3:
            break
    await pool.aclose()
    assert len(seen) == 3


def test_pool_rejects_bad_arguments():
    with pytest.raises(ValueError, match="concurrency must be at least 1"):
        EnvPool(Calculator, concurrency=0)


async def test_pool_refuses_a_non_tool_env():
    import gymnasium

    pool = EnvPool(lambda: gymnasium.make("CartPole-v1"), concurrency=1)
    with pytest.raises(TypeError, match="make_env must build a ToolEnv"):
        [r async for r in pool.run(solver, seeds=[0])]


def test_play_a_full_session_by_typed_turns():
    env = Calculator()
    prompt, _ = env.reset(seed=4)
    expression = prompt.removeprefix("What is ").split("?")[0]
    typed = io.StringIO(
        "let me think\n.\n"
        '<tool_call>{"name": "calculate",\n'
        f' "arguments": {{"expression": "{expression}"}}}}</tool_call>\n.\n'
        f"<answer>{env.task.reference}</answer>\n.\n"
    )
    shown = io.StringIO()
    info = play(env, seed=4, input=typed, output=shown)
    env.close()
    text = shown.getvalue()
    assert info["status"] == "completed"
    assert '"name": "calculate"' in text and prompt in text
    assert "your turn 1/8" in text and "your turn 3/8" in text
    assert f"── environment ──\n{env.task.reference}\n" in text
    assert "status: completed\nreward: 1\ncomponents: gold=1" in text


def test_play_by_id_stops_cleanly_on_quit_and_on_end_of_input():
    shown = io.StringIO()
    info = play("gymbox/GuessNumber-v0", seed=1, input=io.StringIO("50\n.\n/quit\n"),
                output=shown)
    assert info["status"] == "running" and info["turn"] == 1
    assert "stopped before the episode ended" in shown.getvalue()
    info = play("gymbox/GuessNumber-v0", seed=1, input=io.StringIO(""), output=io.StringIO())
    assert info["turn"] == 0
