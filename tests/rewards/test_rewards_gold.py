"""Gold verifiers: correct answers score 1, wrong or unparseable ones 0, and nothing raises."""

import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import pytest

from gymbox.rewards import (
    ExactMatch,
    MathEquivalence,
    NumericMatch,
    Verifier,
    parse_number,
    unit_test_pass_rate,
)
from gymbox.runtime.result import ExecResult


def test_exact_match_normalises_case_space_dollars_and_final_period():
    verify = ExactMatch()
    assert verify("Answer:   New   York.", "new york") == 1.0
    assert verify(r"\boxed{$ABC$}", "abc") == 1.0
    assert verify("Answer: Boston", "new york") == 0.0


def test_exact_match_scores_a_response_without_an_answer_as_wrong():
    assert ExactMatch()("I am not sure", "paris") == 0.0
    assert ExactMatch()("", "paris") == 0.0


def test_numeric_match_respects_its_tolerance():
    assert NumericMatch(rel_tol=1e-3)("Answer: 3.1416", "3.14159") == 1.0
    assert NumericMatch(rel_tol=1e-6)("Answer: 3.1416", "3.14159") == 0.0
    assert NumericMatch(abs_tol=0.5)("Answer: 10.4", "10") == 1.0
    assert NumericMatch(abs_tol=0.5)("Answer: 10.6", "10") == 0.0


def test_numeric_match_reads_commas_fractions_percent_and_currency():
    verify = NumericMatch()
    assert verify("Answer: 1,250", "1250") == 1.0
    assert verify("Answer: 3/4", "0.75") == 1.0
    assert verify("Answer: 50%", "0.5") == 1.0
    assert verify("Answer: $12", "12") == 1.0


def test_numeric_match_scores_unparseable_answers_and_references_as_wrong():
    assert NumericMatch()("Answer: twelve", "12") == 0.0
    assert NumericMatch()("Answer: 12", "twelve") == 0.0
    assert NumericMatch()("Answer: 1/0", "0") == 0.0
    assert parse_number("nan") is None and parse_number("inf") is None


@pytest.mark.parametrize(
    ("response", "reference"),
    [
        (r"The answer is \boxed{\frac{1}{2}}.", "0.5"),
        (r"\boxed{\dfrac{2}{4}}", r"\frac{1}{2}"),
        ("Answer: 0.5", "1/2"),
        (r"\boxed{1+x}", "x+1"),
        (r"\boxed{\sqrt{4}}", "2"),
    ],
)
def test_math_equivalence_compares_values_not_spelling(response, reference):
    assert MathEquivalence()(response, reference) == 1.0


@pytest.mark.parametrize(
    "response",
    [r"\boxed{\frac{1}{3}}", "Answer: 0.51", r"\boxed{\frac{", "", "no math at all", "}}{{\\"],
)
def test_math_equivalence_scores_wrong_and_unparseable_answers_zero(response):
    assert MathEquivalence()(response, r"\frac{1}{2}") == 0.0


def test_math_equivalence_works_off_the_main_thread():
    scores = []
    verify = MathEquivalence()
    worker = threading.Thread(target=lambda: scores.append(verify(r"\boxed{0.5}", "1/2")))
    worker.start()
    worker.join()
    assert scores == [1.0]


def test_built_in_verifiers_satisfy_the_protocol_and_so_does_a_user_one():
    @dataclass
    class Contains:
        word: str = ""

        def __call__(self, response: str, reference: str) -> float:
            return float(reference in response)

        def equivalent(self, answer: str, other: str) -> bool:
            return answer == other

    for verifier in (ExactMatch(), NumericMatch(), MathEquivalence(), Contains()):
        assert isinstance(verifier, Verifier)


def _run(argv, cwd) -> ExecResult:
    start = time.monotonic()
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)
    return ExecResult(
        exit_code=done.returncode,
        signal=None,
        stdout=done.stdout,
        stderr=done.stderr,
        stdout_bytes=len(done.stdout),
        stderr_bytes=len(done.stderr),
        truncated=False,
        timed_out=False,
        oom_killed=False,
        duration_s=time.monotonic() - start,
    )


TESTS = """
import unittest

class T(unittest.TestCase):
    def test_a(self): self.assertEqual(1, 1)
    def test_b(self): self.assertEqual(2, 2)
    def test_c(self): self.assertEqual(3, 4)
    def test_d(self): raise RuntimeError("boom")
    @unittest.skip("not today")
    def test_e(self): pass
"""


def test_pass_rate_of_a_real_pytest_run(tmp_path):
    (tmp_path / "test_solution.py").write_text(TESTS)
    result = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], tmp_path)
    assert result.exit_code == 1
    assert unit_test_pass_rate(result) == pytest.approx(2 / 4)


def test_pass_rate_of_a_real_unittest_run(tmp_path):
    (tmp_path / "test_solution.py").write_text(TESTS)
    result = _run([sys.executable, "-m", "unittest", "test_solution"], tmp_path)
    assert "Ran 5 tests" in result.stderr
    assert unit_test_pass_rate(result) == pytest.approx(2 / 4)


def test_pass_rate_of_an_all_passing_pytest_run(tmp_path):
    (tmp_path / "test_ok.py").write_text("def test_one():\n    assert True\n")
    result = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], tmp_path)
    assert unit_test_pass_rate(result) == 1.0


def test_without_a_summary_the_exit_code_decides(tmp_path):
    passed = _run([sys.executable, "-c", "assert 1 + 1 == 2"], tmp_path)
    failed = _run([sys.executable, "-c", "assert 1 + 1 == 3"], tmp_path)
    assert unit_test_pass_rate(passed) == 1.0
    assert unit_test_pass_rate(failed) == 0.0


def test_a_run_killed_before_reporting_or_with_no_tests_scores_zero(tmp_path):
    killed = ExecResult(
        exit_code=None,
        signal=9,
        stdout="..",
        stderr="",
        stdout_bytes=2,
        stderr_bytes=0,
        truncated=False,
        timed_out=True,
        oom_killed=False,
        duration_s=5.0,
    )
    assert unit_test_pass_rate(killed) == 0.0
    (tmp_path / "test_empty.py").write_text("x = 1\n")
    empty = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], tmp_path)
    assert unit_test_pass_rate(empty) == 0.0
