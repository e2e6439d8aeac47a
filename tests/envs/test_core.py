"""ToolEnv through its host-side built-ins: the episode contract, budgets, and bad input."""

from __future__ import annotations

import asyncio
import json

import gymnasium
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import given, settings
from hypothesis import strategies as st

import gymbox.envs
from gymbox.envs import EpisodeOver, InvalidOption, Task, ToolDefinitionError, ToolEnv, tool
from gymbox.envs.builtin.calculator import Calculator
from gymbox.envs.builtin.guess_number import GuessNumber
from gymbox.rewards.record import RewardRecord
from gymbox.runtime.errors import SandboxDied


def call(name: str, **arguments) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


@pytest.fixture
def calculator():
    env = Calculator()
    yield env
    env.close()


@pytest.mark.parametrize("env_id", ["gymbox/Calculator-v0", "gymbox/GuessNumber-v0"])
def test_registered_host_envs_pass_check_env(env_id):
    env = gymnasium.make(env_id)
    check_env(env.unwrapped)
    env.close()


def test_make_by_module_path_needs_no_import():
    env = gymnasium.make("gymbox.envs:gymbox/Calculator-v0", max_turns=3)
    assert env.unwrapped.max_turns == 3
    env.close()


def test_a_solved_calculator_episode(calculator):
    prompt, info = calculator.reset(seed=11)
    expression = prompt.removeprefix("What is ").split("?")[0]
    assert info["messages"] == [
        {"role": "system", "content": calculator.system_prompt},
        {"role": "user", "content": prompt},
    ]
    assert info["status"] == "running" and info["reward_record"] is None
    obs, reward, terminated, truncated, info = calculator.step(
        "Let me compute. " + call("calculate", expression=expression))
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert obs == calculator.task.reference
    assert info["tool_calls"][0].name == "calculate"
    assert info["tool_results"][0].ok and info["tool_results"][0].content == obs
    assert info["messages"][-1] == {
        "role": "tool", "name": "calculate", "tool_call_id": "call_1_0", "content": obs}
    obs, reward, terminated, truncated, info = calculator.step(f"<answer>{obs}</answer>")
    assert (reward, terminated, truncated) == (1.0, True, False)
    assert info["status"] == "completed" and info["answer"] == calculator.task.reference
    assert info["reward_record"] == RewardRecord.of(gold=1.0)
    assert [m["role"] for m in info["messages"]] == [
        "system", "user", "assistant", "tool", "assistant"]


def test_a_wrong_answer_scores_zero(calculator):
    calculator.reset(seed=3)
    *_, terminated, _, info = calculator.step("<answer>-1e9</answer>")
    assert terminated and info["reward_record"].value == 0.0 and info["reward_record"].valid


def test_same_seed_same_task_and_different_seeds_differ(calculator):
    prompts = [calculator.reset(seed=s)[0] for s in (5, 5, 6)]
    assert prompts[0] == prompts[1] != prompts[2]
    ids = {calculator.reset(seed=s)[1]["task_id"] for s in range(20)}
    assert len(ids) > 15


def test_agent_errors_are_observations_and_the_episode_goes_on(calculator):
    calculator.reset(seed=0)
    obs, _, terminated, truncated, info = calculator.step(
        call("sqrt", x=2) + call("calculate") + call("calculate", expression="1", base=10)
        + call("calculate", expression=7) + call("calculate", expression="1/0")
        + "<tool_call>{broken</tool_call>"
    )
    assert not terminated and not truncated and info["status"] == "running"
    contents = [m["content"] for m in info["messages"][3:]]
    assert contents == [
        "Error: there is no tool 'sqrt'; tools: 'calculate'.",
        "Error: tool 'calculate': missing argument 'expression'; it takes: expression (a string).",
        "Error: tool 'calculate': unexpected argument 'base'; it takes: expression (a string).",
        "Error: tool 'calculate': argument 'expression' must be a string, got an integer (7).",
        "Error: division by zero",
        contents[5],
    ]
    assert contents[5].startswith("Error: tool call 6 is not valid JSON")
    assert [r.ok for r in info["tool_results"]] == [False] * 5
    assert obs == "\n\n".join(contents)


