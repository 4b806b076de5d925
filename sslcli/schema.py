"""Recipe sections as typed dataclasses: YAML values checked against a section's type hints and
its fields' bounds, refused naming the key, the type or bound expected, and a did-you-mean."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union

from .errors import UserError, did_you_mean


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        item = typing.get_args(tp)[0]
        plural = {int: "integers", float: "numbers", str: "strings", bool: "true or false values"}
        return f"a list of {plural.get(item) or _type_name(item)}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null",
            dict: "a mapping"}.get(
        tp, str(tp)
    )


_NO = object()


def _coerce(value: Any, tp: Any) -> Any:
    """`value` as type `tp`, or _NO when it does not fit."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return value if value in typing.get_args(tp) else _NO
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            out = _coerce(value, arg)
            if out is not _NO:
                return out
        return _NO
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return _NO
        (item_tp,) = typing.get_args(tp)
        items = [_coerce(v, item_tp) for v in value]
        return _NO if any(i is _NO for i in items) else items
    if tp is type(None):
        return None if value is None else _NO
    if tp is bool:
        return value if isinstance(value, bool) else _NO
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO
    if tp is float:
        if isinstance(value, bool):
            return _NO
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                return _NO
        return _NO
    if tp is str:
        return value if isinstance(value, str) else _NO
    if tp is dict:
        return value if isinstance(value, dict) else _NO
    raise TypeError(f"unsupported recipe type {tp}")


def build_section(cls: type, raw: Any, section: str) -> Any:
    """Instantiate dataclass `cls` from `raw`, refusing unknown keys and wrong types."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"recipe section '{section}' must be a mapping of keys to values, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in fields:
            raise UserError(
                f"unknown recipe key '{section}.{key}'{did_you_mean(key, fields)}; "
                f"keys of '{section}': {', '.join(fields)}"
            )
        out = _coerce(value, hints[key])
        if out is _NO:
            raise UserError(f"recipe key '{section}.{key}' must be {_type_name(hints[key])}, got {value!r}")
        meta = fields[key].metadata
        for number in out if isinstance(out, list) else [out]:
            if isinstance(number, (int, float)) and not isinstance(number, bool):
                if "min" in meta and number < meta["min"]:
                    raise UserError(f"recipe key '{section}.{key}' must be at least {meta['min']}, got {value!r}")
                if "max" in meta and number > meta["max"]:
                    raise UserError(f"recipe key '{section}.{key}' must be at most {meta['max']}, got {value!r}")
        values[key] = out
    return cls(**values)
