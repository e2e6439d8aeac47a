"""How long to wait between tries: the one retry vocabulary of the runtime's own loops.

Control-plane calls to the engine retry with tenacity (:mod:`gymbox.runtime.classify`); the
loops that try again at a higher level (a pool starting sandboxes, recovery taking a fresh
one, the circuit breaker holding new episodes back) wait by a :class:`Backoff`.

Example:
    >>> [Backoff(initial_s=0.1, factor=2.0, max_s=0.3).delay(k) for k in range(4)]
    [0.1, 0.2, 0.3, 0.3]
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential wait: ``initial_s · factor^k`` seconds for the k-th consecutive wait, at most
    ``max_s``."""

    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 30.0

    def delay(self, attempt: int) -> float:
        """The wait before try ``attempt + 1`` (``attempt`` counts from 0)."""
        return min(self.max_s, self.initial_s * self.factor**attempt)