def test_a_turn_without_a_call_or_answer_is_told_the_protocol(calculator):
    calculator.reset(seed=0)
    obs, *_ , info = calculator.step("hmm, I am not sure")
    assert "<tool_call>" in obs and "<answer>" in obs
    assert info["messages"][-1]["role"] == "user"


def test_calls_run_before_the_answer_in_the_same_turn_ends_the_episode(calculator):
    calculator.reset(seed=0)
    reference = calculator.task.reference
    *_, terminated, _, info = calculator.step(call("calculate", expression="1+1")
                                              + f"<answer>{reference}</answer>")
    assert terminated and info["tool_results"][0].content == "2"
    assert info["reward_record"].value == 1.0


def test_max_turns_truncates_with_a_valid_zero_reward():
    env = Calculator(max_turns=2)
    env.reset(seed=0)
    assert env.step("thinking")[3] is False
    _, reward, terminated, truncated, info = env.step("still thinking")
    assert (reward, terminated, truncated, info["status"]) == (0.0, False, True, "truncated")
    assert info["reward_record"] == RewardRecord.of(gold=0.0)
    env.close()


def test_token_budget_truncates():
    env = Calculator(max_tokens=100, count_tokens=lambda text: len(text.split()))
    env.reset(seed=0)
    _, _, _, truncated, info = env.step("word " * 30)
    assert not truncated and info["tokens"] > 30
    _, _, _, truncated, info = env.step("word " * 30)
    assert truncated and info["status"] == "truncated"
    env.close()


def test_step_after_the_end_and_before_any_reset_raise(calculator):
    with pytest.raises(EpisodeOver, match="call reset"):
        calculator.step("hello")
    calculator.reset(seed=0)
    calculator.step("<answer>0</answer>")
    with pytest.raises(EpisodeOver, match="the episode is completed; call reset"):
        calculator.step("<answer>0</answer>")
    assert calculator.reset(seed=0)[1]["status"] == "running"


def test_bad_reset_options_raise_and_say_what_is_accepted(calculator):
    with pytest.raises(InvalidOption,
                       match="no reset option 'level'; it takes: 'difficulty', 'task'"):
        calculator.reset(options={"level": 3})
    with pytest.raises(InvalidOption, match=r"difficulty must be 1, 2 or 3, got 9"):
        calculator.reset(options={"difficulty": 9})
    with pytest.raises(InvalidOption, match=r"must be a gymbox\.envs\.Task"):
        calculator.reset(options={"task": "2+2"})
    prompt, _ = calculator.reset(options={"difficulty": 1})
    assert prompt.count("(") == 0


def test_a_given_task_is_played_instead_of_a_drawn_one(calculator):
    task = Task(prompt="What is 2 + 3?", reference="5", id="mine")
    prompt, info = calculator.reset(options={"task": task})
    assert prompt == task.prompt and info["task_id"] == "mine"
    assert calculator.step("<answer>5</answer>")[1] == 1.0


