"""Strict construction of plain dataclasses from YAML data.

Specs and recipes are plain dataclasses; this module turns nested dicts into them
and rejects unknown keys and wrong types with the key path at fault, so every
config file in the project is validated the same way.
"""
import dataclasses
import math
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
            source, key, f"expected {_type_name(tp)}, got {short(value)}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise SpecError(source, key, f"expected one of {_type_name(tp)}, got {short(value)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise SpecError(source, key, f"expected {_type_name(tp)}, got {short(value)}")
        (item_tp, *_) = typing.get_args(tp) or (typing.Any,)
        items = [_convert(item_tp, v, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, source, key)
    if tp is typing.Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise SpecError(source, key, f"expected bool, got {short(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(source, key, f"expected int, got {short(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(source, key, f"expected float, got {short(value)}")
        # No field of a spec or recipe means anything at infinity or NaN (an infinite lr
        # trained to "done" with NaN weights); an int too large for a float is refused too.
        try:
            number = float(value)
        except OverflowError:
            number = float("inf")
        if not math.isfinite(number):
            raise SpecError(source, key, f"must be a finite number, got {short(value)}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise SpecError(source, key, f"expected str, got {short(value)}")
        return value
    raise TypeError(f"unsupported field type {tp!r} at {key}")


def build(cls, data, source="", prefix=""):
    """Build dataclass ``cls`` from mapping ``data``; errors name ``source`` and the key path."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(source, prefix, f"expected a mapping, got {short(data)}")
    hints = typing.get_type_hints(cls)
    # compare=False fields (``source``) are set by the loader, never read from the file.
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.compare}
    unknown = [k for k in data if k not in fields]
    if unknown:
        name = unknown[0] if isinstance(unknown[0], str) else short(unknown[0], 40)
        name = name if len(name) <= 32 else name[:29] + "..."
        key = f"{prefix}.{name}" if prefix else name
        raise SpecError(source, key, f"unknown key (expected one of: {', '.join(fields)})")
    kwargs = {}
    for name, field in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], key, source)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise SpecError(source, key, "required key is missing")
    return cls(**kwargs)


# Bounds on what a config file may make this process build: far above any spec or recipe,
# far below what costs noticeable time or memory. YAML aliases are kept (they share, not
# copy), but the structure they expand to is counted, so a 400-byte alias bomb is refused.
MAX_YAML_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_NODES = 100_000


def short(value, limit=60):
    """A bounded repr for messages: a bad value is quoted by its prefix only."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother, r.maxlist, r.maxdict = 3, limit, limit, 6, 6
    text = " ".join(r.repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_graph(node, source, key):
    """Refuse a node graph that is recursive, deeper than MAX_DEPTH or larger than MAX_NODES once
    aliases are expanded; counted per distinct node, so checking costs the file's size, not the expansion's."""
    size, depth, open_ = {}, {}, set()
    stack = [(node, False)]
    while stack:
        n, done = stack.pop()
        if id(n) in size:
            continue
        kids = [c for pair in n.value for c in pair] if isinstance(n, yaml.MappingNode) else \
            list(n.value) if isinstance(n, yaml.SequenceNode) else []
        if not done:
            if id(n) in open_:
                raise SpecError(source, key, "a YAML alias refers to itself (recursive structure)")
            open_.add(id(n))
            stack.append((n, True))
            stack.extend((c, False) for c in kids if id(c) not in size)
            continue
        open_.discard(id(n))
        size[id(n)] = 1 + sum(size[id(c)] for c in kids)
        depth[id(n)] = 1 + max((depth[id(c)] for c in kids), default=0)
        if depth[id(n)] > MAX_DEPTH:
            raise SpecError(source, key, f"YAML nested deeper than {MAX_DEPTH} levels")
        if size[id(n)] > MAX_NODES:
            raise SpecError(source, key, f"YAML expands to more than {MAX_NODES} values "
                                         f"(aliases counted as copies): refused")


def safe_yaml(text, source="", key=""):
    """``yaml.safe_load`` with bounded nesting and alias expansion; errors are one-line SpecErrors."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_graph(node, source, key)
        return loader.construct_document(node)
    except RecursionError:  # the pure-Python parser, without libyaml, recurses per level
        raise SpecError(source, key, f"YAML nested deeper than {MAX_DEPTH} levels") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(err, "problem", None) or err).split())
        raise SpecError(source, key, f"invalid YAML{where}: {problem[:100]}") from None
    finally:
        loader.dispose()


def load_yaml(path):
    """Read a YAML mapping; unreadable, malformed, non-UTF-8, too deep or too large files raise SpecError."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise SpecError(str(path), "", f"larger than {MAX_YAML_BYTES >> 20} MiB: not a config file")
        data = path.read_bytes()
    except OSError as err:
        raise SpecError(str(path), "", f"cannot read: {err.strerror or err}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SpecError(str(path), "", f"not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start})") from None
    data = safe_yaml(text, str(path))
    if not isinstance(data, dict):
        raise SpecError(str(path), "", "expected a mapping at the top level")
    return data


def parse_value(text, key, source="--set"):
    """A ``--set KEY=VALUE`` value, read as YAML under the same bounds as a config file."""
    if len(text) > 10_000:
        raise SpecError(source, key, "value longer than 10000 characters")
    return safe_yaml(text, source, key)


def to_dict(obj):
    """The inverse of ``build``: nested plain data, tuples as lists (YAML- and JSON-ready)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj
