"""Tools: typed, documented Python functions that an agent may call.

``@tool`` reads a function's signature and its Google-style docstring and produces the JSON
schema that chat templates take (``tokenizer.apply_chat_template(messages, tools=[...])``), the
same shape as :func:`transformers.utils.get_json_schema`. The schema is also the contract the
agent's arguments are checked against before the function runs: a missing, extra or ill-typed
argument is answered with a message that tells the agent what was wrong.

A tool runs in the episode's sandbox when it takes a keyword-only parameter named ``sandbox``:
the env passes its sandbox there, and the parameter is not part of the schema. The sandbox bounds
what the call may do (its own deadline, memory and output caps).

Any other tool runs on the host, under a deadline (``timeout_s``) and an output bound
(``max_output_chars``): a plain function runs in a worker process (:mod:`gymbox.envs.host`)
that is killed at the deadline, so no argument the model writes can keep the host computing; it
gets copies of what it closes over, so it cannot change the host's state. An ``async`` host
tool runs on the env's event loop, for tools that wait (on a service, on the host's own state);
its deadline bounds the waiting, so it must not compute for long between awaits.

Example:
    >>> @tool
    ... def add(a: int, b: int) -> str:
    ...     '''Add two integers.
    ...
    ...     Args:
    ...         a: the first addend
    ...         b: the second addend
    ...     '''
    ...     return str(a + b)
    >>> add.schema["function"]["parameters"]["required"]
    ['a', 'b']
    >>> add.check_arguments({"a": 1, "b": "2"})
    Traceback (most recent call last):
    ...
    gymbox.envs.tools.ArgumentError: tool 'add': argument 'b' must be an integer, got a string ('2')
"""

from __future__ import annotations

import asyncio
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from gymbox.envs import host
from gymbox.envs.errors import ToolDefinitionError
from gymbox.runtime.result import ExecResult

SANDBOX_PARAMETER = "sandbox"
HOST_TIMEOUT_S = 10.0
"""A host tool's deadline unless ``@tool(timeout_s=...)`` says otherwise."""
MAX_OUTPUT_CHARS = 65_536
"""The longest tool output an agent is shown unless ``@tool(max_output_chars=...)`` says
otherwise (the sandbox keeps 64 KiB of each stream by default, too)."""

_JSON_TYPES: dict[type, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    tuple: "array",
    dict: "object",
}