def test_a_megabyte_action_is_answered_not_parsed(calculator):
    calculator.reset(seed=0)
    huge = call("calculate", expression="1+1") * ((1 << 20) // 60)
    obs, reward, terminated, truncated, info = calculator.step(huge)
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert "characters long; the limit is 32768" in obs
    assert info["tool_calls"] == [] and info["status"] == "running"
    assert info["messages"][-2]["content"] == huge
    with pytest.raises(TypeError, match="got bytes"):
        calculator.step(b"<answer>1</answer>")


def test_guess_number_by_bisection():
    env = gymnasium.make("gymbox/GuessNumber-v0")
    prompt, _ = env.reset(seed=42, options={"low": 1, "high": 1000})
    assert "from 1 to 1000" in prompt
    low, high = 1, 1000
    for _ in range(10):
        guess = (low + high) // 2
        obs, reward, terminated, _, info = env.step(f"My guess is {guess}")
        if terminated:
            break
        if "too low" in obs:
            low = guess + 1
        else:
            assert "too high" in obs
            high = guess - 1
    assert terminated and reward == 1.0 and info["answer"] == str(guess)
    assert info["messages"][-1] == {"role": "user", "content": f"{guess} is right!"}
    env.close()


def test_guess_number_runs_out_of_turns():
    env = GuessNumber(max_turns=3)
    env.reset(seed=1, options={"low": 1, "high": 1000})
    results = [env.step(text) for text in ("no idea", "1001", "-5")]
    assert results[0][0] == "Reply with a whole number."
    assert results[-1][3] is True and results[-1][4]["reward_record"].value == 0.0
    with pytest.raises(InvalidOption, match="low <= high"):
        env.reset(options={"low": 5, "high": 1})
    env.close()


@tool
def fetch(key: str) -> str:
    """Fetch a value.

    Args:
        key: which one
    """
    raise SandboxDied(f"container died while fetching {key}")  # a fault injected on purpose


class _Flaky(ToolEnv):
    tools = (fetch,)

    def draw_task(self, rng):
        return Task(prompt="Fetch x.", reference="1")

    async def score(self, answer, task, sandbox):
        return RewardRecord.of(gold=1.0)


def test_an_infra_error_ends_the_episode_masked_never_as_an_observation():
    env = _Flaky()
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(call("fetch", key="x"))
    assert (obs, reward, terminated, truncated) == ("", 0.0, False, True)
    assert info["status"] == "infra_failed" and info["infra_error"] == "sandbox_died"
    assert info["reward_record"] == RewardRecord.invalid("sandbox_died")
    assert info["messages"][-1]["role"] == "assistant"
    assert not any("died" in m["content"] for m in info["messages"])
    with pytest.raises(EpisodeOver):
        env.step("<answer>1</answer>")
    env.close()


async def test_async_api_and_sync_api_inside_a_running_loop():
    env = Calculator()
    prompt, _ = await env.areset(seed=9)
    _, reward, terminated, _, _ = await env.astep(f"<answer>{env.task.reference}</answer>")
    assert terminated and reward == 1.0
    assert env.reset(seed=9)[0] == prompt  # the sync API does not need the caller's loop
    await env.aclose()
    env.close()
    env.close()


def test_infos_do_not_share_objects(calculator):
    _, first = calculator.reset(seed=0)
    _, *_, second = calculator.step("x")
    first["messages"].append({"role": "user", "content": "tampered"})
    assert len(second["messages"]) == 4 and len(calculator.messages) == 4


def test_render_ansi_shows_the_conversation():
    env = Calculator(render_mode="ansi")
    env.reset(seed=0)
    env.step(call("calculate", expression="2*3"))
    text = env.render()
    assert "[assistant]" in text and "[tool]\n6" in text
    env.close()


def test_builtin_ids_are_registered_on_import():
    assert set(gymbox.envs.BUILTIN_ENVS) <= set(gymnasium.registry)


def test_concurrent_async_episodes_on_one_loop():
    async def play(seed):
        env = Calculator()
        await env.areset(seed=seed)
        result = await env.astep(f"<answer>{env.task.reference}</answer>")
        await env.aclose()
        return result[1]

    async def main():
        return await asyncio.gather(*(play(s) for s in range(8)))

    assert asyncio.run(main()) == [1.0] * 8


def test_env_tools_must_be_tools_with_distinct_names():
    class Undecorated(_Flaky):
        tools = (len,)

    class Twice(_Flaky):
        tools = (fetch, fetch)

    with pytest.raises(ToolDefinitionError, match="decorate it with @tool"):
        Undecorated()
    with pytest.raises(ToolDefinitionError, match="two tools are named 'fetch'"):
        Twice()


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=300) | st.lists(st.sampled_from([
    "<tool_call>", "</tool_call>", '{"name": "calculate", "arguments": {"expression": ',
    '"1+1"', "}}", "<answer>", "</answer>", "{", '"', "9", " ", "\n"]), max_size=20).map("".join))
def test_any_turn_text_gets_an_answer_never_an_exception(text):
    env = Calculator(max_turns=2)
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(text)
    assert isinstance(obs, str) and info["status"] in ("running", "completed")
    assert terminated == (info["status"] == "completed") and not truncated
    assert reward in (0.0, 1.0) and (reward == 0.0 or terminated)
    env.close()
