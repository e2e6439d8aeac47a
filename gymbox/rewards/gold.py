"""Gold (verifiable) rewards: does a response match a known reference?

A :class:`Verifier` maps ``(response, reference)`` to a score in ``[0, 1]``. The contract every
verifier keeps, built-in or written by an environment: **an answer that cannot be parsed scores
0.0; it never raises.** A malformed answer is the agent's mistake, and a mistake is a value.
A verifier also serves as the equivalence test of a vote (:mod:`gymbox.rewards.intrinsic`)
through :meth:`equivalent`.

Example:
    >>> MathEquivalence()(r"so \\boxed{\\frac{1}{2}}", "0.5")
    1.0
    >>> NumericMatch(rel_tol=1e-3)("Answer: 3.1416", "3.14159")
    1.0
    >>> ExactMatch()("Answer: Paris.", "paris")
    1.0
    >>> ExactMatch()("no idea", "paris")
    0.0
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol, runtime_checkable

from math_verify import parse as _math_parse
from math_verify import verify as _math_verify

from gymbox.rewards.extract import Extractor, extract_answer

_WHITESPACE = re.compile(r"\s+")


@runtime_checkable
class Verifier(Protocol):
    """Scores a response against a reference; environments implement it for their own tasks.

    ``__call__`` returns a float in ``[0, 1]`` (1 = correct). An unparseable response scores
    0.0 and never raises. ``equivalent(a, b)`` says whether two *extracted answers* mean the same
    thing, so votes can cluster answers with the verifier's own notion of equality.
    """

    def __call__(self, response: str, reference: str) -> float: ...

    def equivalent(self, answer: str, other: str) -> bool: ...


def normalise_text(answer: str) -> str:
    """Case-folded, whitespace-collapsed, without surrounding ``$``, quotes or a final period."""
    answer = _WHITESPACE.sub(" ", answer).strip().strip("$").strip()
    answer = answer.rstrip(".").strip().strip("\"'`").strip()
    return answer.casefold()


def parse_number(answer: str) -> float | None:
    """A float from ``'1,234'``, ``'-0.5'``, ``'3/4'``, ``'50%'`` (0.5) or ``'$12'``; else None."""
    text = answer.strip().strip("$").replace(",", "").replace(" ", "")
    scale = 1.0
    if text.endswith("%"):
        text, scale = text[:-1], 0.01
    try:
        value = float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        return None
    return value * scale if math.isfinite(value) else None


@dataclass(frozen=True, slots=True)
class ExactMatch:
    """1.0 when the extracted answer equals the reference after :func:`normalise_text`."""

    extract: Extractor = extract_answer

    def __call__(self, response: str, reference: str) -> float:
        answer = self.extract(response)
        return float(answer is not None and self.equivalent(answer, reference))

    def equivalent(self, answer: str, other: str) -> bool:
        return normalise_text(answer) == normalise_text(other)


@dataclass(frozen=True, slots=True)
class NumericMatch:
    """1.0 when the extracted number is within tolerance of the reference number.

    The test is :func:`math.isclose`: ``|a - b| <= max(rel_tol·max(|a|, |b|), abs_tol)``.
    """

    rel_tol: float = 1e-6
    abs_tol: float = 1e-9
    extract: Extractor = extract_answer

    def __call__(self, response: str, reference: str) -> float:
        answer = self.extract(response)
        return float(answer is not None and self.equivalent(answer, reference))

    def equivalent(self, answer: str, other: str) -> bool:
        a, b = parse_number(answer), parse_number(other)
        if a is None or b is None:
            return False
        return math.isclose(a, b, rel_tol=self.rel_tol, abs_tol=self.abs_tol)


@dataclass(frozen=True, slots=True)
class MathEquivalence:
    r"""1.0 when the response is mathematically equivalent to the reference (``math-verify``).

    ``math-verify`` finds the answer itself (``\boxed{}`` first, then LaTeX or plain
    expressions), so fractions, decimals, LaTeX and symbolic forms compare by value:
    ``\frac{2}{4}`` matches ``0.5`` and ``1+x`` matches ``x+1``. A reference written without
    ``$`` delimiters is retried inside them. ``math-verify`` bounds its sympy work with
    ``signal.alarm``, which only the main thread may use; from other threads the check runs
    without that timeout.
    """

    timeout_s: int = 5

    def __call__(self, response: str, reference: str) -> float:
        return float(self.equivalent(response, reference))

    def equivalent(self, answer: str, other: str) -> bool:
        timeout = self.timeout_s if threading.current_thread() is threading.main_thread() else None
        target = _parse_math(answer, timeout)
        gold = _parse_math(other, timeout)
        if not target or not gold:
            return False
        return bool(_math_verify(gold, target, timeout_seconds=timeout, raise_on_error=False))


def _parse_math(text: str, timeout: int | None) -> list[object]:
    parsed = _math_parse(text, parsing_timeout=timeout, raise_on_error=False)
    if not parsed and "$" not in text:
        parsed = _math_parse(f"${text}$", parsing_timeout=timeout, raise_on_error=False)
    return parsed


class TestRun(Protocol):
    """What :func:`unit_test_pass_rate` reads; :class:`gymbox.runtime.result.ExecResult` fits."""

    @property
    def stdout(self) -> str: ...

    @property
    def stderr(self) -> str: ...

    @property
    def exit_code(self) -> int | None: ...


_PYTEST_COUNT = re.compile(r"(\d+) (passed|failed|errors?)\b")
_PYTEST_DURATION = re.compile(r"\bin \d+(?:\.\d+)?s\b")
_UNITTEST_RAN = re.compile(r"^Ran (\d+) tests? in ", re.MULTILINE)
_UNITTEST_VERDICT = re.compile(r"^(OK|FAILED)\b(?: \((.*)\))?", re.MULTILINE)
_UNITTEST_COUNT = re.compile(r"(failures|errors|skipped)=(\d+)")


def unit_test_pass_rate(run: TestRun) -> float:
    """The share of tests that passed, read from a test run's output.

    Reads pytest's summary line (``3 passed, 1 failed, 1 error in 0.2s`` → 3/5) or unittest's
    (``Ran 4 tests`` + ``FAILED (failures=1)`` → 3/4; skipped tests count on neither side). When
    neither summary is present, the exit code decides: 1.0 for 0, else 0.0 — a run that died
    or timed out before reporting scores 0. A run that collected no tests scores 0.

    Example:
        >>> from types import SimpleNamespace
        >>> unit_test_pass_rate(SimpleNamespace(stdout="3 passed, 1 failed in 0.1s",
        ...                                     stderr="", exit_code=1))
        0.75
    """
    for text in (run.stdout, run.stderr):
        rate = _pytest_rate(text)
        if rate is None:
            rate = _unittest_rate(text)
        if rate is not None:
            return rate
    return float(run.exit_code == 0)


def _pytest_rate(text: str) -> float | None:
    for line in reversed(text.splitlines()):
        counts = _PYTEST_COUNT.findall(line)
        if counts and _PYTEST_DURATION.search(line):
            by_kind = {
                kind.removesuffix("s") if kind.startswith("error") else kind: int(n)
                for n, kind in counts
            }
            passed = by_kind.get("passed", 0)
            total = passed + by_kind.get("failed", 0) + by_kind.get("error", 0)
            return passed / total if total else 0.0
    return None


def _unittest_rate(text: str) -> float | None:
    ran = _UNITTEST_RAN.findall(text)
    verdict = _UNITTEST_VERDICT.findall(text)
    if not ran or not verdict:
        return None
    counts = {key: int(n) for key, n in _UNITTEST_COUNT.findall(verdict[-1][1])}
    total = int(ran[-1]) - counts.get("skipped", 0)
    failed = counts.get("failures", 0) + counts.get("errors", 0)
    return (total - failed) / total if total > 0 else 0.0
