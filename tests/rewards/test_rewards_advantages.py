"""Mask-aware group advantages: hand-computed values and the masking properties."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gymbox.rewards import GRPO, RLOO, DrGRPO, RewardRecord, batch_from_records

NAN = float("nan")


def batch(rewards, valid, groups):
    return (
        torch.tensor(rewards, dtype=torch.float32),
        torch.tensor(valid, dtype=torch.bool),
        torch.tensor(groups),
    )


def test_grpo_uses_the_unbiased_std():
    # mean 0.5, unbiased std sqrt(4 · 0.25 / 3) = 0.57735: A = ±0.5 / 0.57735 = ±0.866025
    adv = GRPO()(*batch([1, 0, 0, 1], [True] * 4, [0] * 4))
    assert adv.values.tolist() == pytest.approx([0.866025, -0.866025, -0.866025, 0.866025], 1e-5)
    assert adv.keep.all()


def test_dr_grpo_centres_without_scaling():
    adv = DrGRPO()(*batch([1, 0, 0], [True] * 3, [0] * 3))
    assert adv.values.tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3])


def test_rloo_subtracts_the_mean_of_the_others():
    adv = RLOO()(*batch([1, 0, 0, 3], [True] * 4, [0] * 4))
    # 1 - 1, 0 - 4/3, 0 - 4/3, 3 - 1/3
    assert adv.values.tolist() == pytest.approx([0.0, -4 / 3, -4 / 3, 8 / 3])


@pytest.mark.parametrize("estimator", [GRPO(), DrGRPO(), RLOO()])
def test_invalid_members_are_left_out_of_the_statistics_and_the_loss(estimator):
    masked = estimator(*batch([1, 0, NAN, 0], [True, True, False, True], [0, 0, 0, 0]))
    alone = estimator(*batch([1, 0, 0], [True] * 3, [0] * 3))
    assert masked.values[2] == 0.0 and not masked.keep[2]
    assert masked.values[[0, 1, 3]].tolist() == pytest.approx(alone.values.tolist())
    assert masked.invalid == 1


def test_groups_with_too_few_valid_members_are_dropped_and_reported():
    adv = GRPO()(
        *batch(
            [1, 0, NAN, NAN, 5, NAN, 2, 3],
            [True, True, False, False, True, False, True, True],
            [7, 7, 3, 3, 9, 9, 4, 4],
        )
    )
    assert adv.dropped_groups.tolist() == [3, 9]  # all invalid; a group of one
    assert adv.keep.tolist() == [True, True, False, False, False, False, True, True]
    assert adv.values[2:6].tolist() == [0.0] * 4
    assert adv.metrics() == {
        "invalid": 3.0,
        "valid_fraction": 5 / 8,
        "groups_dropped": 2.0,
        "kept_fraction": 0.5,
    }


def test_a_group_of_one_may_be_kept_with_a_zero_advantage():
    adv = GRPO(min_valid=1)(*batch([5.0], [True], [0]))
    assert adv.values.tolist() == [0.0] and adv.keep.tolist() == [True]
    assert DrGRPO(min_valid=1)(*batch([5.0], [True], [0])).values.tolist() == [0.0]
    with pytest.raises(ValueError, match="min_valid must be >= 2"):
        RLOO(min_valid=1)


def test_a_group_of_equal_rewards_carries_no_signal():
    adv = GRPO()(*batch([0.3, 0.3, 0.3], [True] * 3, [0] * 3))
    assert adv.values.tolist() == [0.0, 0.0, 0.0]


def test_groups_may_be_interleaved_and_use_any_ids():
    adv = DrGRPO()(*batch([1, 10, 3, 30], [True] * 4, [-5, 100, -5, 100]))
    assert adv.values.tolist() == pytest.approx([-1, -10, 1, 10])


def test_an_all_invalid_batch_keeps_nothing():
    adv = GRPO()(*batch([NAN, NAN], [False, False], [0, 1]))
    assert adv.values.tolist() == [0.0, 0.0]
    assert adv.dropped_groups.tolist() == [0, 1]
    assert adv.metrics()["valid_fraction"] == 0.0


def test_bad_batches_raise_clear_errors():
    with pytest.raises(ValueError, match="same length"):
        GRPO()(*batch([1, 2], [True], [0, 0]))
    with pytest.raises(TypeError, match="bool"):
        GRPO()(torch.tensor([1.0, 2.0]), torch.tensor([1, 1]), torch.tensor([0, 0]))
    with pytest.raises(TypeError, match="integer"):
        GRPO()(torch.tensor([1.0, 2.0]), torch.tensor([True, True]), torch.tensor([0.0, 0.0]))
    with pytest.raises(ValueError, match="valid=False"):
        GRPO()(*batch([1, NAN], [True, True], [0, 0]))
    with pytest.raises(ValueError, match="flat"):
        GRPO()(torch.zeros(2, 2), torch.ones(2, 2, dtype=torch.bool), torch.zeros(2, 2))


def test_batch_from_records_keeps_validity():
    rewards, valid = batch_from_records(
        [RewardRecord.of(gold=1.0, bonus=0.5), RewardRecord.invalid("sandbox_died")]
    )
    assert rewards.tolist() == [1.5, 0.0] and valid.tolist() == [True, False]


members = st.lists(
    st.tuples(
        st.floats(-100, 100, allow_nan=False),
        st.booleans(),
        st.integers(0, 3),
    ),
    min_size=1,
    max_size=24,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-100, 100, allow_nan=False), min_size=2, max_size=16))
def test_grpo_advantages_of_a_valid_group_sum_to_zero(rewards):
    adv = GRPO()(*batch(rewards, [True] * len(rewards), [0] * len(rewards)))
    assert abs(adv.values.double().sum().item()) < 1e-3 * len(rewards)


@settings(max_examples=200, deadline=None)
@given(members, st.sampled_from([GRPO(), DrGRPO(), RLOO(), GRPO(min_valid=3)]))
def test_masking_equals_removal(rows, estimator):
    """Masking a member changes the others' advantages only through the statistics it leaves:
    the kept members get exactly what they would get if it had never been in the batch."""
    rewards, valid, groups = zip(*rows, strict=True)
    poisoned = [r if v else NAN for r, v in zip(rewards, valid, strict=True)]
    full = estimator(*batch(poisoned, valid, groups))
    kept_rows = [row for row in rows if row[1]]
    assert full.values[~full.keep].tolist() == [0.0] * int((~full.keep).sum())
    if not kept_rows:
        return
    r, v, g = zip(*kept_rows, strict=True)
    removed = estimator(*batch(r, v, g))
    valid_mask = torch.tensor(valid)
    assert torch.equal(full.keep[valid_mask], removed.keep)
    assert torch.allclose(full.values[valid_mask], removed.values, atol=1e-5, rtol=1e-5)


@settings(max_examples=100, deadline=None)
@given(members)
def test_rloo_is_a_rescaled_dr_grpo(rows):
    rewards, _, groups = zip(*rows, strict=True)
    valid = [True] * len(rows)
    rloo = RLOO()(*batch(rewards, valid, groups))
    dr = DrGRPO()(*batch(rewards, valid, groups))
    sizes = torch.tensor([groups.count(g) for g in groups], dtype=torch.float32)
    scale = torch.where(sizes > 1, sizes / (sizes - 1).clamp(min=1), 0.0)
    assert torch.allclose(rloo.values, dr.values * scale, atol=1e-3)
    assert not math.isnan(rloo.values.sum().item())
