"""The circuit breaker gates episodes on the recent infra-failure rate."""

from __future__ import annotations

import time

import pytest

from gymbox.runtime.breaker import InfraCircuitBreaker, InfraFailureRateExceeded
from gymbox.runtime.retry import Backoff


def breaker(**kw) -> InfraCircuitBreaker:
    defaults = dict(window=10, min_episodes=4, slow_down_rate=0.3, stop_rate=0.6,
                    backoff=Backoff(initial_s=0.05, factor=2, max_s=0.2))
    return InfraCircuitBreaker(**{**defaults, **kw})


async def test_healthy_runs_are_admitted_at_once():
    b = breaker()
    for _ in range(10):
        b.record(None)
    start = time.monotonic()
    await b.admit()
    assert time.monotonic() - start < 0.02
    assert b.state == "closed"


async def test_a_high_rate_slows_new_episodes_and_names_the_kind(caplog):
    b = breaker()
    for kind in ["sandbox_died", "sandbox_died", "engine_unavailable", None, None, None, None]:
        b.record(kind)
    assert b.state == "slowed"
    start = time.monotonic()
    await b.admit()
    await b.admit()
    assert time.monotonic() - start >= 0.05 + 0.1 - 0.01
    assert b.waits == 2
    assert "sandbox_died x2" in caplog.text
    assert caplog.text.count("slowing new episodes") == 1


async def test_past_the_hard_limit_the_run_stops():
    b = breaker()
    for kind in ["sandbox_unresponsive"] * 4 + [None] * 2:
        b.record(kind)
    with pytest.raises(InfraFailureRateExceeded, match="sandbox_unresponsive x4"):
        await b.admit()


async def test_the_window_forgets_old_failures():
    b = breaker()
    for _ in range(5):
        b.record("sandbox_died")
    assert b.state == "open"
    for _ in range(10):
        b.record(None)
    assert b.state == "closed"
    await b.admit()


def test_few_outcomes_decide_nothing():
    b = breaker()
    b.record("sandbox_died")
    b.record("sandbox_died")
    assert b.failure_rate == 1.0
    assert b.state == "closed"


def test_inconsistent_thresholds_are_rejected():
    with pytest.raises(ValueError):
        InfraCircuitBreaker(slow_down_rate=0.7, stop_rate=0.5)
    with pytest.raises(ValueError):
        InfraCircuitBreaker(window=5, min_episodes=10)
