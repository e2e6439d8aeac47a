"""RewardRecord's contract, and every docstring example in gymbox.rewards runs as written."""

import doctest
import importlib

import pytest

from gymbox.rewards import RewardComponent, RewardRecord

MODULES = [
    "gymbox.rewards.advantages",
    "gymbox.rewards.extract",
    "gymbox.rewards.gold",
    "gymbox.rewards.intrinsic",
    "gymbox.rewards.mix",
    "gymbox.rewards.novelty",
    "gymbox.rewards.record",
    "gymbox.rewards.tokens",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0


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
