"""`gymbox play/train/eval` take any registered id and Gymnasium's `module:id` form, as a user
types them: real subprocesses, a module of the user's own in the directory they run from."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

MY_ENVS = '''
import gymnasium
from gymbox.envs import Task, ToolEnv
from gymbox.rewards.gold import ExactMatch


class Echo(ToolEnv):
    verifier = ExactMatch()

    def draw_task(self, rng):
        word = str(rng.choice(["apple", "pear", "plum"]))
        return Task(prompt=f"Answer with the word {word}.", reference=word)


gymnasium.register(id="mine/Echo-v0", entry_point=Echo, kwargs={"max_turns": 2})
'''


def gymbox(*args: str, cwd: Path, stdin: str = "", timeout: float = 300):
    """The CLI as the `gymbox` script runs it: `-P`, so the current directory is not on
    sys.path unless gymbox puts it there; gymbox itself comes from this checkout."""
    return subprocess.run(
        [sys.executable, "-P", "-m", "gymbox.cli", *args], input=stdin, capture_output=True,
        text=True, timeout=timeout, cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"},
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "my_envs.py").write_text(MY_ENVS)
    return tmp_path


def test_play_takes_module_colon_id_from_the_current_directory(project):
    proc = gymbox("play", "my_envs:mine/Echo-v0", "--seed", "0", cwd=project,
                  stdin="<answer>nothing</answer>\n.\n")
    assert proc.returncode == 0, proc.stderr
    assert "── task ──\nAnswer with the word" in proc.stdout
    assert "status: completed\nreward: 0" in proc.stdout


def test_an_id_the_module_does_not_register_says_so_in_one_line(project):
    proc = gymbox("play", "my_envs:mine/Nope-v0", cwd=project)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1
    assert "'mine/Nope-v0' (module 'my_envs' was imported but did not register it)" in proc.stderr
    assert "mine/Echo-v0" in proc.stderr  # what is registered, the user's own included


def test_a_module_that_cannot_be_imported_is_one_line_before_any_model_loads(project):
    for command in (["play", "no_such_module:mine/Echo-v0"],
                    ["train", "--env", "no_such_module:mine/Echo-v0"],
                    ["eval", "--env", "no_such_module:mine/Echo-v0"]):
        proc = gymbox(*command, cwd=project, timeout=60)
        assert proc.returncode == 1, (command, proc.stderr)
        assert proc.stderr.count("\n") == 1
        assert "cannot import 'no_such_module' to find env 'mine/Echo-v0'" in proc.stderr


def test_train_rejects_a_plain_id_that_is_not_registered(project):
    proc = gymbox("train", "--env", "mine/Echo-v0", cwd=project, timeout=60)
    assert proc.returncode == 1
    assert "unknown env 'mine/Echo-v0'" in proc.stderr and "module:id" in proc.stderr


def test_eval_runs_a_module_colon_id_env_end_to_end(project, tiny_model_dir):
    proc = gymbox("eval", "--env", "my_envs:mine/Echo-v0", "--model", str(tiny_model_dir),
                  "--set", "eval.episodes=2", "--set", "sampling.max_new_tokens=8",
                  cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert "my_envs:mine/Echo-v0: accuracy 0.000" in proc.stdout
    assert "on 2 held-out tasks (valid 100%)" in proc.stdout


@pytest.mark.docker
def test_play_takes_the_examples_module_form():
    proc = gymbox("play", "examples.sql_env:examples/ShopSQL-v0", "--seed", "3", cwd=REPO,
                  stdin='<tool_call>{"name": "sql", "arguments": {"query": '
                        '"SELECT COUNT(*) FROM customers"}}</tool_call>\n.\n/quit\n')
    assert proc.returncode == 0, proc.stderr
    assert "── environment ──\nCOUNT(*)\n10\n" in proc.stdout
