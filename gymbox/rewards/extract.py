"""Pulling the final answer out of a response.

Environments, gold verifiers and votes all need the same thing: the short string a response
commits to as its answer. Each extractor is a plain callable ``str -> str | None`` that returns
``None`` when the response holds no answer of its kind; :func:`first_of` composes them. A
``None`` answer is *unparseable*: verifiers score it wrong and votes ignore it.

Example:
    >>> boxed(r"so the total is \\boxed{\\frac{3}{4}}.")
    '\\\\frac{3}{4}'
    >>> after_marker("Work...\\nAnswer: 42.")
    '42'
    >>> last_number("It costs $1,250 or 1300 with tax")
    '1300'
    >>> extract_answer("I think 7. Answer: 8") is not None
    True
"""

from __future__ import annotations

import re
from collections.abc import Callable

Extractor = Callable[[str], str | None]
"""Returns the answer a response commits to, or ``None`` when it holds none."""

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:/\d+)?")


def boxed(text: str) -> str | None:
    r"""The content of the last ``\boxed{...}`` (or ``\fbox{...}``), braces matched.

    ``\boxed 5`` (no braces) yields ``'5'``. An unclosed brace yields ``None``.
    """
    matches = list(_BOXED.finditer(text))
    if not matches:
        return None
    start = matches[-1].end()
    if start >= len(text):
        return None
    if text[start] != "{":
        words = text[start:].split(maxsplit=1)
        return (words[0].rstrip("$.") or None) if words else None
    depth = 0
    for index in range(start, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : index].strip() or None
    return None


def after_marker(text: str, marker: str = "Answer:") -> str | None:
    """The rest of the line after the last ``marker`` (case-insensitive), minus a final period
    and surrounding ``$`` signs."""
    position = text.lower().rfind(marker.lower())
    if position < 0:
        return None
    line = text[position + len(marker) :].split("\n", 1)[0]
    answer = line.strip().rstrip(".").strip().strip("$").strip()
    return answer or None


def last_number(text: str) -> str | None:
    """The last number in ``text`` (integer, decimal, ``a/b`` or ``1,234``), commas removed."""
    numbers = [m.group() for m in _NUMBER.finditer(text) if any(c.isdigit() for c in m.group())]
    if not numbers:
        return None
    return numbers[-1].replace(",", "")


def first_of(*extractors: Extractor) -> Extractor:
    """An extractor that returns the first non-``None`` answer of ``extractors``, in order.

    Example:
        >>> first_of(boxed, last_number)("maybe 3, maybe 4")
        '4'
    """

    def extract(text: str) -> str | None:
        for extractor in extractors:
            answer = extractor(text)
            if answer is not None:
                return answer
        return None

    return extract


extract_answer: Extractor = first_of(boxed, after_marker, last_number)
"""The default: ``\\boxed{}``, else the text after ``Answer:``, else the last number."""
