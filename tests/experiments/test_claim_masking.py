"""Claim A's experiment (benchmarks/claim_masking.py): its scoring arms, and a two-step run."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import claim_masking
from benchmarks.experiments.tasks import StoredNumber
from gymbox.agents.groups import KeepValid, Rerun
from gymbox.agents.loop import Group
from gymbox.agents.rollout import Trajectory
from gymbox.rewards.advantages import GRPO
from gymbox.rewards.mix import RewardMix, Term
from gymbox.rewards.record import RewardRecord
from gymbox.runtime.docker_backend import DockerBackend
from gymbox.runtime.faults import FaultInjector, FaultPlan
from gymbox.runtime.pool import SandboxPool


def _trajectory(record: RewardRecord) -> Trajectory:
    zeros = torch.zeros(3)
    return Trajectory(token_ids=(1, 2, 3), loss_mask=(0, 1, 1), logprobs=zeros, entropy=zeros,
                      self_certainty=zeros, prompt_length=1,
                      status="completed" if record.valid else "infra_failed", reward=record,
                      answer=None, turns=1, seed=0, temperature=1.0, messages=[], info={})


def test_zero_arm_scores_a_failed_episode_as_a_loss_and_the_mask_arms_drop_it() -> None:
    group = Group(0, 0, 0, [_trajectory(RewardRecord.of(gold=1.0)),
                            _trajectory(RewardRecord.of(gold=0.0)),
                            _trajectory(RewardRecord.invalid("sandbox_died"))])
    mix = RewardMix({"gold": Term(1.0)}, estimator=GRPO(min_valid=2))
    masked = claim_masking.scorer("mask", mix)([group], 0)
    zero = claim_masking.scorer("zero", mix)([group], 0)
    assert masked.keep.tolist() == [True, True, False]
    assert masked.values[2] == 0.0
    assert zero.keep.tolist() == [True, True, True]
    assert zero.values[2] < 0 < zero.values[0]


def test_the_task_needs_the_tool_and_guessing_gets_partial_credit() -> None:
    env = StoredNumber()
    references = [env.draw_task(np.random.default_rng(s)).reference for s in range(600)]
    guessed = references.count("0") / len(references)
    assert 0.6 < guessed < 0.73  # "not divisible by 3": right on about two tasks in three
    assert "n.txt" in env.draw_task(np.random.default_rng(0)).prompt
    assert str(env.draw_task(np.random.default_rng(0)).data["n"]) not in \
        env.draw_task(np.random.default_rng(0)).prompt


@pytest.mark.docker
def test_only_the_tool_touches_the_sandbox() -> None:
    """Claim A's premise: with every request struck, answering at once still gets graded,
    while reading n.txt with the tool fails on the infrastructure."""
    async def episodes() -> tuple[dict, int, dict]:
        injector = FaultInjector(DockerBackend(),
                                 FaultPlan.uniform(1.0, kinds=claim_masking.FAULT_KINDS))
        async with SandboxPool(size=1, backend=injector) as pool:
            guesser = StoredNumber(sandboxes=pool, recovery=False, tool_share=0.0)
            await guesser.areset(seed=1)
            *_, guessed = await guesser.astep(guesser.demonstrate())
            requests_of_guess = injector.requests
            await guesser.aclose()
            reader = StoredNumber(sandboxes=pool, recovery=False, tool_share=1.0)
            await reader.areset(seed=1)
            *_, read = await reader.astep(reader.demonstrate())
            await reader.aclose()
        return guessed, requests_of_guess, read

    guessed, requests_of_guess, read = asyncio.run(episodes())
    assert guessed["status"] == "completed" and requests_of_guess == 0
    assert read["status"] == "infra_failed"


def test_only_gymbox_default_arm_replays_a_failed_member() -> None:
    # The loop's default re-plays a failed member with a fresh sample; in the arms without
    # recovery that would replace the very episodes the mask or the penalty is about.
    assert isinstance(claim_masking.group_failures("recover"), Rerun)
    assert isinstance(claim_masking.group_failures("mask"), KeepValid)
    assert isinstance(claim_masking.group_failures("zero"), KeepValid)


def test_arms_run_zero_faults_once() -> None:
    assert claim_masking.arms([0.0, 0.3], claim_masking.MODES) == [
        (0.0, "recover"), (0.3, "recover"), (0.3, "mask"), (0.3, "zero")]


@pytest.mark.docker
@pytest.mark.slow
def test_two_step_miniature_runs_with_real_faults(tmp_path: Path) -> None:
    """Every sandbox request struck: without recovery each episode that sent one fails (and is
    scored 0 in the zero arm); with recovery each struck call is recovered. Whatever the
    two-step policy does, the counts must agree (a policy that never calls the tool sends no
    request and loses no episode)."""
    results = claim_masking.main([
        "--seeds", "1", "--steps", "2", "--rates", "1.0", "--modes", "recover,zero",
        "--groups-per-step", "1", "--group-size", "4", "--eval-every", "2",
        "--eval-episodes", "4", "--warmup-steps", "2", "--tool-share", "1", "--pool", "2",
        "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"),
        "--plot", str(tmp_path / "a.png"),
    ])
    runs = {r["mode"]: r for r in results["runs"]}
    assert set(runs) == {"recover", "zero"}
    for run in runs.values():
        assert [s["step"] for s in run["steps"]] == [0.0, 1.0]
        assert [e["step"] for e in run["evals"]] == [0.0, 2.0]
    zero, recover = runs["zero"]["steps"], runs["recover"]["steps"]
    assert zero[-1]["faults_injected"] == zero[-1]["requests"]
    assert sum(s["infra_failed"] for s in zero) == zero[-1]["requests"]  # one request each
    assert sum(s["reruns"] for s in zero) == 0  # a failed member stays failed, and scored 0
    assert all(s["valid_fraction"] == 1 - s["infra_failed"] / 4 for s in zero)
    assert sum(s["infra_failed"] for s in recover) == 0
    assert recover[-1]["recovered"] == recover[-1]["faults_injected"]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(saved["runs"]) == 2
    assert "| 100% | zero |" in (tmp_path / "out" / "table.md").read_text()
    assert (tmp_path / "a.png").stat().st_size > 10_000
