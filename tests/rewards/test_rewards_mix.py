"""RewardMix: separately normalised terms, schedules, semi-supervised choice, entropy guard."""

import math

import pytest
import torch

from gymbox.rewards import (
    GRPO,
    RLOO,
    Constant,
    Cosine,
    EntropyGuard,
    GoldWhereLabelled,
    Linear,
    RewardMix,
    Term,
)

NAN = float("nan")
ROOT3 = math.sqrt(3) / 2  # GRPO advantage of (1, 0, 0, 1): ±0.866025


def test_schedules():
    assert [Constant(0.3)(s) for s in (0, 10**6)] == [0.3, 0.3]
    assert [Linear(1.0, 0.2, steps=4)(s) for s in (0, 2, 4, 9)] == pytest.approx(
        [1.0, 0.6, 0.2, 0.2]
    )
    assert [Cosine(1.0, 0.0, steps=4)(s) for s in (0, 1, 2, 4, 8)] == pytest.approx(
        [1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5, 0.0, 0.0]
    )
    with pytest.raises(ValueError, match="steps"):
        Linear(1.0, 0.0, steps=0)


def test_entropy_guard_backs_off_in_proportion_below_the_floor():
    guard = EntropyGuard(fraction=0.5)
    assert guard(2.0) == 1.0  # first value is the reference
    assert guard(1.2) == 1.0
    assert guard(0.5) == pytest.approx(0.5)
    assert guard(0.0) == 0.0
    assert EntropyGuard(fraction=0.8, start=1.0)(0.4) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="fraction"):
        EntropyGuard(fraction=1.5)
    with pytest.raises(ValueError, match="finite"):
        guard(NAN)


def test_terms_are_normalised_separately_then_weighted():
    mix = RewardMix({"gold": Term(1.0), "certainty": Term(0.5, intrinsic=True)})
    rewards = {
        "gold": torch.tensor([1.0, 0.0, 0.0, 1.0]),
        "certainty": torch.tensor([100.0, 0.0, 100.0, 0.0]),  # scale does not matter
    }
    valid = torch.ones(4, dtype=torch.bool)
    out = mix.advantages(rewards, valid, torch.zeros(4, dtype=torch.long), step=0)
    gold = [ROOT3, -ROOT3, -ROOT3, ROOT3]
    certainty = [ROOT3, -ROOT3, ROOT3, -ROOT3]
    expected = [g + 0.5 * c for g, c in zip(gold, certainty, strict=True)]
    assert out.values.tolist() == pytest.approx(expected, abs=1e-5)
    assert out.weights == {"gold": 1.0, "certainty": 0.5}
    assert out.terms["certainty"].values.tolist() == pytest.approx(certainty, abs=1e-5)


def test_weights_follow_their_schedule():
    mix = RewardMix({"a": Term(Linear(1.0, 0.0, steps=10)), "b": Term(Constant(2.0))})
    assert mix.weights(0) == {"a": 1.0, "b": 2.0}
    assert mix.weights(5) == {"a": 0.5, "b": 2.0}


def test_semi_supervised_uses_gold_where_labelled_and_intrinsic_elsewhere():
    mix = RewardMix(
        {"gold": Term(1.0), "vote": Term(0.5, intrinsic=True)}, applies=GoldWhereLabelled()
    )
    rewards = {
        "gold": torch.tensor([1.0, 0.0, 0.0, 1.0, NAN, NAN, NAN, NAN]),  # group 1: no label
        "vote": torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]),
    }
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    labelled = groups == 0
    out = mix.advantages(
        rewards, torch.ones(8, dtype=torch.bool), groups, step=0, labelled=labelled
    )
    expected = [ROOT3, -ROOT3, -ROOT3, ROOT3] + [0.5 * a for a in (ROOT3, ROOT3, -ROOT3, -ROOT3)]
    assert out.values.tolist() == pytest.approx(expected, abs=1e-5)
    assert out.keep.all() and out.dropped_groups.numel() == 0
    records = mix.records(rewards, torch.ones(8, dtype=torch.bool), out.weights, labelled)
    assert set(records[0].components) == {"gold"}
    assert set(records[4].components) == {"vote"}
    assert records[4].value == pytest.approx(0.5)


def test_invalid_members_stay_out_of_every_term_and_empty_groups_are_dropped():
    mix = RewardMix({"gold": Term(1.0), "vote": Term(0.5, intrinsic=True)}, estimator=RLOO())
    rewards = {"gold": torch.tensor([1.0, NAN, 0.0, 4.0]), "vote": torch.tensor([0, NAN, 1, 0.0])}
    valid = torch.tensor([True, False, True, True])
    groups = torch.tensor([0, 0, 0, 1])
    out = mix.advantages(rewards, valid, groups, step=0)
    # RLOO over members 0 and 2 only: gold (1, -1), vote (-1, 1)
    assert out.values.tolist() == pytest.approx([1.0 - 0.5, 0.0, -1.0 + 0.5, 0.0])
    assert out.keep.tolist() == [True, False, True, False]
    assert out.dropped_groups.tolist() == [1] and out.invalid == 1
    records = mix.records(rewards, valid, out.weights)
    assert not records[1].valid and records[1].reason == "infra_failed"
    assert records[0].components["gold"].value == 1.0


def test_the_entropy_guard_lowers_only_intrinsic_weights():
    mix = RewardMix(
        {"gold": Term(1.0), "certainty": Term(0.4, intrinsic=True)},
        guard=EntropyGuard(fraction=0.5),
    )
    assert mix.weights(0, mean_entropy=2.0) == {"gold": 1.0, "certainty": 0.4}
    assert mix.weights(50, mean_entropy=0.25) == pytest.approx({"gold": 1.0, "certainty": 0.1})
    with pytest.raises(ValueError, match="mean_entropy"):
        mix.weights(51)


def test_rewards_must_match_the_terms():
    mix = RewardMix({"gold": Term(1.0)}, estimator=GRPO())
    with pytest.raises(KeyError, match="missing"):
        mix.advantages(
            {"vote": torch.zeros(2)},
            torch.ones(2, dtype=torch.bool),
            torch.zeros(2, dtype=torch.long),
            step=0,
        )
    with pytest.raises(ValueError, match="at least one term"):
        RewardMix({})
