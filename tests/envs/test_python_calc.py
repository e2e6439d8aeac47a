"""PythonCalc-v0: the tasks it draws, its reset option, and its scripted expert."""

from __future__ import annotations

import numpy as np
import pytest

from gymbox.envs import InvalidOption
from gymbox.envs.builtin.calculator import Calculator
from gymbox.envs.builtin.python_calc import PythonCalc


@pytest.mark.parametrize("operations", [1, 2, 3])
def test_tasks_have_the_asked_number_of_operations_and_the_right_value(operations):
    for seed in range(20):
        task = PythonCalc().draw_task(np.random.default_rng(seed), operations=operations)
        expression = task.data["expression"]
        assert sum(expression.count(f" {op} ") for op in "+-*") == operations
        assert int(task.reference) == eval(expression)  # Python's own arithmetic as the oracle
        assert expression in task.prompt and "python tool" in task.prompt


def test_a_bad_operations_option_says_what_is_allowed():
    env = PythonCalc()
    with pytest.raises(InvalidOption, match="operations must be 1, 2 or 3"):
        env.reset(seed=0, options={"operations": 4})
    env.close()


def test_an_env_without_a_scripted_expert_says_how_to_do_without_one():
    env = Calculator()
    env.reset(seed=0)
    assert not env.can_demonstrate and PythonCalc().can_demonstrate
    with pytest.raises(NotImplementedError, match="no scripted expert"):
        env.demonstrate()
    env.close()


@pytest.mark.docker
def test_the_scripted_expert_solves_the_task_in_the_sandbox(docker_client):
    env = PythonCalc()
    _, info = env.reset(seed=11, options={"operations": 3})
    obs, *_ = env.step(env.demonstrate())
    assert obs == env.task.reference
    obs, reward, terminated, truncated, info = env.step(env.demonstrate())
    assert (reward, terminated, truncated, info["status"]) == (1.0, True, False, "completed")
    assert info["answer"] == env.task.reference
    env.close()
