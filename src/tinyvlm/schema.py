"""Dataclasses <-> plain dicts and YAML, with errors that name the file and the key path.

The ground floor of every configuration: `from_dict` checks keys and types recursively and
names the closest valid key for a typo; `to_dict` is its inverse. Nothing here knows what a
model or a recipe is.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tinyvlm.errors import InputError, closest

T = TypeVar("T")


def to_dict(obj: Any) -> Any:
    """A dataclass (tree) as plain dicts/lists, ready for JSON or YAML."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def from_dict(cls: type[T], data: Any, source: str | Path | None = None, key: str = "") -> T:
    """Build `cls` from a dict, checking keys and types; errors name `source` and the key path."""
    return _convert(cls, data, source, key or cls.__name__)


def _convert(tp: Any, value: Any, source: str | Path | None, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _convert_union(tp, value, source, key)
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, value, source, key)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise InputError(f"'{key}' must be a list, got {value!r}", source)
        return [_convert(item_tp, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise InputError(f"'{key}' must be a mapping, got {value!r}", source)
        return {
            _convert(key_tp, k, source, key): _convert(val_tp, v, source, f"{key}.{k}")
            for k, v in value.items()
        }
    return _convert_scalar(tp, value, source, key)


def _convert_union(tp: Any, value: Any, source: str | Path | None, key: str) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if value is None and len(args) < len(typing.get_args(tp)):
        return None
    for arg in args[:-1]:
        try:
            return _convert(arg, value, source, key)
        except InputError:
            continue
    return _convert(args[-1], value, source, key)


def _convert_dataclass(tp: Any, value: Any, source: str | Path | None, key: str) -> Any:
    if value is None:
        return tp()
    if not isinstance(value, dict):
        raise InputError(f"'{key}' must be a mapping, got {type(value).__name__}", source)
    hints = typing.get_type_hints(tp)
    names = [f.name for f in dataclasses.fields(tp) if f.init]
    kwargs = {}
    for name, item in value.items():
        if name not in names:
            raise InputError(f"unknown key '{key}.{name}'{closest(str(name), names)}", source)
        kwargs[name] = _convert(hints[name], item, source, f"{key}.{name}")
    try:
        return tp(**kwargs)
    except InputError as e:  # a dataclass's own check (__post_init__): name where it was
        if e.located or source is None:
            raise
        raise InputError(f"'{key}': {e}", source) from None


def _convert_scalar(tp: Any, value: Any, source: str | Path | None, key: str) -> Any:
    if tp is Any:
        return value
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML reads 1e-3 (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if tp in (int, str, bool) and isinstance(value, tp) and not (
        tp is int and isinstance(value, bool)
    ):
        return value
    raise InputError(f"'{key}' must be {getattr(tp, '__name__', tp)}, got {value!r}", source)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (YAML
    itself keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError("not a UTF-8 text file", path) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InputError(
            f"malformed YAML: {problem}", path, None if line is None else line + 1
        ) from None


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)
