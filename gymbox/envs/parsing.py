"""Reading tool calls and final answers out of a model's raw text.

Two call formats are understood, several calls per turn, with any text around them:

* Hermes/Qwen: ``<tool_call>{"name": "python", "arguments": {"code": "print(1)"}}</tool_call>``
  (the closing tag may be missing, as when generation stops on it);
* plain JSON: ``{"name": "python", "arguments": {...}}`` anywhere in the text, fenced or not,
  used only when the text has no ``<tool_call>`` tag; an object needs both keys to count, so
  JSON data quoted in prose is left alone.

``arguments`` may also be spelled ``parameters``, and may be a JSON-encoded string (the OpenAI
wire format). A call that cannot be read becomes a message in :attr:`ParsedCalls.errors`, for the
env to show the agent; nothing here raises on any input.

Example:
    >>> parsed = parse_tool_calls('Let me add. <tool_call>{"name": "add", '
    ...                           '"arguments": {"a": 1, "b": 2}}</tool_call>')
    >>> parsed.calls[0].name, dict(parsed.calls[0].arguments)
    ('add', {'a': 1, 'b': 2})
    >>> parse_tool_calls("<tool_call>{oops}</tool_call>").errors[0][:38]
    'tool call 1 is not valid JSON (Expecti'
    >>> extract_answer("so the total is <answer> 42 </answer>")
    '42'
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

CALL_FORMAT = '<tool_call>{"name": "<tool>", "arguments": {"<argument>": <value>}}</tool_call>'
ANSWER_FORMAT = "<answer>...</answer>"

# Bounds on work per turn, so that adversarial text (a megabyte of "{") costs linear time.
MAX_CALLS_PER_TURN = 16
_MAX_PLAIN_CANDIDATES = 64

_OPEN, _CLOSE = "<tool_call>", "</tool_call>"
_PLAIN_START = re.compile(r'\{\s*"(?:name|arguments|parameters)"\s*:')
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
# strict=False lets strings hold raw newlines and tabs: models often write code that way.
_DECODER = json.JSONDecoder(strict=False)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call the agent asked for.

    Attributes:
        name: the tool's name as the agent wrote it (it may not exist).
        arguments: the decoded arguments object.
        id: a per-episode id (``call_<turn>_<index>``) that pairs a call with its result message.
    """

    name: str
    arguments: Mapping[str, Any]
    id: str = ""


@dataclass(frozen=True, slots=True)
class ParsedCalls:
    """The calls found in one turn, in order, and a message for each one that could not be read."""

    calls: tuple[ToolCall, ...] = ()
    errors: tuple[str, ...] = field(default=())

    @property
    def empty(self) -> bool:
        """True when the turn asked for no call at all, well-formed or not."""
        return not self.calls and not self.errors


def parse_tool_calls(text: str) -> ParsedCalls:
    """Find the tool calls in ``text``; never raises for any string."""
    if _OPEN in text:
        return _from_tagged(text)
    return _from_plain_json(text)


def extract_answer(text: str) -> str | None:
    """The last ``<answer>...</answer>``'s content, stripped; None if there is none."""
    matches = _ANSWER.findall(text)
    return matches[-1].strip() if matches else None


def _from_tagged(text: str) -> ParsedCalls:
    # The JSON is decoded from just after the opening tag, so a "</tool_call>" inside a string
    # argument (code that prints it, say) does not cut the call short.
    calls: list[ToolCall] = []
    errors: list[str] = []
    position = text.find(_OPEN)
    while position != -1:
        number = len(calls) + len(errors) + 1
        if number > MAX_CALLS_PER_TURN:
            rest = text.count(_OPEN, position)
            errors.append(
                f"only {MAX_CALLS_PER_TURN} tool calls are read per turn; {rest} more were ignored"
            )
            break
        body_start = position + len(_OPEN)
        try:
            value, end = _DECODER.raw_decode(text, _skip_whitespace(text, body_start))
        except (ValueError, RecursionError) as exc:
            errors.append(
                f"tool call {number} is not valid JSON ({_reason(exc)}); write {CALL_FORMAT}"
            )
            close = text.find(_CLOSE, body_start)
            end = len(text) if close == -1 else close + len(_CLOSE)
        else:
            call_or_error = _call_from_object(value, number)
            if isinstance(call_or_error, ToolCall):
                calls.append(call_or_error)
            else:
                errors.append(call_or_error)
        position = text.find(_OPEN, end)
    return ParsedCalls(tuple(calls), tuple(errors))


def _skip_whitespace(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _from_plain_json(text: str) -> ParsedCalls:
    calls: list[ToolCall] = []
    errors: list[str] = []
    position = 0
    for _ in range(_MAX_PLAIN_CANDIDATES):
        match = _PLAIN_START.search(text, position)
        if match is None:
            break
        try:
            value, end = _DECODER.raw_decode(text, match.start())
        except (ValueError, RecursionError):
            position = match.end()
            continue
        position = end
        if not _looks_like_call(value):
            continue  # JSON data in prose ({"name": "Bob", "age": 3}) is not a call
        number = len(calls) + len(errors) + 1
        if number > MAX_CALLS_PER_TURN:
            errors.append(f"only {MAX_CALLS_PER_TURN} tool calls are read per turn")
            break
        call_or_error = _call_from_object(value, number)
        if isinstance(call_or_error, ToolCall):
            calls.append(call_or_error)
        else:
            errors.append(call_or_error)
    return ParsedCalls(tuple(calls), tuple(errors))


def _looks_like_call(value: Any) -> bool:
    return isinstance(value, dict) and "name" in value and (
        "arguments" in value or "parameters" in value
    )


def _call_from_object(value: Any, number: int) -> ToolCall | str:
    if not isinstance(value, dict):
        return (
            f"tool call {number} must be a JSON object, got {type(value).__name__}; "
            f"write {CALL_FORMAT}"
        )
    name = value.get("name")
    if not isinstance(name, str) or not name:
        return f'tool call {number} has no "name" string; write {CALL_FORMAT}'
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = _DECODER.decode(arguments) if arguments.strip() else {}
        except (ValueError, RecursionError) as exc:
            return (
                f'tool call {number} ({name}): "arguments" is a string that is not JSON '
                f"({_reason(exc)})"
            )
    if not isinstance(arguments, dict):
        return f'tool call {number} ({name}): "arguments" must be a JSON object of named arguments'
    return ToolCall(name=name, arguments=arguments)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc).split(":")[0] if isinstance(exc, json.JSONDecodeError) else str(exc)
