"""Red team, host side: what a model can write against the built-in envs, played through
`gymnasium.make` and `env.step` exactly as an agent's text arrives.

Each attack asserts what a training run relies on: `step` returns (within the product's own
bounds), the episode goes on or is *scored* (never masked by the agent's doing), and the host is
not left computing. The graders' attacks are here too: an answer that crashes or hangs the
grader is scored 0; only a grader that is broken for any input is masked.
"""

from __future__ import annotations

import json
import os
import time

import gymnasium
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gymbox.envs  # noqa: F401 - registers the ids
from gymbox.envs import Task, ToolEnv, tool
from gymbox.envs.builtin.calculator import Calculator
from gymbox.envs.parsing import MAX_CALLS_PER_TURN
from gymbox.envs.tools import HOST_TIMEOUT_S
from gymbox.rewards.gold import ExactMatch, MathEquivalence
from gymbox.rewards.record import RewardRecord

STARTUP_S = 120.0
"""A host worker's start-up bound (gymbox.envs.host.STARTUP_TIMEOUT_S): the first host call
of a process may wait for it; a call's own deadline starts after."""


def call(name: str, **arguments) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


@pytest.fixture
def calculator():
    env = gymnasium.make("gymbox/Calculator-v0")
    env.reset(seed=0)
    env.step(call("calculate", expression="1 + 1"))  # the host worker is up before timing
    yield env
    env.close()


def timed_step(env, text: str):
    started = time.monotonic()
    out = env.step(text)
    return (*out, time.monotonic() - started)


GIANT_EXPRESSIONS = [
    "((9**64)**64)**64",
    "(((9**64)**64)**64)**64",
    "9**64**64",
    "2**64*2**64*2**64*2**64*2**64*2**64*2**64*2**64*2**64*2**64*2**64*2**64*2**64*2**64",
    "(" * 200 + "1" + ")" * 200,
    "1" * 499,
    "-" * 499 + "1",
    "1/0",
    "(-8) ** 0.5",
    "1e308 * 10",
    "\ud800 + 1",
    "__import__('os').system('echo pwned')",
    "x" * 10_000,
]


@pytest.mark.parametrize("expression", GIANT_EXPRESSIONS, ids=range(len(GIANT_EXPRESSIONS)))
def test_a_giant_or_malicious_expression_is_an_error_observation_in_time(calculator, expression):
    obs, _, terminated, truncated, info, took = timed_step(
        calculator, call("calculate", expression=expression))
    assert took < HOST_TIMEOUT_S + 5
    assert info["status"] == "running" and not (terminated or truncated)
    assert obs.startswith("Error:") or obs.lstrip("-").replace(".", "").isdigit(), obs
    assert not obs.startswith("pwned")  # nothing ran: it is named in the error only
    _, _reward, terminated, _, info = calculator.step("<answer>0</answer>")
    assert terminated and info["reward_record"].valid  # scored, never masked


@tool(timeout_s=1.0)
def spin(pid_file: str) -> str:
    """Compute forever.

    Args:
        pid_file: where to write the pid of the process computing
    """
    with open(pid_file, "w") as out:
        out.write(str(os.getpid()))
    while True:
        pass


@tool(max_output_chars=1000)
def flood(n: int) -> str:
    """Return n characters.

    Args:
        n: how many
    """
    return "x" * n


@tool
def crash(kind: str) -> str:
    """Fail in the way asked.

    Args:
        kind: recursion, memory, unicode, exit or value
    """
    if kind == "recursion":
        def down(n):
            return down(n + 1)
        return down(0)
    if kind == "memory":
        return str(len(bytearray(8 << 30)))
    if kind == "unicode":
        return "\ud800".encode()
    if kind == "exit":
        os._exit(3)
    raise ValueError(kind)


class HostTools(ToolEnv):
    tools = (spin, flood, crash)
    verifier = ExactMatch()

    def draw_task(self, rng):
        return Task(prompt="Try the tools.", reference="42")


def test_a_cpu_bound_host_tool_is_stopped_at_its_deadline_and_the_host_is_not_left_computing(
        tmp_path):
    env = HostTools()
    env.reset(seed=0)
    pid_file = tmp_path / "pid"
    env.step(call("flood", n=1))  # the worker is up
    obs, _, _, _, info, took = timed_step(env, call("spin", pid_file=str(pid_file)))
    assert obs == "Error: the host computation ran past its 1 s deadline and was stopped."
    assert took < 1.0 + 5 and info["status"] == "running"
    worker = int(pid_file.read_text())
    assert worker != os.getpid()
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)  # killed, not computing in the background
    obs, *_ = env.step(call("flood", n=3))
    assert obs == "xxx"  # a fresh worker serves the next call
    env.close()


