"""Claim B's experiment (benchmarks/claim_intrinsic.py): its reward arms, and a two-step run."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from benchmarks import claim_intrinsic
from benchmarks.experiments.tasks import Chain
from gymbox.rewards.mix import GoldWhereLabelled
from gymbox.rewards.record import RewardRecord


def test_semi_supervised_arms_put_gold_on_the_labelled_share_only() -> None:
    for arm, share in (("semi10", 0.1), ("semi30", 0.3)):
        mix = claim_intrinsic.build_mix(arm)
        assert mix.labelled_fraction == share and isinstance(mix.applies, GoldWhereLabelled)
        assert set(mix.terms) == {"gold", "majority_vote"}
        assert mix.terms["majority_vote"].intrinsic and not mix.terms["gold"].intrinsic
    for arm, guarded in (("guard", "majority_vote"), ("guard_entropy", "negative_entropy")):
        mix = claim_intrinsic.build_mix(arm)
        assert mix.guard is not None and set(mix.terms) == {guarded}
    assert claim_intrinsic.build_mix("gold").guard is None
    assert set(claim_intrinsic.build_mix("self_certainty").terms) == {"self_certainty"}
    with pytest.raises(ValueError, match="unknown arm"):
        claim_intrinsic.build_mix("nope")


def test_the_noise_control_draws_alike_on_a_rerun_and_the_estimator_is_chosen() -> None:
    group = [SimpleNamespace(seed=7)] * 8
    first, again = (claim_intrinsic.build_mix("noise").terms["noise"].reward for _ in range(2))
    draws = [first(group), first(group)]
    assert draws[0].shape == (8,) and not torch.equal(draws[0], draws[1])  # fresh each group
    assert all(torch.equal(d, again(group)) for d in draws)  # a rerun of the arm draws alike
    assert draws[0].std() > 0.3  # members differ: the group gets nonzero advantages
    assert type(claim_intrinsic.build_mix("gold").estimator).__name__ == "GRPO"
    assert type(claim_intrinsic.build_mix("gold", "drgrpo").estimator).__name__ == "DrGRPO"
    with pytest.raises(ValueError, match="unknown estimator"):
        claim_intrinsic.build_mix("gold", "ppo")
    assert "noise" not in claim_intrinsic.parse([]).arms  # a control, run only when asked


def test_reward_spread_is_the_within_group_std_that_grpo_divides_by() -> None:
    groups = [[SimpleNamespace(seed=0, reward=RewardRecord.of(gold=g)) for g in golds]
              for golds in ([1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0])]
    report = SimpleNamespace(groups=[SimpleNamespace(trajectories=g) for g in groups],
                             advantages=claim_intrinsic.build_mix("gold").score(groups, step=0))
    spread = claim_intrinsic.reward_spread(report)["spread/gold"]
    assert spread == pytest.approx((torch.tensor([1.0, 0, 1, 0]).std().item() + 0.0) / 2)


def test_the_chain_scores_the_final_sum_and_its_expert_writes_every_step() -> None:
    env = Chain(operands=5, terms=4)
    env.reset(seed=11)
    numbers = [int(v) for v in env.task.prompt.removeprefix("What is ").rstrip("?").split("+")]
    assert len(numbers) == 4 and all(0 <= n < 5 for n in numbers)
    demonstration = env.demonstrate()
    assert demonstration.count("=") == 3 and demonstration.endswith(
        f"<answer>{sum(numbers)}</answer>")
    assert env.step(demonstration)[1] == 1.0
    env.reset(seed=11)  # a slip in a step carries into the answer, which alone is scored
    assert env.step(f"<answer>{sum(numbers) + 1}</answer>")[1] == 0.0
    assert env.draw_task(np.random.default_rng(0)) == env.draw_task(np.random.default_rng(0))
    for bad in ({"operands": 1}, {"terms": 1}):
        with pytest.raises(ValueError, match="must be >= 2"):
            Chain(**bad)


def test_gold_correlation_says_whether_a_term_ranks_the_right_members_higher() -> None:
    def member(gold: float, entropy: float) -> SimpleNamespace:
        return SimpleNamespace(reward=RewardRecord.of(gold=gold), answer=str(gold),
                               loss_mask=(1, 1), entropy=torch.full((2,), entropy),
                               self_certainty=torch.full((2,), 5.0 - entropy))

    surer_is_right = [member(1.0, 0.1), member(1.0, 0.2), member(1.0, 0.3), member(0.0, 0.9)]
    unsure_is_right = [member(1.0, 0.9), member(0.0, 0.1), member(0.0, 0.2), member(0.0, 0.3)]
    all_right = [member(1.0, 0.1), member(1.0, 0.5)]  # nothing to rank: left out
    row = claim_intrinsic.gold_correlation([surer_is_right, all_right])
    assert row["gold_corr/negative_entropy"] == pytest.approx(row["gold_corr/self_certainty"])
    assert 0.9 < row["gold_corr/self_certainty"] <= 1.0
    assert row["gold_corr/majority_vote"] == pytest.approx(1.0)  # the majority is right
    row = claim_intrinsic.gold_correlation([unsure_is_right])
    assert row["gold_corr/self_certainty"] < -0.9 and row["gold_corr/majority_vote"] < -0.9
    assert all(np.isnan(v) for v in claim_intrinsic.gold_correlation([all_right]).values())


@pytest.mark.slow
def test_two_step_miniature_of_the_chain_task(tmp_path: Path) -> None:
    """The chain task through the same pipeline: longer responses, and every intrinsic term's
    ranking compared with gold's."""
    arms = ["self_certainty", "negative_entropy"]
    results = claim_intrinsic.main([
        "--task", "chain", "--operands", "5", "--seeds", "1", "--steps", "2",
        "--arms", ",".join(arms), "--groups-per-step", "2", "--group-size", "4",
        "--eval-every", "2", "--eval-episodes", "4", "--warmup-steps", "2", "--lr", "1e-4",
        "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"),
    ])
    assert results["task"] == "chain" and results["schedule"]["max_new_tokens"] == 32
    assert [r["arm"] for r in results["runs"]] == arms
    assert (tmp_path / "cache" / "chain5-tiny-seed0-2x16-lr0.003" / "warmup.json").is_file()
    for run in results["runs"]:
        assert [s["step"] for s in run["steps"]] == [0.0, 1.0]
        for row in run["steps"]:
            assert {f"gold_corr/{n}" for n in claim_intrinsic.INTRINSIC} <= set(row)
            assert all(-1 <= v <= 1 for k, v in row.items()
                       if k.startswith("gold_corr/") and not np.isnan(v))


