"""The example custom env (examples/sql_env.py) works as its docstring says, on the real engine."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.docker


def _load_example():
    spec = importlib.util.spec_from_file_location("sql_env", ROOT / "examples" / "sql_env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sql_env = _load_example()


def call(query: str) -> str:
    return f"<tool_call>{json.dumps({'name': 'sql', 'arguments': {'query': query}})}</tool_call>"


def test_the_gold_answer_is_what_the_rows_say():
    env = sql_env.ShopSQL()
    task = env.draw_task(np.random.default_rng(3), question="customer_orders")
    customer = task.prompt.removeprefix("How many orders did ").removesuffix(" place?")
    rows = task.data["rows"]
    ids = {name: i for i, name, _ in rows["customers"]}
    assert task.reference == str(sum(1 for o in rows["orders"] if o[1] == ids[customer]))


def test_an_episode_answered_by_querying_the_sandbox():
    env = gymnasium.make("examples/ShopSQL-v0")
    prompt, _ = env.reset(seed=8, options={"question": "customer_orders"})
    customer = prompt.removeprefix("How many orders did ").removesuffix(" place?")
    obs, *_ = env.step(call(
        "SELECT COUNT(*) AS n FROM orders JOIN customers c ON c.id = orders.customer_id "
        f"WHERE c.name = '{customer}'"))
    header, count = obs.splitlines()
    assert header == "n"
    obs, _, _, _, info = env.step(call("DELETE FROM orders"))
    assert obs.startswith("Error: SQL error: attempt to write a readonly database")
    assert not info["tool_results"][0].ok
    obs, *_ = env.step(call("SELEC nonsense"))
    assert "SQL error" in obs and "syntax error" in obs
    _, reward, terminated, _, info = env.step(f"The answer is <answer>{count}</answer>")
    assert terminated and reward == 1.0
    env.close()


def test_example_passes_check_env():
    env = gymnasium.make("examples/ShopSQL-v0")
    check_env(env.unwrapped)
    env.close()


def test_running_the_example_plays_it_in_the_terminal():
    env = sql_env.ShopSQL()
    task = env.draw_task(np.random.default_rng(0))  # what reset(seed=0) draws
    turns = f"<answer>{task.reference}</answer>\n.\n"
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "sql_env.py"), "0"],
                          input=turns, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert task.prompt in done.stdout
    assert "status: completed\nreward: 1" in done.stdout