class ArgumentError(ValueError):
    """The agent's arguments do not match the tool's schema (the agent's error, shown to it)."""


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the agent can call, with its JSON schema.

    Attributes:
        name: what the agent calls it by (the function's name).
        description: the docstring's text before ``Args:``.
        schema: ``{"type": "function", "function": {...}}``, ready for a chat template.
        function: the Python function; sync or async.
        in_sandbox: True when the function takes the episode's sandbox.
        timeout_s: a host tool's deadline (a sandbox tool's is the sandbox call's own).
        max_output_chars: the longest output the agent is shown; the rest is cut, and the
            agent is told how long it was.
    """

    name: str
    description: str
    schema: Mapping[str, Any]
    function: Callable[..., Any]
    in_sandbox: bool
    timeout_s: float = HOST_TIMEOUT_S
    max_output_chars: int = MAX_OUTPUT_CHARS

    @property
    def parameters(self) -> Mapping[str, Any]:
        return self.schema["function"]["parameters"]

    def check_arguments(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """Return the arguments as keyword arguments, or raise :class:`ArgumentError`.

        Integers are accepted where a number is expected; nothing else is coerced.
        """
        properties = self.parameters["properties"]
        required = self.parameters["required"]
        expected = ", ".join(f"{name} ({_describe(spec)})" for name, spec in properties.items())
        missing = [name for name in required if name not in arguments]
        if missing:
            raise ArgumentError(
                f"tool {self.name!r}: missing argument {_names(missing)}; it takes: {expected}"
            )
        extra = [name for name in arguments if name not in properties]
        if extra:
            raise ArgumentError(
                f"tool {self.name!r}: unexpected argument {_names(extra)}; it takes: {expected}"
            )
        for name, value in arguments.items():
            problem = _mismatch(value, properties[name])
            if problem is not None:
                raise ArgumentError(f"tool {self.name!r}: argument {name!r} {problem}")
        return dict(arguments)

    async def invoke(self, arguments: Mapping[str, Any], sandbox: Any = None) -> Any:
        """Run the function with checked arguments (and the sandbox, for a sandbox tool).

        A sandbox tool runs on the event loop (or, if sync, in a thread); a sync host tool in a
        host worker process, an async one on the event loop, both under ``timeout_s``. What
        comes back is an ``ExecResult``, or the value's ``str`` cut to ``max_output_chars``.

        Raises:
            gymbox.envs.host.HostTimeout: a host tool ran past ``timeout_s``.
            gymbox.envs.host.HostWorkError: a sync host tool raised (``HostRaised``) or its
                worker died (``HostCrashed``).
            Exception: whatever an async or sandbox tool raises.
        """
        kwargs = dict(arguments)
        if self.in_sandbox:
            kwargs[SANDBOX_PARAMETER] = sandbox
            if inspect.iscoroutinefunction(self.function):
                output = await self.function(**kwargs)
            else:
                output = await asyncio.to_thread(self.function, **kwargs)
            # An ExecResult is capped by the sandbox; anything else is cut here.
            return output if isinstance(output, ExecResult) else cut_text(
                str(output), self.max_output_chars)
        if inspect.iscoroutinefunction(self.function):
            try:
                output = await asyncio.wait_for(self.function(**kwargs), self.timeout_s)
                return cut_text(str(output), self.max_output_chars)
            except TimeoutError:
                raise host.HostTimeout(
                    f"the tool ran past its {self.timeout_s:g} s deadline and was stopped"
                ) from None
        return await asyncio.to_thread(host.run_on_host, _as_text, self.function,
                                       self.max_output_chars, kwargs, timeout_s=self.timeout_s)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the underlying function directly, as if it were not decorated."""
        return self.function(*args, **kwargs)


def cut_text(text: str, max_chars: int) -> str:
    """``text`` if it fits in ``max_chars``, else its head and a note saying how long it was."""
    return text if len(text) <= max_chars else text[:max_chars] + (
        f"\n[output truncated: {len(text)} characters, the first {max_chars} shown]")


def _as_text(function: Callable[..., Any], max_chars: int, kwargs: dict[str, Any]) -> str:
    """Run in the host worker: the tool's value as text, cut there to what the agent is shown,
    so that neither ``str`` of a huge value nor its transfer happens on the host."""
    return cut_text(str(function(**kwargs)), max_chars)


@typing.overload
def tool(function: Callable[..., Any], /) -> Tool: ...


@typing.overload
def tool(*, timeout_s: float = HOST_TIMEOUT_S,
         max_output_chars: int = MAX_OUTPUT_CHARS) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(function: Callable[..., Any] | None = None, /, *, timeout_s: float = HOST_TIMEOUT_S,
         max_output_chars: int = MAX_OUTPUT_CHARS) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a typed function with a Google-style docstring into a :class:`Tool`.

    Every parameter except ``sandbox`` needs a type annotation (``str``, ``int``, ``float``,
    ``bool``, ``list[T]``, ``dict[str, T]``, ``Literal[...]``, or ``T | None``) and a line
    under ``Args:``. A parameter with a default is optional. Use it bare (``@tool``) or with
    bounds (``@tool(timeout_s=2, max_output_chars=1000)``).

    Raises:
        ToolDefinitionError: the function cannot be described to a model; the message says
            which parameter and why.
        ValueError: ``timeout_s`` or ``max_output_chars`` is not positive.

    Example:
        >>> @tool(timeout_s=2)
        ... def shout(text: str) -> str:
        ...     '''Repeat the text in capitals.
        ...
        ...     Args:
        ...         text: what to shout
        ...     '''
        ...     return text.upper()
        >>> shout.timeout_s, shout("hi")
        (2, 'HI')
    """
    if not (isinstance(timeout_s, int | float) and 0 < timeout_s < float("inf")):
        raise ValueError(f"timeout_s must be a finite positive number, got {timeout_s!r}")
    if not (isinstance(max_output_chars, int) and max_output_chars > 0):
        raise ValueError(f"max_output_chars must be a positive integer, got {max_output_chars!r}")
    if function is None:
        return lambda f: _make_tool(f, timeout_s, max_output_chars)
    return _make_tool(function, timeout_s, max_output_chars)


def _make_tool(function: Callable[..., Any], timeout_s: float, max_output_chars: int) -> Tool:
    name = function.__name__
    signature = inspect.signature(function)
    try:
        hints = typing.get_type_hints(function)
    except NameError as exc:
        raise ToolDefinitionError(
            f"tool {name!r}: an annotation cannot be resolved ({exc}); import the type at module "
            "level, not only under TYPE_CHECKING"
        ) from exc
    summary, arg_docs = _parse_docstring(inspect.getdoc(function), name)
    properties: dict[str, Any] = {}
    required: list[str] = []
    in_sandbox = False
    for parameter in signature.parameters.values():
        if parameter.name == SANDBOX_PARAMETER:
            if parameter.kind is not inspect.Parameter.KEYWORD_ONLY:
                raise ToolDefinitionError(
                    f"tool {name!r}: make 'sandbox' keyword-only (write `*, sandbox`) so the "
                    "agent cannot pass it"
                )
            in_sandbox = True
            continue
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise ToolDefinitionError(
                f"tool {name!r}: *args and **kwargs cannot be described in a schema; "
                "name each parameter"
            )
        if parameter.name not in hints:
            raise ToolDefinitionError(f"tool {name!r}: parameter {parameter.name!r} needs a type")
        if parameter.name not in arg_docs:
            raise ToolDefinitionError(
                f"tool {name!r}: document parameter {parameter.name!r} under 'Args:' in the "
                "docstring; the model reads that text to know what to pass"
            )
        spec = _json_schema(hints[parameter.name], f"tool {name!r}, parameter {parameter.name!r}")
        spec["description"] = arg_docs[parameter.name]
        properties[parameter.name] = spec
        if parameter.default is inspect.Parameter.empty:
            required.append(parameter.name)
    schema = {
        "type": "function",
        "function": {
            "name": name,
            "description": summary,
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }
    return Tool(name=name, description=summary, schema=schema, function=function,
                in_sandbox=in_sandbox, timeout_s=timeout_s, max_output_chars=max_output_chars)


def _parse_docstring(doc: str | None, name: str) -> tuple[str, dict[str, str]]:
    if not doc:
        raise ToolDefinitionError(
            f"tool {name!r} has no docstring; write one: a summary line, then 'Args:' with a line "
            "per parameter"
        )
    parts = re.split(r"^Args:\s*$", doc, maxsplit=1, flags=re.MULTILINE)
    summary = parts[0].strip()
    arg_docs: dict[str, str] = {}
    if len(parts) == 2:
        section = re.split(r"^(?:Returns|Raises|Example|Examples|Yields|Note):\s*$", parts[1],
                           maxsplit=1, flags=re.MULTILINE)[0]
        current: str | None = None
        for line in section.splitlines():
            match = re.match(r"^\s*(\w+)(?:\s*\([^)]*\))?:\s*(.*)$", line)
            if match and (current is None or _indent(line) <= _indent_of_args(section)):
                current = match.group(1)
                arg_docs[current] = match.group(2).strip()
            elif current is not None and line.strip():
                arg_docs[current] = f"{arg_docs[current]} {line.strip()}".strip()
    return summary, arg_docs


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _indent_of_args(section: str) -> int:
    first = next((line for line in section.splitlines() if line.strip()), "")
    return _indent(first)


def _json_schema(annotation: Any, where: str) -> dict[str, Any]:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) != 1 or len(args) != 2:
            raise ToolDefinitionError(
                f"{where}: only `T | None` unions can be described; use one type"
            )
        return {**_json_schema(options[0], where), "nullable": True}
    if origin is Literal:
        kinds = {type(a) for a in args}
        if len(kinds) != 1 or next(iter(kinds)) not in _JSON_TYPES:
            raise ToolDefinitionError(f"{where}: Literal values must all be str, int or float")
        return {"type": _JSON_TYPES[next(iter(kinds))], "enum": list(args)}
    if origin in (list, tuple) or annotation in (list, tuple):
        spec: dict[str, Any] = {"type": "array"}
        if args and origin is list:
            spec["items"] = _json_schema(args[0], where)
        return spec
    if origin is dict or annotation is dict:
        spec = {"type": "object"}
        if len(args) == 2:
            spec["additionalProperties"] = _json_schema(args[1], where)
        return spec
    if annotation in _JSON_TYPES:
        return {"type": _JSON_TYPES[annotation]}
    if annotation is Any:
        return {"type": "any"}
    raise ToolDefinitionError(
        f"{where}: type {annotation!r} cannot be described in JSON; use str, int, float, bool, "
        "list[...], dict[str, ...], Literal[...] or T | None"
    )


def _mismatch(value: Any, spec: Mapping[str, Any]) -> str | None:
    """Why ``value`` does not fit ``spec``, or None when it does."""
    if value is None:
        return None if spec.get("nullable") else f"must be {_describe(spec)}, got null"
    if "enum" in spec and value not in spec["enum"]:
        return f"must be one of {spec['enum']!r}, got {_shown(value)}"
    kind = spec["type"]
    fits = {
        "string": isinstance(value, str),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
        "array": isinstance(value, list),
        "object": isinstance(value, dict),
        "any": True,
    }[kind]
    if not fits:
        return f"must be {_describe(spec)}, got {_kind_of(value)} ({_shown(value)})"
    if kind == "array" and "items" in spec:
        for i, item in enumerate(value):
            problem = _mismatch(item, spec["items"])
            if problem is not None:
                return f"item {i} {problem}"
    if kind == "object" and "additionalProperties" in spec:
        for key, item in value.items():
            problem = _mismatch(item, spec["additionalProperties"])
            if problem is not None:
                return f"entry {key!r} {problem}"
    return None


def _describe(spec: Mapping[str, Any]) -> str:
    if "enum" in spec:
        return f"one of {spec['enum']!r}"
    article = {"integer": "an", "array": "an", "object": "an", "any": "any"}.get(spec["type"], "a")
    text = f"{article} {spec['type']}" if spec["type"] != "any" else "any value"
    if "items" in spec:
        text += f" of {_describe(spec['items'])}"
    return text + (" or null" if spec.get("nullable") else "")


def _kind_of(value: Any) -> str:
    for python_type, json_type in (
        (bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
        (list, "array"), (dict, "object"),
    ):
        if isinstance(value, python_type):
            return f"a {json_type}" if json_type[0] not in "aeiou" else f"an {json_type}"
    return type(value).__name__


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _names(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names)