@pytest.mark.slow
def test_two_step_miniature_logs_the_curves(tmp_path: Path) -> None:
    """Two seeds in two processes (``--jobs 2``), merged into one table and plot."""
    arms = ["gold", "majority_vote", "semi30", "guard", "noise"]
    results = claim_intrinsic.main([
        "--seeds", "2", "--jobs", "2", "--operands", "5", "--steps", "2",
        "--arms", ",".join(arms), "--groups-per-step", "2",
        "--group-size", "4", "--eval-every", "2", "--eval-episodes", "8",
        "--warmup-steps", "2", "--cache", str(tmp_path / "cache"),
        "--out", str(tmp_path / "out"), "--plot", str(tmp_path / "b.png"),
    ])
    assert [(r["seed"], r["arm"]) for r in results["runs"]] == [
        (seed, arm) for seed in (0, 1) for arm in arms]
    assert results["jobs"] == 2
    for run in results["runs"]:
        assert [s["step"] for s in run["steps"]] == [0.0, 1.0]
        assert [e["step"] for e in run["evals"]] == [0.0, 2.0]
        for row in run["evals"]:  # the intrinsic rewards on the fixed held-out prompts
            assert row["entropy"] >= 0 and row["self_certainty"] >= 0
        for row in run["steps"]:
            assert row["entropy"] >= 0 and 0 <= row["agreement"] <= 1
            assert 0 <= row["accuracy"] <= 1
            assert row["advantage_abs"] >= 0
            spreads = [v for k, v in row.items() if k.startswith("spread/")]
            assert spreads and all(v is None or v >= 0 for v in spreads)  # None: no group of 2
    assert all(s["labelled_fraction"] == 1.0 for s in results["runs"][0]["steps"])
    assert all(0 <= s["labelled_fraction"] <= 1 for s in results["runs"][2]["steps"])
    gold = results["runs"][0]["steps"][0]
    # No intrinsic term: NaN, which the processes' JSON results carry as null.
    assert gold["intrinsic"] is None and gold["intrinsic_weight"] == 0.0
    guard = results["runs"][3]["steps"]
    assert all(0.0 <= s["intrinsic_weight"] <= 1.0 for s in guard)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(saved["runs"]) == 2 * len(arms)
    for seed in (0, 1):  # each process wrote its own seed's results
        part = json.loads((tmp_path / "out" / f"seed{seed}" / "results.json").read_text())
        assert {r["seed"] for r in part["runs"]} == {seed}
    assert (tmp_path / "b.png").stat().st_size > 10_000
