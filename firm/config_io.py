"""Typed config sections from plain data: the converter, config files and `key=value` overrides.

Shared by the run config (`firm.config`) and the reward-learning config (`firm.rewards.config`):
frozen dataclass sections built from a parsed TOML/YAML file with every key and type checked,
each error one `ConfigError` line naming the dotted key.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import math
import textwrap
import tomllib
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal


class ConfigError(ValueError):
    """A user-facing configuration error: one line, naming the key and what is allowed."""


def type_name(tp: Any) -> str:
    """How an error message names a field type: "an integer", "one of 'a', 'b'", "a list of a number"."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {type_name(typing.get_args(tp)[0])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def convert(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the field type `tp` and convert it (lists -> tuples, int -> float)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: got {value!r}, allowed: {type_name(tp)}")
        return value
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ConfigError(f"{key}: expected {type_name(tp)}, got {value!r}")
        item_tp = typing.get_args(tp)[0]
        return tuple(convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config field type {tp} at {key}")  # a bug in this module, not user input


def build_dataclass(cls: type, data: Mapping[str, Any], prefix: str, renamed: Mapping[str, str] | None = None) -> Any:
    """`cls(**data)` with every key and type checked (ConfigError naming the dotted key), nested sections built
    recursively; a key of `renamed` is refused with its new name."""
    renamed = renamed or {}
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if dotted in renamed:
            raise ConfigError(f"{dotted} was renamed {renamed[dotted]}")
        if key not in names:
            raise ConfigError(
                f"unknown key {dotted!r}; allowed under {prefix.rstrip('.') or 'the top level'}: {', '.join(names)}"
            )
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if isinstance(value, str) and "name" in {f.name for f in dataclasses.fields(tp)}:
                value = {"name": value}  # `engine=flower` is short for `engine.name=flower`
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"{dotted}: expected a table of keys ({', '.join(f.name for f in dataclasses.fields(tp))}), got {value!r}"
                )
            kwargs[key] = build_dataclass(tp, value, f"{dotted}.", renamed)  # type: ignore[arg-type]
        else:
            kwargs[key] = convert(value, tp, dotted)
    return cls(**kwargs)


def read_config_file(path: Path) -> dict[str, Any]:
    """A TOML or YAML config file as nested plain data; ConfigError (with the line, for syntax errors) otherwise."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: invalid TOML: {err}") from None
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML: {' '.join(str(err).split())}") from None
        if not isinstance(data, dict | None):
            raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
        return data or {}
    raise ConfigError(f"{path}: unknown config format {path.suffix!r}; allowed: .toml, .yaml, .yml")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse `a.b=value`; the value is read as a TOML value (`3`, `0.5`, `true`, `[1, 2]`, `"x"`), else a bare string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. federation.rounds=3")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: the key must be dotted names, e.g. algorithm.reg=0.5")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def apply_override(data: dict[str, Any], text: str) -> None:
    """Set one `key=value` override in a config's nested dict (a file's, or `config_to_dict`'s), in place."""
    parts, value = parse_override(text)
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if isinstance(child, str) and node is data:  # `engine=flower` then `engine.superlink=...`
            child = node[part] = {"name": child}
        if not isinstance(child, dict):
            raise ConfigError(f"override {text!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def attribute_docstrings(cls: type) -> dict[str, str]:
    """Map field name -> the string literal that follows its annotation in the class body."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs
