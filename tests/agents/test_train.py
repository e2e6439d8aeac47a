"""`gymbox train` as the library composed: terms by name, faults, evaluation rows, stop, resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gymbox.agents.run_config import TrainConfig
from gymbox.agents.train import train
from gymbox.config import from_mapping
from gymbox.runtime.errors import ConfigurationError


def tiny_config(tmp_path: Path, model: Path, **sections) -> TrainConfig:
    data = {
        "run_dir": str(tmp_path / "run"), "policy": {"model": str(model)},
        "loop": {"steps": 2, "group_size": 3, "groups_per_step": 2, "rollout_workers": 1},
        "budget": {"max_turns": 1}, "sampling": {"max_new_tokens": 8}, "eval": {"episodes": 2},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return from_mapping(TrainConfig, data)


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_every_reward_knob_is_reachable_from_the_config_and_logged(tmp_path, tiny_model_dir):
    config = tiny_config(tmp_path, tiny_model_dir, reward={
        "mixing": "gold_where_labelled", "labelled_fraction": 0.5,
        "terms": {"gold": {}, "self_certainty": {"weight": 0.5, "schedule": "linear"},
                  "rnd": {"weight": 0.1, "options": {"dim": 32}}},
        "guard": {"enabled": True}, "seed_scale": {"enabled": True, "entropy": "count"},
    }, eval={"episodes": 2, "every": 1})
    summary = train(config, evaluate_before=False)
    assert summary.steps == 2 and not summary.interrupted
    steps = [r for r in rows(tmp_path / "run") if "loss" in r]
    for row in steps:
        assert {"weight/gold", "weight/self_certainty", "weight/rnd", "guard/factor",
                "guard/entropy", "labelled_fraction", "seed_scale"} <= set(row)
        assert 0.0 <= row["labelled_fraction"] <= 1.0
    # the linear schedule moves the intrinsic weight from 0.5 towards 0 over the run's steps
    assert steps[0]["weight/self_certainty"] == pytest.approx(0.5 * steps[0]["guard/factor"])
    assert steps[1]["weight/self_certainty"] == pytest.approx(0.25 * steps[1]["guard/factor"])
    assert any("reward/self_certainty" in r or "reward/gold" in r for r in steps)
    evals = [r["step"] for r in rows(tmp_path / "run") if "eval/accuracy" in r]
    assert evals == [1, 2]  # every step (eval.every = 1) and at the end
    assert summary.plot is not None and summary.plot.stat().st_size > 10_000


def test_bad_reward_configs_are_configuration_errors(tmp_path, tiny_model_dir):
    with pytest.raises(ConfigurationError, match=r"unknown term.*choose from gold"):
        tiny_config(tmp_path, tiny_model_dir, reward={"terms": {"gold_standard": {}}})
    with pytest.raises(ConfigurationError, match=r"optim\.temperature"):
        tiny_config(tmp_path, tiny_model_dir, optim={"temperature": 0.7},
                    sampling={"temperature": 0.5})
    config = tiny_config(tmp_path, tiny_model_dir,
                         reward={"terms": {"majority_vote": {"options": {"match": "fuzzy"}}}})
    with pytest.raises(ConfigurationError, match="match must be"):
        train(config)
    config = tiny_config(tmp_path, tiny_model_dir, faults={"rate": 0.1})
    with pytest.raises(ConfigurationError, match="runs no sandbox"):
        train(config)


@pytest.mark.docker
def test_injected_faults_reach_training_and_are_counted_by_kind(tmp_path, tiny_model_dir):
    config = tiny_config(
        tmp_path, tiny_model_dir, env="gymbox/ShellTask-v0",
        faults={"rate": 0.5, "kinds": ["garble_response", "kill_supervisor"], "seed": 1},
        warmup={"sft_steps": 0},
    )
    summary = train(config, evaluate_before=False)
    assert summary.steps == 2
    last = [r for r in rows(tmp_path / "run") if "loss" in r][-1]
    injected = {k: v for k, v in last.items() if k.startswith("faults/injected/")}
    assert injected and set(injected) <= {"faults/injected/garble_response",
                                          "faults/injected/kill_supervisor"}
    assert last["faults/injected"] == sum(injected.values()) > 0
    # the ShellTask scorer inspects the container after every episode: faults strike there
    # every injected fault was seen by recovery: recovered, masked, or (never here) the agent's
    seen = last["recovery/recovered"] + last["recovery/masked"] + last["recovery/start_failed"]
    assert seen > 0 and last["recovery/agent_caused"] == 0


def gymbox(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gymbox.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "COLUMNS": "200"})


def test_eval_of_a_checkpoint_uses_its_runs_env_and_resume_skips_a_damaged_one(
        tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    common = ["--model", str(tiny_model_dir), "--run-dir", str(run), "--env",
              "gymbox/GuessNumber-v0", "--set", "loop.group_size=2", "--set",
              "loop.groups_per_step=1", "--set", "loop.rollout_workers=1", "--set",
              "budget.max_turns=1", "--set", "sampling.max_new_tokens=8", "--set",
              "eval.episodes=2", "--set", "checkpoint_every=1"]
    proc = gymbox("train", "--no-eval", "--steps", "2", *common)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # no --config: the env comes from the checkpoint's own run config
    proc = gymbox("eval", "--checkpoint", str(run / "checkpoints/step-2"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("gymbox/GuessNumber-v0: accuracy")

    torn = run / "checkpoints/step-2/trainer.pt"
    torn.write_bytes(torn.read_bytes()[:1000])
    proc = gymbox("train", "--no-eval", "--resume", "--steps", "3", *common)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resume: skipped step-2: trainer.pt" in proc.stdout
    assert f"resume: from {run / 'checkpoints/step-1'} (step 1)" in proc.stdout
    assert [r["step"] for r in rows(run) if "loss" in r] == [0, 1, 1, 2]


def interrupt_when(pattern: str, args: list[str], tmp_path: Path, *, matches: int = 2,
                   wait_s: float = 0.0) -> tuple[str, float, float]:
    """Start `gymbox train`, send SIGINT ``wait_s`` after the ``matches``-th line that matches;
    returns (output, seconds from the signal to the exit, seconds between the last two
    matching lines)."""
    proc = subprocess.Popen([sys.executable, "-m", "gymbox.cli", "train", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    seen: list[float] = []
    out = []
    for line in proc.stdout:
        out.append(line)
        if re.match(pattern, line):
            seen.append(time.monotonic())
            if len(seen) == matches:
                break
    assert len(seen) == matches, "".join(out)
    time.sleep(wait_s)
    proc.send_signal(signal.SIGINT)
    signalled = time.monotonic()
    rest, _ = proc.communicate(timeout=300)
    took = time.monotonic() - signalled
    assert proc.returncode == 130, "".join(out) + rest
    return "".join(out) + rest, took, seen[-1] - seen[0]


@pytest.mark.docker
def test_ctrl_c_in_the_warm_up_stops_after_the_step_in_flight(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    out, took, step_s = interrupt_when(
        r"warm-up step \d+/50", ["--no-eval", "--model", str(tiny_model_dir), "--run-dir",
                                 str(run), "--env", "gymbox/PythonCalc-v0", "--set",
                                 "warmup.sft_steps=50", "--set", "warmup.episodes_per_step=2",
                                 "--set", "budget.max_turns=2"], tmp_path)
    # bounded by the product: the warm-up step under way, then a checkpoint save
    assert took < 3 * step_s + 30, (took, step_s)
    assert "interrupted: checkpoint saved at step 0" in out
    assert (run / "checkpoints/step-0/trainer.pt").is_file()


def test_ctrl_c_during_an_evaluation_stops_within_a_token(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    # The evaluation before training (32 episodes of up to 256 tokens each) starts right after
    # the model line; the signal lands in it.
    out, took, _ = interrupt_when(
        r"model: ", ["--model", str(tiny_model_dir), "--run-dir", str(run), "--steps", "1",
                     "--set", "eval.episodes=32", "--set", "sampling.max_new_tokens=256",
                     "--set", "budget.max_turns=4"], tmp_path, matches=1, wait_s=2.0)
    assert took < 30, took
    assert "interrupted: checkpoint saved at step 0" in out
    assert "eval before" not in out, "the evaluation finished before the signal; proved nothing"


def test_resume_restores_what_the_reward_mix_learnt(tmp_path, tiny_model_dir):
    """RND's networks and statistics and the entropy guard's H₀ are in every checkpoint, and a
    resumed run scores with them, not with a fresh RND and a new H₀."""
    import io

    import torch

    from gymbox.agents.train import REWARD_STATE, Log, Run

    config = tiny_config(tmp_path, tiny_model_dir, checkpoint_every=1, reward={
        "mixing": "additive", "terms": {"gold": {}, "rnd": {"weight": 0.1, "options": {"dim": 32}}},
        "guard": {"enabled": True}})
    train(config, evaluate_before=False)
    saved = torch.load(tmp_path / "run/checkpoints/step-2/trainer.pt",
                       weights_only=False)["state"][REWARD_STATE]
    assert saved["terms"]["rnd"]["inputs"]["count"] > 0 and saved["guard_start"] is not None

    def rnd_state(run: Run) -> dict:
        return run.mix.terms["rnd"].reward.state_dict()

    fresh = Run.start(config, Log(io.StringIO()))
    resumed = Run.start(config, Log(io.StringIO()), resume=True)
    predictor = saved["terms"]["rnd"]["predictor"]
    for name, weight in rnd_state(resumed)["predictor"].items():
        assert torch.equal(weight, predictor[name])
    assert not all(torch.equal(w, predictor[n]) for n, w in rnd_state(fresh)["predictor"].items())
    assert rnd_state(resumed)["inputs"]["count"] == saved["terms"]["rnd"]["inputs"]["count"]
    assert resumed.mix.guard.start == saved["guard_start"] and fresh.mix.guard.start is None

    other = from_mapping(TrainConfig, {**json.loads((tmp_path / "run/config.json").read_text()),
                                       "reward": {"terms": {"gold": {}}}})
    with pytest.raises(ConfigurationError, match="reward terms"):
        Run.start(other, Log(io.StringIO()), resume=True)


def test_ctrl_c_in_the_rl_loop_stops_after_the_step_in_flight(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    out, took, step_s = interrupt_when(
        r"step \d+/50:", ["--no-eval", "--model", str(tiny_model_dir), "--run-dir", str(run),
                          "--steps", "50", "--set", "sampling.max_new_tokens=16"], tmp_path)
    # bounded by the product: sampling stops within a token, the update in flight finishes
    assert took < 2 * step_s + 30, (took, step_s)
    saved = re.search(r"interrupted: checkpoint saved at step (\d+)", out)
    assert saved is not None and 2 <= int(saved[1]) < 50, out
    assert (run / f"checkpoints/step-{saved[1]}/trainer.pt").is_file()
    assert "after: accuracy" not in out
