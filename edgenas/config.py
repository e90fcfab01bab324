"""Typed dataclass configs loaded from YAML/JSON with validation.

Files are parsed with ``yaml.safe_load``; every key must be a field of the target dataclass and
every value must have the field's type, otherwise a :class:`ConfigError` names the key and the
file. Nested dataclasses and tuples of them are built recursively, so a config file is exactly as
strict as the Python API.
"""

from __future__ import annotations

import dataclasses
import reprlib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from edgenas.errors import ConfigError

__all__ = ["from_mapping", "load_yaml", "short", "to_mapping"]

T = TypeVar("T")

# Configs and profiles are a few hundred bytes; these limits are far above any real one and far
# below what a hostile file needs to exhaust memory or time.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_VALUES = 100_000

_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 6
_SHORT.maxlevel = 3


def short(value: Any) -> str:
    """A value as an error message quotes it: a bounded prefix, whatever the value's size or depth."""
    return _SHORT.repr(value)


def _count_values(data: Any, limit: int) -> int:
    """Values in ``data`` with aliases expanded, counted up to ``limit``: YAML anchors let a few
    hundred bytes stand for billions of values, which any later walk or message would expand."""
    count, stack = 0, [data]
    while stack:
        item = stack.pop()
        count += 1
        if count > limit:
            return count
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file, a syntax error or a non-mapping is one line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: {size} bytes is too large for a config (the limit is {MAX_YAML_BYTES})")
    try:
        data = yaml.safe_load(path.read_bytes())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{where}: {short(problem)[1:-1]}") from None
    if _count_values(data, MAX_YAML_VALUES) > MAX_YAML_VALUES:
        raise ConfigError(f"{path}: more than {MAX_YAML_VALUES} values once its YAML aliases are expanded; "
                          "write the values out instead of nesting aliases")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: '{key}' has an invalid value {short(value)}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: '{key}' must be one of {', '.join(map(str, allowed))}, not {short(value)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: '{key}' must be a list, not {type(value).__name__}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]", where) for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: '{key}' must have {len(args)} items, not {len(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]", where) for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be a mapping, not {type(value).__name__}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be a mapping, not {type(value).__name__}")
        return from_mapping(tp, value, where=f"{where}: {key}")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: '{key}' must be true or false, not {short(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: '{key}' must be an integer, not {short(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: '{key}' must be a number, not {short(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: '{key}' must be a string, not {short(value)}")
        return value
    return value


def from_mapping(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``: unknown keys, missing required keys and wrong types
    are errors that name the key and ``where`` (usually the file)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, not {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key {short(unknown[0])} (known: {', '.join(fields)})")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], name, where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing required key '{name}'")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def to_mapping(obj: Any) -> dict[str, Any]:
    """Plain JSON/YAML-friendly dict of a dataclass (tuples become lists)."""
    return typing.cast(dict[str, Any], _plain(dataclasses.asdict(obj)))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
