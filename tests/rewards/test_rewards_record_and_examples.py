"""RewardRecord's contract (the docstring examples run in tests/test_docstring_examples.py)."""

import pytest

from gymbox.rewards import RewardComponent, RewardRecord


def test_weighted_record_keeps_each_term_and_its_weight():
    record = RewardRecord.weighted(
        {"gold": RewardComponent(1.0, 1.0), "self_certainty": RewardComponent(0.4, 0.5)}
    )
    assert record.value == pytest.approx(1.2)
    assert record.components["self_certainty"] == RewardComponent(0.4, 0.5)
    with pytest.raises(TypeError):
        record.components["gold"] = RewardComponent(0.0)  # type: ignore[index]


def test_invalid_record_carries_its_reason():
    record = RewardRecord.invalid("sandbox_died")
    assert (record.valid, record.reason, dict(record.components)) == (False, "sandbox_died", {})
