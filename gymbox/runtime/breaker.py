"""A circuit breaker on the infrastructure-failure rate.

Masking an infra-failed episode keeps its broken reward out of training, but when failures
become common the episodes that survive are no longer a fair sample (long episodes die more
often than short ones, say), and training on them drifts. The breaker watches the outcome of the
last ``window`` episodes:

* below ``slow_down_rate`` it admits new episodes at once;
* at or above it, :meth:`InfraCircuitBreaker.admit` makes new episodes wait (exponential backoff
  while the rate stays high) and warns once per episode of trouble, naming the failing kind;
* at or above ``stop_rate`` it raises :class:`InfraFailureRateExceeded`: the run stops with an
  error instead of training on a biased subset.

Example:
    >>> breaker = InfraCircuitBreaker(window=10, min_episodes=4, slow_down_rate=0.3,
    ...                               stop_rate=0.6)
    >>> for kind in (None, None, "sandbox_died", None):
    ...     breaker.record(kind)
    >>> round(breaker.failure_rate, 2), breaker.state
    (0.25, 'closed')
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque

from gymbox.runtime.errors import GymboxError
from gymbox.runtime.retry import Backoff

log = logging.getLogger(__name__)

ADMIT_BACKOFF = Backoff()
"""How long a gated episode waits: 0.5 s, doubling, at most 30 s."""


class InfraFailureRateExceeded(GymboxError):
    """Too many episodes are failing for infrastructure reasons to keep training honestly."""


class InfraCircuitBreaker:
    """Tracks episode outcomes over a sliding window and gates new episodes.

    Args:
        window: how many recent episodes the rate is computed over.
        min_episodes: no decision is taken on fewer outcomes than this.
        slow_down_rate: infra-failure rate from which new episodes wait.
        stop_rate: infra-failure rate from which the run stops.
        backoff: how long a gated episode waits.
    """

    def __init__(
        self,
        *,
        window: int = 50,
        min_episodes: int = 10,
        slow_down_rate: float = 0.25,
        stop_rate: float = 0.6,
        backoff: Backoff = ADMIT_BACKOFF,
    ) -> None:
        if not 0 < slow_down_rate <= stop_rate <= 1:
            raise ValueError("need 0 < slow_down_rate <= stop_rate <= 1")
        if not 0 < min_episodes <= window:
            raise ValueError("need 0 < min_episodes <= window")
        self.window = window
        self.min_episodes = min_episodes
        self.slow_down_rate = slow_down_rate
        self.stop_rate = stop_rate
        self.backoff = backoff
        self._outcomes: deque[str | None] = deque(maxlen=window)
        self._consecutive_waits = 0
        self._warned = False
        self.waits = 0

    def record(self, failure_kind: str | None) -> None:
        """Record one finished episode: ``None`` when the infrastructure held, else the
        :attr:`~gymbox.runtime.errors.InfraError.kind` that ended it."""
        self._outcomes.append(failure_kind)

    @property
    def failure_rate(self) -> float:
        if not self._outcomes:
            return 0.0
        return sum(kind is not None for kind in self._outcomes) / len(self._outcomes)

    @property
    def failing_kinds(self) -> Counter[str]:
        return Counter(kind for kind in self._outcomes if kind is not None)

    @property
    def state(self) -> str:
        """``closed`` (admitting), ``slowed`` (episodes wait) or ``open`` (the run must stop)."""
        if len(self._outcomes) < self.min_episodes:
            return "closed"
        rate = self.failure_rate
        if rate >= self.stop_rate:
            return "open"
        if rate >= self.slow_down_rate:
            return "slowed"
        return "closed"

    async def admit(self) -> None:
        """Wait until a new episode may start.

        Raises:
            InfraFailureRateExceeded: the failure rate reached ``stop_rate``.
        """
        state = self.state
        if state == "open":
            raise InfraFailureRateExceeded(
                f"{self.failure_rate:.0%} of the last {len(self._outcomes)} episodes failed "
                f"for infrastructure reasons ({self._describe_kinds()}), at or above the stop "
                f"rate {self.stop_rate:.0%}; fix the sandbox backend (`gymbox doctor`) before "
                "training on the survivors"
            )
        if state == "closed":
            self._consecutive_waits = 0
            self._warned = False
            return
        if not self._warned:
            log.warning(
                "infra failures at %.0f%% of recent episodes (%s): slowing new episodes down",
                100 * self.failure_rate, self._describe_kinds(),
            )
            self._warned = True
        delay = self.backoff.delay(self._consecutive_waits)
        self._consecutive_waits += 1
        self.waits += 1
        await asyncio.sleep(delay)

    def _describe_kinds(self) -> str:
        return ", ".join(f"{kind} x{n}" for kind, n in self.failing_kinds.most_common())
