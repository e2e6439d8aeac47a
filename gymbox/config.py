"""Typed configuration from TOML/YAML files and ``--set section.key=value`` overrides.

A config is a tree of frozen dataclasses. :func:`load_config` reads a mapping into it strictly:
an unknown key is an error that lists the valid ones, and every value is converted to the
field's declared type, so a typo never silently falls back to a default.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Run:
    ...     steps: int = 10
    ...     lr: float = 1e-5
    >>> from_mapping(Run, {"steps": "3"})
    Run(steps=3, lr=1e-05)
    >>> apply_overrides(Run(), ["lr=2e-5"]).lr
    2e-05
    >>> from_mapping(Run, {"step": 3})
    Traceback (most recent call last):
    ...
    gymbox.runtime.errors.ConfigurationError: config: unknown key(s) step; valid: lr, steps

The library's own config objects (``TrainerConfig``, ``SandboxSpec``...) are such dataclasses,
so a run config embeds them as sections and every default has one home.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from gymbox.runtime.errors import ConfigurationError

T = TypeVar("T")


def load_config(cls: type[T], path: str | Path | None, overrides: Sequence[str] = ()) -> T:
    """Build ``cls`` from a TOML or YAML file (or its defaults), then apply ``overrides``."""
    data: Mapping[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigurationError(f"config file {path} does not exist")
        text = path.read_text()
        try:
            if path.suffix == ".toml":
                data = tomllib.loads(text)
            elif path.suffix in (".yaml", ".yml"):
                data = yaml.safe_load(text) or {}
            else:
                raise ConfigurationError(f"config {path}: use a .toml, .yaml or .yml file")
        except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
            raise ConfigurationError(f"config {path} does not parse: {exc}") from exc
    return apply_overrides(from_mapping(cls, data), overrides)


def apply_overrides(config: T, overrides: Sequence[str]) -> T:
    """Apply ``section.key=value`` strings (values parsed as JSON when they can be)."""
    data = to_mapping(config)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigurationError(f"override {item!r}: expected section.key=value")
        *parents, leaf = key.strip().split(".")
        node = data
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ConfigurationError(f"override {item!r}: {part!r} is not a section")
            node = node[part]
        node[leaf] = _parse_scalar(raw.strip())
    return from_mapping(type(config), data)


def from_mapping(cls: type[T], data: Mapping[str, Any], where: str = "",
                 base: T | None = None) -> T:
    """Build the dataclass ``cls`` from ``data``, strictly (see the module docstring).

    A key ``data`` leaves out keeps its default: ``base``'s value when given, else the
    field's. A nested section given in part keeps the rest of its own default, so
    ``[sampling] max_new_tokens = 48`` leaves the default stop strings in place.
    """
    if not isinstance(data, Mapping):
        raise ConfigurationError(f"{where or 'config'}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigurationError(
            f"{where or 'config'}: unknown key(s) {', '.join(unknown)}; "
            f"valid: {', '.join(sorted(fields))}"
        )
    values = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            default = getattr(base, name) if base is not None else _default(fields[name])
            values[name] = from_mapping(hint, value, f"{where}{name}.", default)
        else:
            values[name] = _convert(hint, value, f"{where}{name}")
    if base is not None:
        values = {**{n: getattr(base, n) for n in fields}, **values}
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{where or 'config'}: {exc}") from exc


def to_mapping(config: object) -> dict[str, Any]:
    """The plain-dict form of a config (what ``config.json`` of a run holds)."""
    return json.loads(json.dumps(_plain(config)))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if f.init}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    return value


def explain(cls: type, prefix: str = "", base: Any = None) -> list[tuple[str, str, str]]:
    """``(key, default, doc)`` for every field of the config tree ``cls``, sections flattened
    to ``section.key``. The doc is the field's entry in its class's ``Attributes:`` docstring
    section: the one place each field is documented.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass(frozen=True)
        ... class Run:
        ...     \"\"\"A run.
        ...
        ...     Attributes:
        ...         steps: optimiser steps.
        ...     \"\"\"
        ...     steps: int = 10
        >>> explain(Run)
        [('steps', '10', 'optimiser steps.')]
    """
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    rows: list[tuple[str, str, str]] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = getattr(base, f.name) if base is not None else _default(f)
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            rows.append((f"{prefix}{f.name}", "[section]", docs.get(f.name, "")))
            rows.extend(explain(hint, f"{prefix}{f.name}.", default))
            continue
        rows.append((f"{prefix}{f.name}", json.dumps(_plain(default)), docs.get(f.name, "")))
    return rows


def field_docs(cls: type) -> dict[str, str]:
    """The ``name: text`` entries of ``cls``'s ``Attributes:`` docstring section."""
    docs: dict[str, str] = {}
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    inside, current, indent = False, None, 0
    for line in lines:
        if line.strip() == "Attributes:":
            inside, current = True, None
            continue
        if not inside:
            continue
        if line and not line.startswith(" "):
            break  # the next section
        stripped = line.strip()
        if not stripped:
            current = None
            continue
        this_indent = len(line) - len(line.lstrip())
        match = re.match(r"([A-Za-z_][A-Za-z0-9_]*)(?: \(.*?\))?: (.*)", stripped)
        if match and (current is None or this_indent <= indent):
            current, indent = match.group(1), this_indent
            docs[current] = match.group(2)
        elif current is not None:
            docs[current] += " " + stripped
    return docs


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_mapping(hint, value, where + ".")
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, where)
            except ConfigurationError as exc:
                errors.append(str(exc))
        raise ConfigurationError("; ".join(errors))
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            allowed = ", ".join(map(repr, typing.get_args(hint)))
            raise ConfigurationError(f"{where}: {value!r} is not one of {allowed}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ConfigurationError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return origin(_convert(item, v, where) for v in value)
    if origin in (dict, Mapping) or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigurationError(f"{where}: expected a table, got {value!r}")
        args = typing.get_args(hint)
        if len(args) == 2:
            return {k: _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
        return dict(value)
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigurationError(f"{where}: expected a number, got {value!r}")
        try:
            number = hint(value)
        except (TypeError, ValueError):
            raise ConfigurationError(f"{where}: expected {hint.__name__}, got {value!r}") from None
        if hint is int and isinstance(value, float) and value != number:
            raise ConfigurationError(f"{where}: expected an integer, got {value!r}")
        return number
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigurationError(f"{where}: expected true or false, got {value!r}")
    if hint is str:
        if not isinstance(value, str):
            raise ConfigurationError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _parse_scalar(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw
