"""Claim B's experiment (benchmarks/claim_intrinsic.py): its reward arms, and a two-step run."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from benchmarks import claim_intrinsic
from gymbox.rewards.mix import GoldWhereLabelled
from gymbox.rewards.record import RewardRecord


def test_semi_supervised_arms_put_gold_on_the_labelled_share_only() -> None:
    for arm, share in (("semi10", 0.1), ("semi30", 0.3)):
        mix = claim_intrinsic.build_mix(arm)
        assert mix.labelled_fraction == share and isinstance(mix.applies, GoldWhereLabelled)
        assert set(mix.terms) == {"gold", "majority_vote"}
        assert mix.terms["majority_vote"].intrinsic and not mix.terms["gold"].intrinsic
    assert claim_intrinsic.build_mix("guard").guard is not None
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
