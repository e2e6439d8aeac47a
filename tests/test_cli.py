"""The `gymbox` command as a user runs it: real subprocesses, real envs, real sandboxes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gymbox.agents.run_config import TrainConfig
from gymbox.agents.supply import make_env_factory
from gymbox.config import load_config


def gymbox(*args: str, stdin: str = "", timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gymbox.cli", *args], input=stdin, capture_output=True,
        text=True, timeout=timeout, env={**os.environ, "COLUMNS": "200"},
    )


def test_play_a_host_env_by_hand():
    turns = (
        '<tool_call>{"name": "calculate", "arguments": {"expression": "2 + 2"}}</tool_call>\n.\n'
        "<answer>4</answer>\n.\n"
    )
    proc = gymbox("play", "gymbox/Calculator-v0", "--seed", "0", stdin=turns)
    assert proc.returncode == 0, proc.stderr
    assert "── tools ──" in proc.stdout and '"calculate"' in proc.stdout
    assert "── environment ──\n4\n" in proc.stdout
    assert "status: completed" in proc.stdout


@pytest.mark.docker
def test_play_a_sandbox_env_by_hand():
    turns = (
        '<tool_call>{"name": "python", "arguments": {"code": "x = 6 * 7"}}</tool_call>\n.\n'
        '<tool_call>{"name": "python", "arguments": {"code": "print(x + 1)"}}</tool_call>\n.\n'
        "/quit\n"
    )
    proc = gymbox("play", "gymbox/PythonMath-v0", "--seed", "1", stdin=turns)
    assert proc.returncode == 0, proc.stderr
    assert "43" in proc.stdout
    assert "stopped before the episode ended" in proc.stdout


def test_play_an_unknown_env_is_one_line():
    proc = gymbox("play", "gymbox/NoSuchEnv-v0")
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "gymbox/Calculator-v0" in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--set", "stepz=3"], "unknown key(s) stepz"),
        (["train", "--set", "optim.learning_rate=fast"], "expected float"),
        (["train", "--config", "/nonexistent.toml"], "does not exist"),
        (["train", "--env", "gymbox/Nope-v0", "--no-eval"], "unknown env"),
        (["eval", "--checkpoint", "/nonexistent"], "not a checkpoint"),
    ],
)
def test_bad_run_configs_are_one_line_errors(args, message):
    proc = gymbox(*args)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_train_eval_and_plot_a_tiny_run(tmp_path, tiny_model_dir):
    config = tmp_path / "run.toml"
    config.write_text(
        f'run_dir = "{tmp_path / "run"}"\n[policy]\nmodel = "{tiny_model_dir}"\n'
        "[loop]\nsteps = 2\ngroup_size = 2\ngroups_per_step = 1\nrollout_workers = 1\n"
        "[budget]\nmax_turns = 1\n[sampling]\nmax_new_tokens = 8\n[eval]\nepisodes = 2\n"
    )
    proc = gymbox("train", "--config", str(config))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [0, 1]
    assert all(r["valid_fraction"] == 1.0 and r["weight/gold"] == 1.0 for r in steps)
    assert all("reward/gold" in r and "groups/reruns" in r for r in steps)
    # held-out accuracy before (at 0 steps done) and after (at 2) is in metrics.jsonl too
    evals = [(r["step"], k) for r in rows for k in r if k in ("eval/base", "eval/accuracy")]
    assert evals == [(0, "eval/base"), (2, "eval/accuracy")]
    assert all(0.0 <= r["eval/tool_use"] <= 1.0 for r in rows if "eval/valid_fraction" in r)
    # one plain line per phase and per step: stdout is not a terminal here
    lines = proc.stdout.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("step ")] == [
        "step 1/2", "step 2/2"]
    assert any(line.startswith("eval before: accuracy") for line in lines)
    assert (run / "metrics.png").stat().st_size > 10_000
    assert json.loads((run / "config.json").read_text())["loop"]["steps"] == 2
    summary = json.loads((run / "summary.json").read_text())
    assert summary["before"]["episodes"] == summary["after"]["episodes"] == 2

    proc = gymbox("eval", "--config", str(config), "--checkpoint", str(run / "checkpoints/step-2"))
    assert proc.returncode == 0, proc.stderr
    assert "accuracy" in proc.stdout

    proc = gymbox("plot", str(run), "-o", str(tmp_path / "again.png"))
    assert proc.returncode == 0 and (tmp_path / "again.png").is_file()


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gymbox.cli", "train", "--no-eval", "--model", str(tiny_model_dir),
         "--run-dir", str(run), "--steps", "50", "--set", "loop.group_size=2",
         "--set", "loop.groups_per_step=1", "--set", "budget.max_turns=1",
         "--set", "loop.rollout_workers=1", "--set", "sampling.max_new_tokens=8"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 1):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no training step within 240 s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "interrupted: checkpoint saved" in out
    steps = metrics.read_text().count("\n")
    assert 1 <= steps < 50
    assert (run / "checkpoints" / f"step-{steps}" / "trainer.pt").is_file()
    assert "Traceback" not in err


def test_the_quickstart_config_warms_up_on_an_env_with_a_scripted_expert():
    config = load_config(TrainConfig, Path(__file__).parent.parent / "configs/quickstart.toml")
    env = make_env_factory(config)()
    assert config.warmup.sft_steps > 0 and env.can_demonstrate
    # the mission: sandboxed multi-turn tools, async, semi-supervised gold + intrinsic, faults
    assert env.needs_sandbox and config.budget.max_turns >= 2
    assert config.loop.max_staleness >= 1
    assert "gold" in config.reward.terms and len(config.reward.terms) >= 2
    assert config.reward.mixing == "gold_where_labelled" and config.reward.labelled_fraction < 1
    assert 0.05 <= config.faults.rate <= 0.15
    env.close()


def test_explain_config_lists_every_key_with_its_default_and_doc():
    proc = gymbox("train", "--explain-config")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "optim.learning_rate = 1e-05    # AdamW learning rate." in lines
    assert any(line.startswith("sandboxes.recovery.deadline_s = ") for line in lines)
    assert any(line.startswith("faults.rate = 0.0    # ") for line in lines)
    assert any(line.startswith('sampling.stop = ["</tool_call>", "</answer>"]') for line in lines)