@pytest.mark.parametrize("kind", ["recursion", "memory", "unicode", "exit", "value"])
def test_any_exception_or_crash_of_a_host_tool_is_an_observation(kind):
    env = HostTools()
    env.reset(seed=0)
    obs, reward, terminated, _truncated, info, took = timed_step(env, call("crash", kind=kind))
    assert took < STARTUP_S + HOST_TIMEOUT_S
    assert obs.startswith("Error:") and info["status"] == "running", obs
    assert not info["tool_results"][0].ok
    _, reward, terminated, _, info = env.step("<answer>42</answer>")
    assert terminated and reward == 1.0
    env.close()


def test_a_huge_tool_output_is_cut_to_the_tools_bound():
    env = HostTools()
    env.reset(seed=0)
    obs, *_ = env.step(call("flood", n=50_000_000))
    assert obs.startswith("x" * 1000 + "\n[output truncated: 50000000 characters")
    assert len(obs) < 1200
    env.close()


MALFORMED_TURNS = [
    "<tool_call>" * 5000,
    "<tool_call>{" * 2000,
    "<tool_call>" + "[" * 100_000 + "</tool_call>",
    "<tool_call>" + '{"a":' * 30_000 + "</tool_call>",
    '<tool_call>{"name": 5, "arguments": {}}</tool_call>',
    '<tool_call>{"name": "calculate", "arguments": [1, 2]}</tool_call>',
    '<tool_call>{"name": "calculate", "arguments": "{\\"expression\\": "}</tool_call>',
    '<tool_call>{"name": "calculate", "arguments": {"expression": NaN}}</tool_call>',
    '<tool_call>{"name": "calculate", "arguments": {"expression": ' + "9" * 5000 + "}}",
    '<tool_call>{"name": "calculate", "arguments": {"expression": "1", "x": '
    + "[" * 900 + "]" * 900 + "}}</tool_call>",
    '<tool_call>{"name": "calculate", "arguments": {"expression": "\\ud800"}}</tool_call>',
    '<tool_call>{"name": "\\udfff", "arguments": {}}</tool_call>',
    '{"name": "calculate", "arguments": {"expression": "1+1"}}' * 200,
    "\x00\x01\x02" * 1000,
    "x" * (1 << 20),
]


@pytest.mark.parametrize("text", MALFORMED_TURNS, ids=range(len(MALFORMED_TURNS)))
def test_a_malformed_turn_is_answered_not_raised(calculator, text):
    obs, _reward, _terminated, _truncated, info, took = timed_step(calculator, text)
    assert took < HOST_TIMEOUT_S * MAX_CALLS_PER_TURN + 5
    assert isinstance(obs, str) and obs and info["status"] == "running"
    assert calculator.observation_space.contains(obs)


def test_lone_surrogates_in_answers_are_scored_not_raised(calculator):
    _, reward, terminated, _, info = calculator.step("<answer>\ud800\udfff</answer>")
    assert terminated and info["reward_record"].valid and reward == 0.0


def test_an_absurd_guess_is_answered():
    env = gymnasium.make("gymbox/GuessNumber-v0")
    env.reset(seed=0)
    obs, _, _, _, info = env.step("9" * 5000)
    assert info["status"] == "running" and "too large" in obs
    env.close()


# -- graders ------------------------------------------------------------------------------------


def fragile_equivalent(answer: str, reference: str) -> bool:
    """A verifier with bugs an answer can reach: it raises on one input and hangs on another."""
    if "boom" in answer:
        raise RuntimeError("the verifier's parser fell over")
    if "hang" in answer:
        while True:
            pass
    return answer.strip() == reference


class Fragile:
    equivalent = staticmethod(fragile_equivalent)


class FragileGrader(ToolEnv):
    verifier = Fragile()
    score_timeout_s = 1.0
    max_answer_chars = 100

    def draw_task(self, rng):
        return Task(prompt="Say 42.", reference="42")


def answer(env: ToolEnv, text: str):
    env.reset(seed=0)
    started = time.monotonic()
    _, reward, _terminated, _truncated, info = env.step(f"<answer>{text}</answer>")
    return reward, info, time.monotonic() - started


