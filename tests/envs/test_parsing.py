"""Tool-call parsing: both formats, several calls, junk around them, no input that crashes it."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gymbox.envs import ParsedCalls, ToolCall, extract_answer, parse_tool_calls
from gymbox.envs.parsing import MAX_CALLS_PER_TURN


def names_and_args(parsed: ParsedCalls) -> list[tuple[str, dict]]:
    return [(c.name, dict(c.arguments)) for c in parsed.calls]


def test_hermes_calls_with_junk_around_them():
    text = (
        "I'll compute both.\n<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}"
        "\n</tool_call>\nand then <tool_call>{\"name\": \"python\", \"arguments\": "
        "{\"code\": \"print('}</tool_call>')\"}}</tool_call> done."
    )
    assert names_and_args(parse_tool_calls(text)) == [
        ("add", {"a": 1, "b": 2}),
        ("python", {"code": "print('}</tool_call>')"}),
    ]


def test_several_hermes_calls_in_order():
    text = "".join(
        f'<tool_call>{{"name": "t{i}", "arguments": {{"i": {i}}}}}</tool_call>' for i in range(3)
    )
    assert names_and_args(parse_tool_calls(text)) == [(f"t{i}", {"i": i}) for i in range(3)]


def test_raw_newlines_inside_string_arguments_are_accepted():
    text = '<tool_call>{"name": "python", "arguments": {"code": "x = 1\n\tprint(x)"}}</tool_call>'
    assert "\n" in text  # a real newline, as a model writes it, not an escape
    assert names_and_args(parse_tool_calls(text)) == [("python", {"code": "x = 1\n\tprint(x)"})]


def test_an_unclosed_last_call_is_read_to_the_end():
    parsed = parse_tool_calls('<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}')
    assert names_and_args(parsed) == [("add", {"a": 1, "b": 2})]


def test_plain_json_calls_fenced_or_not():
    text = (
        'Sure:\n```json\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n```\n'
        'also {"name": "neg", "parameters": {"x": 3}} and a stray {brace}'
    )
    assert names_and_args(parse_tool_calls(text)) == [("add", {"a": 1, "b": 2}), ("neg", {"x": 3})]


def test_arguments_given_as_a_json_string_are_decoded():
    parsed = parse_tool_calls('<tool_call>{"name": "add", "arguments": "{\\"a\\": 1}"}</tool_call>')
    assert names_and_args(parsed) == [("add", {"a": 1})]


def test_malformed_calls_become_messages_for_the_agent_and_good_ones_still_count():
    text = (
        "<tool_call>{name: add}</tool_call>"
        '<tool_call>{"arguments": {}}</tool_call>'
        '<tool_call>["add"]</tool_call>'
        '<tool_call>{"name": "add", "arguments": [1, 2]}</tool_call>'
        '<tool_call>{"name": "add", "arguments": "{oops"}</tool_call>'
        '<tool_call>{"name": "ok", "arguments": {}}</tool_call>'
    )
    parsed = parse_tool_calls(text)
    assert names_and_args(parsed) == [("ok", {})]
    assert len(parsed.errors) == 5
    assert parsed.errors[0].startswith("tool call 1 is not valid JSON")
    assert 'has no "name"' in parsed.errors[1]
    assert "must be a JSON object, got list" in parsed.errors[2]
    assert '"arguments" must be a JSON object' in parsed.errors[3]
    assert "not JSON" in parsed.errors[4]
    assert all("<tool_call>" in e for e in parsed.errors[:3])


def test_text_without_calls_has_none():
    for text in ["", "just thinking", "a dict {'name': 1}", '{"other": 1}', "<tool_call",
                 'the record is {"name": "Bob", "age": 3}', '{"arguments": {"a": 1}}']:
        assert parse_tool_calls(text).empty


def test_calls_per_turn_are_bounded():
    text = '<tool_call>{"name": "t", "arguments": {}}</tool_call>' * (MAX_CALLS_PER_TURN + 5)
    parsed = parse_tool_calls(text)
    assert len(parsed.calls) == MAX_CALLS_PER_TURN
    assert "5 more were ignored" in parsed.errors[-1]


def test_adversarial_megabyte_inputs_are_handled():
    megabyte = 1 << 20
    for text in [
        "[" * megabyte,
        "<tool_call>" + "[" * megabyte + "</tool_call>",
        '{"name": ' * (megabyte // 9),
        "<tool_call>" * (megabyte // 11),
        "{" * megabyte,
    ]:
        parsed = parse_tool_calls(text)
        assert not parsed.calls


def test_answer_is_the_last_answer_tag():
    assert extract_answer("<answer>1</answer> no, <answer>\n 2 \n</answer>") == "2"
    assert extract_answer("the answer is 2") is None
    assert extract_answer("<answer>unclosed") is None


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_arbitrary_text_never_crashes_the_parser(text):
    parsed = parse_tool_calls(text)
    assert all(isinstance(c, ToolCall) and isinstance(c.arguments, dict) for c in parsed.calls)
    assert all(isinstance(e, str) for e in parsed.errors)


fragments = st.sampled_from([
    "<tool_call>", "</tool_call>", "{", "}", '"name"', ":", '"arguments"', '"parameters"', ",",
    '"add"', "[", "]", "1", '"', "\\", "null", "```json", "\n", " ", "<answer>", "</answer>",
])


@settings(max_examples=300, deadline=None)
@given(st.lists(fragments | st.text(max_size=5), max_size=40).map("".join))
def test_near_miss_call_syntax_never_crashes_the_parser(text):
    parsed = parse_tool_calls(text)
    assert len(parsed.calls) + len(parsed.errors) <= MAX_CALLS_PER_TURN + 1
    extract_answer(text)
