"""Dataclasses from parsed JSON, checked against their type hints: the one
reader behind the engine manifest, the sidecar of a TensorRT plan and a
model's config in a checkpoint (the schema is the dataclass, declared once).

    manifest = parse(Manifest, json.loads(text), source="glow.onnx's manifest",
                     fix="re-export the engine")

What a value may be, by its annotation: a dataclass (a JSON object with no
unknown keys and every field without a default), `list[X]`, `tuple[X, Y]`
(a list or a tuple of that length, built as a tuple), `tuple[X, ...]` (of
any length), `dict[str, X]`, a
union (`X | None`: the first that fits), `int` (never a bool), `float` (an
int too: JSON writes 1.0 as 1), `str`, `bool`, `Any` (taken as it is).
`ranges` bounds numeric top-level fields by name (each item of a list).
A value that does not fit is one line naming the file, the field and the fix.
What types alone do not say, each reader checks after `parse`, raising
Malformed into the same one line (manifest_io, backends/sidecar), or the
dataclass in its `__post_init__` (gentrain's configs).
"""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from .errors import UserError

T = TypeVar("T")


class Malformed(ValueError):
    """A value of the wrong type, shape or range: where it is and what is wrong."""


def parse(
    kind: type[T],
    value: Any,
    source: str,
    fix: str,
    ranges: Mapping[str, tuple[float, float]] | None = None,
) -> T:
    """`value` (parsed JSON) as the dataclass `kind`, or a one-line UserError
    '{source}: {field and problem}; {fix}'."""
    try:
        return build(kind, value, ranges=ranges)
    except Malformed as err:
        raise refusal(source, err, fix) from None


def refusal(source: str, problem: Malformed, fix: str) -> UserError:
    """The one line for a value that does not fit: '{source}: {problem}; {fix}'
    (`parse`'s, and a reader's for what it checks after `parse`)."""
    return UserError(f"{source}: {problem}; {fix}")


def build(
    kind: Any, value: Any, where: str = "", ranges: Mapping[str, tuple[float, float]] | None = None
) -> Any:
    """`value` checked against the annotation `kind` (see the module doc),
    dataclasses built from their objects; a misfit raises Malformed naming
    the field (`where`, dotted from the top)."""
    if dataclasses.is_dataclass(kind):
        return _dataclass(kind, value, where, ranges or {})
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return build(option, value, where)
            except Malformed:
                continue
        names = " or ".join(_type_name(option) for option in args)
        raise Malformed(f"{_name(where)} = {value!r:.60} is not {names}")
    if origin is list:
        if not isinstance(value, list):
            raise Malformed(f"{_name(where)} = {value!r:.60} is not a list")
        return [build(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]
        if not isinstance(value, (list, tuple)):
            raise Malformed(f"{_name(where)} = {value!r:.60} is not a list")
        return tuple(build(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise Malformed(f"{_name(where)} = {value!r:.60} is not a list of {len(args)} items")
        return tuple(
            build(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise Malformed(f"{_name(where)} = {value!r:.60} is not an object")
        return {k: build(args[1], v, _join(where, k)) for k, v in value.items()}
    if kind is type(None):
        if value is not None:
            raise Malformed(f"{_name(where)} = {value!r:.60} is not null")
        return value
    if isinstance(value, bool) and kind is not bool:  # bool is an int to Python, not to JSON
        raise Malformed(f"{_name(where)} = {value!r} is not {_type_name(kind)}")
    if kind is int and isinstance(value, numbers.Integral):
        return int(value)
    if kind is float and isinstance(value, numbers.Real):
        return float(value)
    if not isinstance(value, kind):
        raise Malformed(f"{_name(where)} = {value!r:.60} is not {_type_name(kind)}")
    return value


def _dataclass(kind: Any, value: Any, where: str, ranges: Mapping[str, tuple[float, float]]):
    if not isinstance(value, dict):
        raise Malformed(f"{_name(where)} is not an object, got {type(value).__name__}")
    hints = typing.get_type_hints(kind)
    names = [item.name for item in dataclasses.fields(kind) if item.init]
    unknown = sorted(str(key) for key in value if key not in names)
    if unknown:
        raise Malformed(f"{where + ' has ' if where else ''}unknown keys: {', '.join(unknown)}")
    built = {}
    for item in dataclasses.fields(kind):
        if item.name in value:
            inner = _join(where, item.name)
            built[item.name] = build(hints[item.name], value[item.name], inner)
            if item.name in ranges and not where:
                _check_range(inner, built[item.name], ranges[item.name])
        elif item.init and item.default is item.default_factory is dataclasses.MISSING:
            raise Malformed(f"{where + ' ' if where else ''}lacks {item.name}")
    return kind(**built)


def _check_range(where: str, value: Any, bounds: tuple[float, float]) -> None:
    low, high = bounds
    for item in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(item, numbers.Real) and not low <= item <= high:  # NaN fails too
            raise Malformed(f"{where} = {value!r:.60} is outside {low:g}..{high:g}")


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _name(where: str) -> str:
    return where or "the value"


def _type_name(kind: Any) -> str:
    if kind is type(None):
        return "null"
    name = getattr(kind, "__name__", str(kind))
    return f"an {name}" if name[0].lower() in "aeiou" else f"a {name}"