@pytest.mark.parametrize("attack", ["boom", "hang"])
def test_an_answer_that_breaks_the_grader_is_scored_zero_not_masked(attack):
    env = FragileGrader()
    answer(env, "42")  # the host worker is up before timing
    reward, info, took = answer(env, attack)
    record = info["reward_record"]
    assert info["status"] == "completed" and record.valid and reward == 0.0
    assert record.reason == "answer_broke_grader"
    assert info["grader_failure"] == ("grader_crashed" if attack == "boom" else "grader_timeout")
    # three bounded tries at most: the answer, the answer again, the reference
    assert took < 3 * (FragileGrader.score_timeout_s + 5)
    reward, info, _ = answer(env, "42")
    assert reward == 1.0  # the grader still works for honest answers
    env.close()


def test_an_answer_over_the_documented_size_never_reaches_the_grader():
    env = FragileGrader()
    _reward, info, took = answer(env, "hang" * 100)
    assert info["reward_record"] == RewardRecord(
        value=0.0, components=RewardRecord.of(gold=0.0).components, reason="answer_too_long")
    assert took < 1.0  # not graded at all
    env.close()


class BrokenGrader(FragileGrader):
    """A grader broken for every input (a bad install): the platform's failure, masked."""

    async def score(self, answer, task, sandbox):
        raise ImportError("math_verify is not installed")


class HungGrader(FragileGrader):
    async def score(self, answer, task, sandbox):
        return await super().score("hang", task, sandbox)


@pytest.mark.parametrize(("env_class", "kind"),
                         [(BrokenGrader, "grader_crashed"), (HungGrader, "grader_timeout")])
def test_a_grader_broken_for_any_input_is_masked_never_zero(env_class, kind):
    env = env_class()
    _reward, info, took = answer(env, "42")
    assert info["status"] == "infra_failed" and info["infra_error"] == kind
    assert info["reward_record"] == RewardRecord.invalid(kind)
    assert took < 3 * (env_class.score_timeout_s + 5)
    env.close()


class MathAnswers(ToolEnv):
    verifier = MathEquivalence()

    def draw_task(self, rng):
        return Task(prompt="What is 1/2?", reference="\\frac{1}{2}")


@pytest.mark.parametrize("text", [
    "\\boxed{9^{9^{9^{9^{9}}}}}",
    "\\boxed{" + "\\frac{1}{" * 60 + "2" + "}" * 60 + "}",
    "\\boxed{(((((((((((((((((((((((x)))))))))))))))))))))))}",
    "\\boxed{\\sum_{n=1}^{10^{100}} n}",
    "$" * 500,
])
def test_adversarial_latex_answers_are_scored_in_bounded_time(text):
    env = MathAnswers()
    reward, info, took = answer(env, text)
    assert info["status"] in ("completed",), info.get("infra_error")
    assert info["reward_record"].valid and reward == 0.0
    assert took < STARTUP_S + 3 * (MathAnswers.score_timeout_s + 5)
    env.close()


def test_an_honest_math_answer_still_scores():
    env = MathAnswers()
    reward, _info, _ = answer(env, "0.5")
    assert reward == 1.0
    env.close()


# -- fuzz ---------------------------------------------------------------------------------------

ANY_CHARACTER = st.characters(codec=None, categories=None)  # surrogates and controls included
CALLISH = st.one_of(
    st.text(ANY_CHARACTER, max_size=300),
    st.builds(lambda name, body: f'<tool_call>{{"name": "{name}", "arguments": {body}}}',
              st.sampled_from(["calculate", "Calculate", "", "\ud800"]),
              st.one_of(st.text(ANY_CHARACTER, max_size=80),
                        st.builds(json.dumps, st.recursive(
                            st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                                      st.text(ANY_CHARACTER, max_size=20)),
                            lambda inner: st.lists(inner, max_size=4)
                            | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                            max_leaves=20)))),
    st.builds(lambda e: call("calculate", expression=e), st.text(ANY_CHARACTER, max_size=80)),
    st.builds(lambda a: f"<answer>{a}</answer>", st.text(ANY_CHARACTER, max_size=80)),
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(turns=st.lists(CALLISH, min_size=1, max_size=4))
def test_fuzz_no_model_text_makes_step_raise_or_hang(calculator_env, turns):
    calculator_env.reset(seed=0)
    for text in turns:
        started = time.monotonic()
        obs, _reward, terminated, truncated, info = calculator_env.step(text)
        assert time.monotonic() - started < HOST_TIMEOUT_S * MAX_CALLS_PER_TURN + 5
        assert calculator_env.observation_space.contains(obs)
        assert info["status"] in ("running", "completed", "truncated")
        if terminated or truncated:
            assert info["reward_record"].valid  # scored: the agent cannot mask its episode
            break


@pytest.fixture(scope="module")
def calculator_env():
    env = Calculator(max_turns=4)
    yield env
    env.close()
