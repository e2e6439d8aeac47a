"""PythonMath-v0: math word problems with numeric answers and a ``python`` tool in a sandbox.

The interpreter persists across the episode's calls, like a notebook: a name defined in one
call is there in the next. Problems are generated from the seed by a small set of templates,
each with its answer computed exactly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from fractions import Fraction

import numpy as np

from gymbox.envs.core import Task, ToolEnv
from gymbox.envs.errors import InvalidOption
from gymbox.envs.tools import tool
from gymbox.rewards.gold import NumericMatch
from gymbox.runtime.api import SandboxAPI
from gymbox.runtime.result import ExecResult

CODE_TIMEOUT_S = 10.0


@tool
async def python(code: str, *, sandbox: SandboxAPI) -> ExecResult:
    """Run Python code in a persistent interpreter and return what it printed.

    Names defined in one call stay defined in the next. The value of a final expression is
    printed, as in a notebook. Each call may run for 10 seconds.

    Args:
        code: Python source, e.g. "x = 17 * 23\\nprint(x % 7)".
    """
    return await sandbox.run_python(code, timeout=CODE_TIMEOUT_S)


Problem = tuple[str, Fraction]


def _orchard(rng: np.random.Generator) -> Problem:
    rows, trees, apples, bag = (int(rng.integers(3, 40)), int(rng.integers(4, 30)),
                                int(rng.integers(20, 200)), int(rng.integers(6, 25)))
    return (f"An orchard has {rows} rows of {trees} apple trees, and each tree gives {apples} "
            f"apples. The apples are packed in bags of {bag}. How many bags can be filled "
            "completely?", Fraction((rows * trees * apples) // bag))


def _savings(rng: np.random.Generator) -> Problem:
    start, weekly, weeks, spent = (int(rng.integers(50, 500)), int(rng.integers(5, 60)),
                                   int(rng.integers(4, 52)), int(rng.integers(10, 200)))
    return (f"Mia has ${start}. She saves ${weekly} every week for {weeks} weeks and then "
            f"spends ${spent} on a bike. How many dollars does she have left?",
            Fraction(start + weekly * weeks - spent))


def _compound(rng: np.random.Generator) -> Problem:
    principal, rate, years = (int(rng.integers(1, 20)) * 1000, int(rng.integers(1, 9)),
                              int(rng.integers(2, 15)))
    value = Fraction(principal) * Fraction(100 + rate, 100) ** years
    return (f"${principal} is invested at {rate}% interest compounded yearly. What is it worth "
            f"after {years} years, in dollars, rounded to the nearest cent?",
            Fraction(round(value * 100), 100))


def _digits(rng: np.random.Generator) -> Problem:
    low, high = sorted(int(v) for v in rng.integers(1, 5000, size=2))
    digit = int(rng.integers(1, 10))
    count = sum(str(n).count(str(digit)) for n in range(low, high + 1))
    return (f"How many times is the digit {digit} written when all the whole numbers from {low} "
            f"to {high} are written down?", Fraction(count))


def _primes(rng: np.random.Generator) -> Problem:
    limit = int(rng.integers(100, 20000))
    sieve = np.ones(limit + 1, dtype=bool)
    sieve[:2] = False
    for n in range(2, int(limit**0.5) + 1):
        if sieve[n]:
            sieve[n * n :: n] = False
    return (f"What is the sum of all prime numbers below {limit}?",
            Fraction(int(np.flatnonzero(sieve[:limit]).sum())))


def _mixture(rng: np.random.Generator) -> Problem:
    litres_a, pct_a, litres_b, pct_b = (int(rng.integers(1, 20)), int(rng.integers(5, 60)),
                                        int(rng.integers(1, 20)), int(rng.integers(5, 60)))
    pct = Fraction(litres_a * pct_a + litres_b * pct_b, litres_a + litres_b)
    return (f"{litres_a} litres of a {pct_a}% salt solution are mixed with {litres_b} litres of a "
            f"{pct_b}% salt solution. What is the salt percentage of the mixture, rounded to two "
            "decimal places?", Fraction(round(pct * 100), 100))


TEMPLATES: dict[str, Callable[[np.random.Generator], Problem]] = {
    "orchard": _orchard, "savings": _savings, "compound": _compound, "digits": _digits,
    "primes": _primes, "mixture": _mixture,
}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class PythonMath(ToolEnv):
    """Solve a word problem; a ``python`` tool runs code in the episode's sandbox.

    Reset options: ``template``, one of :data:`TEMPLATES` (default: drawn with the seed).
    Reward: gold 1.0 when the final answer is the number (relative tolerance 1e-6), else 0.
    """

    tools = (python,)
    verifier = NumericMatch()

    def draw_task(self, rng: np.random.Generator, *, template: str | None = None) -> Task:
        if template is None:
            template = str(rng.choice(sorted(TEMPLATES)))
        elif template not in TEMPLATES:
            raise InvalidOption(f"template must be one of {sorted(TEMPLATES)}, got {template!r}")
        question, answer = TEMPLATES[template](rng)
        reference = str(answer.numerator) if answer.denominator == 1 else str(float(answer))
        return Task(prompt=question + " Give the number only as the final answer.",
                    reference=reference, id=f"python_math:{template}:{_digest(question)}")
