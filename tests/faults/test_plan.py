"""The fault plan: seeded, declarative, validated. No engine needed."""

from __future__ import annotations

import pytest

from gymbox.runtime import LocalBackend
from gymbox.runtime.errors import InvalidRequest
from gymbox.runtime.faults import REQUEST_KINDS, FaultInjector, FaultKind, FaultPlan


def test_same_seed_same_faults_and_other_seed_other_faults():
    plan = FaultPlan.uniform(0.3, seed=11)
    assert plan.draw_sequence(200) == FaultPlan.uniform(0.3, seed=11).draw_sequence(200)
    assert plan.draw_sequence(200) != FaultPlan.uniform(0.3, seed=12).draw_sequence(200)


@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_rates_are_honoured_per_kind(rate):
    draws = FaultPlan.uniform(rate, seed=5).draw_sequence(20_000)
    struck = [d for d in draws if d is not None]
    assert len(struck) / len(draws) == pytest.approx(rate, abs=0.015)
    for kind in REQUEST_KINDS:
        share = struck.count(str(kind)) / len(draws)
        assert share == pytest.approx(rate / len(REQUEST_KINDS), abs=0.01), kind


def test_launch_faults_do_not_shift_request_draws():
    calm = FaultPlan.uniform(0.2, seed=3)
    slow = FaultPlan({**calm.rates, FaultKind.SLOW_START: 1.0}, seed=3)
    assert calm.draw_sequence(50) == slow.draw_sequence(50)
    assert slow.draws().for_launch() is FaultKind.SLOW_START
    assert calm.draws().for_launch() is None


def test_scripted_faults_strike_exactly_their_request_and_leave_the_rest_alone():
    plan = FaultPlan(scripted={2: FaultKind.KILL_CONTAINER, 5: "pause_container"})
    assert plan.draw_sequence(6) == [None, "kill_container", None, None, "pause_container", None]
    mixed = FaultPlan.uniform(0.3, seed=9, scripted={1: FaultKind.GARBLE_RESPONSE})
    unscripted = FaultPlan.uniform(0.3, seed=9).draw_sequence(30)
    assert mixed.draw_sequence(30) == ["garble_response", *unscripted[1:]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rates": {"kill_container": 1.5}}, "must be a probability in [0, 1]"),
        ({"rates": {"kill_container": -0.1}}, "must be a probability in [0, 1]"),
        ({"rates": {"meteor_strike": 0.1}}, "unknown fault kind 'meteor_strike'; choose from"),
        ({"rates": {"kill_container": 0.6, "garble_response": 0.6}}, "add up to 1.2"),
        ({"scripted": {0: "kill_container"}}, "keyed by request number (1, 2, ...)"),
        ({"scripted": {1: "slow_start"}}, "slow_start strikes launches, not requests"),
        ({"outage_s": -1}, "FaultPlan.outage_s must be a number of seconds >= 0"),
    ],
)
def test_a_bad_plan_is_refused_with_what_to_fix(kwargs, message):
    with pytest.raises(InvalidRequest) as caught:
        FaultPlan(**kwargs)
    assert message in str(caught.value)


def test_uniform_spreads_the_rate_over_the_chosen_kinds_only():
    plan = FaultPlan.uniform(0.2, kinds=frozenset({FaultKind.KILL_CONTAINER,
                                                   FaultKind.TRUNCATE_RESPONSE}))
    assert dict(plan.rates) == {FaultKind.KILL_CONTAINER: 0.1, FaultKind.TRUNCATE_RESPONSE: 0.1}
    with pytest.raises(InvalidRequest, match="kinds must be request kinds"):
        FaultPlan.uniform(0.2, kinds=frozenset({FaultKind.SLOW_START}))


def test_container_faults_need_a_backend_with_containers():
    with pytest.raises(InvalidRequest, match="use DockerBackend"):
        FaultInjector(LocalBackend(), FaultPlan({FaultKind.PAUSE_CONTAINER: 0.1}))
    wire_only = FaultPlan({FaultKind.GARBLE_RESPONSE: 0.1, FaultKind.SLOW_START: 0.1})
    assert FaultInjector(LocalBackend(), wire_only).name == "local"
