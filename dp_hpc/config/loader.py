"""The generic typed loader: a plain dict (parsed YAML) checked against a dataclass's annotations
and built into it (`from_dict`), and back (`to_dict`); dotted keys (`set_dotted`, `flatten`) and
`--set key=value` parsing. Unknown keys, wrong types and impossible values raise `ConfigError`
naming the dotted key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, Literal

import yaml

from dp_hpc.errors import ConfigError


def type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def convert(tp: Any, value: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it converted (int -> float, list -> tuple)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(key, f"must be a mapping, got {type(value).__name__}")
        return from_dict(tp, value, key)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(key, f"must be {type_name(tp)}; got {value!r}")
        return value
    if origin in (tuple, list):
        (elem, *rest) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"must be a list, got {type(value).__name__} {value!r}")
        items = [convert(elem, v, f"{key}[{i}]") for i, v in enumerate(value)] if elem is not Any else list(value)
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"must be a mapping, got {type(value).__name__}")
        return value
    if origin in (typing.Union, types.UnionType):
        section = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        if section and isinstance(value, dict):  # an optional section, given: its own errors name its keys
            return convert(section[0], value, key)
        for option in typing.get_args(tp):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return convert(option, value, key)
            except ConfigError:
                continue
        raise ConfigError(key, f"must be {' or '.join(type_name(a) for a in typing.get_args(tp))}; got {value!r}")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"must be a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be an integer, got {type(value).__name__} {value!r}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ConfigError(key, f"must be {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    return value


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass `cls` from a plain dict, validating keys, types and values."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"{where}{unknown[0]}", f"unknown key; valid keys here: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = convert(hints[name], value, f"{prefix}.{name}" if prefix else name)
    missing = [n for n, f in fields.items() if n not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{prefix}.{missing[0]}" if prefix else missing[0], "required key is missing")
    try:
        return cls(**kwargs)
    except ConfigError as e:  # raised by __post_init__ with the bare field name
        raise ConfigError(f"{prefix}.{e.key}" if prefix else e.key, e.message) from None


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain YAML-able data (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def flatten(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists become JSON text (one type per table column, and
    two lists compare equal exactly when their texts do)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(v)
        else:
            out[key] = v
    return out


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    """data["a"]["b"] = value for dotted = "a.b", creating mappings on the way."""
    *parents, last = dotted.split(".")
    node = data
    for i, p in enumerate(parents):
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(".".join(parents[: i + 1]), "is not a mapping; cannot set a key inside it")
        node = nxt
    node[last] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` with the value parsed as YAML (so 3, 0.5, true, [1,2] have their types)."""
    if "=" not in text or text.startswith("="):
        raise ConfigError("--set", f"expected key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value
