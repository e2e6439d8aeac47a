"""Answer extraction shared by verifiers, votes and environments."""

from gymbox.rewards import after_marker, boxed, extract_answer, first_of, last_number


def test_boxed_matches_nested_braces_and_takes_the_last_box():
    text = r"first \boxed{1} then \boxed{\frac{1}{\sqrt{2}}} done"
    assert boxed(text) == r"\frac{1}{\sqrt{2}}"


def test_boxed_accepts_fbox_and_the_braceless_form():
    assert boxed(r"\fbox{7}") == "7"
    assert boxed(r"so \boxed 5.") == "5"


def test_boxed_without_a_box_or_with_an_unclosed_one_is_unparseable():
    assert boxed("the answer is 4") is None
    assert boxed(r"\boxed{\frac{1}{2}") is None
    assert boxed(r"\boxed{}") is None


def test_after_marker_takes_the_rest_of_the_line_after_the_last_marker():
    text = "Answer: 3 was wrong.\nLet me redo it.\nanswer: $12$.\nDone"
    assert after_marker(text) == "12"
    assert after_marker("no marker here") is None
    assert after_marker("Answer:   \n") is None
    assert after_marker("Final: x=2", marker="Final:") == "x=2"


def test_last_number_handles_signs_decimals_commas_and_fractions():
    assert last_number("from -3 to -0.25") == "-0.25"
    assert last_number("total 1,234,567 items") == "1234567"
    assert last_number("ratio 3/4 of it") == "3/4"
    assert last_number("step 2. done") == "2"
    assert last_number("no digits") is None


def test_extract_answer_prefers_box_then_marker_then_last_number():
    assert extract_answer(r"Answer: 3 but \boxed{4} and 5") == "4"
    assert extract_answer("Answer: 3\nthen 5") == "3"
    assert extract_answer("maybe 3 or 5") == "5"
    assert extract_answer("I don't know") is None


def test_first_of_tries_extractors_in_order():
    only_boxed = first_of(boxed)
    assert only_boxed("42") is None
    assert first_of(after_marker, last_number)("x 9") == "9"
