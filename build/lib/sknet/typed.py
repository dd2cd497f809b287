"""Strict construction of plain dataclasses from YAML data.

Specs and recipes are plain dataclasses; this module turns nested dicts into them
and rejects unknown keys and wrong types with the key path at fault, so every
config file in the project is validated the same way.
"""
import dataclasses
import typing
from pathlib import Path

import yaml

from .errors import SpecError


def _type_name(tp):
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin is typing.Union:
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(tp, value, key, source):
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key, source)
            except SpecError as err:
                errors.append(err)
        raise errors[0] if len(errors) == 1 else SpecError(
            source, key, f"expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise SpecError(source, key, f"expected one of {_type_name(tp)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise SpecError(source, key, f"expected {_type_name(tp)}, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (typing.Any,)
        items = [_convert(item_tp, v, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, source, key)
    if tp is typing.Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise SpecError(source, key, f"expected bool, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(source, key, f"expected int, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(source, key, f"expected float, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise SpecError(source, key, f"expected str, got {value!r}")
        return value
    raise TypeError(f"unsupported field type {tp!r} at {key}")


def build(cls, data, source="", prefix=""):
    """Build dataclass ``cls`` from mapping ``data``; errors name ``source`` and the key path."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(source, prefix, f"expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        raise SpecError(source, key, f"unknown key (expected one of: {', '.join(fields)})")
    kwargs = {}
    for name, field in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], key, source)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise SpecError(source, key, "required key is missing")
    return cls(**kwargs)


def load_yaml(path):
    """Read a YAML mapping; unreadable or malformed files raise SpecError naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise SpecError(str(path), "", f"cannot read: {err.strerror or err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SpecError(str(path), "", f"invalid YAML{where}: {getattr(err, 'problem', err)}") from None
    if not isinstance(data, dict):
        raise SpecError(str(path), "", "expected a mapping at the top level")
    return data


def to_dict(obj):
    """The inverse of ``build``: nested plain data, tuples as lists (YAML- and JSON-ready)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj
