"""GuessNumber-v0: find a hidden integer from "higher"/"lower" feedback. No tools; many turns.

Example:
    >>> env = GuessNumber()
    >>> _ = env.reset(seed=0, options={"low": 1, "high": 2})
    >>> env.step("1")[4]["status"] in ("running", "completed")
    True
    >>> env.close()
"""

from __future__ import annotations

import re

import numpy as np

from gymbox.envs.core import Reply, Task, ToolEnv
from gymbox.envs.errors import InvalidOption
from gymbox.rewards.gold import ExactMatch

_INTEGER = re.compile(r"-?\d+")


class GuessNumber(ToolEnv):
    """Guess a hidden integer; each wrong guess is answered "higher" or "lower".

    Each turn's last integer is the guess. The episode completes on the right guess.
    Reset options: ``low`` and ``high``, the inclusive range (default 1-100).
    Reward: gold 1.0 for finding the number within ``max_turns`` (default 10), else 0.
    """

    verifier = ExactMatch()
    system_prompt = (
        "You are playing a guessing game. Each turn, reply with one whole number as your guess."
    )

    def __init__(self, *, max_turns: int = 10, **kwargs) -> None:
        super().__init__(max_turns=max_turns, **kwargs)

    def draw_task(self, rng: np.random.Generator, *, low: int = 1, high: int = 100) -> Task:
        if not (isinstance(low, int) and isinstance(high, int)) or low > high:
            raise InvalidOption(
                f"low and high must be integers with low <= high, got {low!r}, {high!r}"
            )
        secret = int(rng.integers(low, high + 1))
        return Task(
            prompt=f"I am thinking of a whole number from {low} to {high}. Guess it.",
            reference=str(secret),
            id=f"guess-{low}-{high}-{secret}",
        )

    def reply(self, text: str) -> Reply:
        numbers = _INTEGER.findall(text)
        if not numbers:
            return Reply("Reply with a whole number.")
        if len(numbers[-1].lstrip("-")) > 18:  # int() of thousands of digits is refused
            return Reply("That number is far too large. Guess a whole number in the range.")
        guess = int(numbers[-1])
        assert self.task is not None and self.task.reference is not None
        secret = int(self.task.reference)
        if guess == secret:
            return Reply(f"{guess} is right!", answer=str(guess))
        return Reply(f"{guess} is too {'low' if guess < secret else 'high'}. Guess "
                     f"{'higher' if guess < secret else 'lower'}.")

