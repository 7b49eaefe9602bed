"""Checking a run file's JSON against the field types of the record it should become (a
dataclass): nested records are objects, lists are lists, numbers finite and in int64, and a
bad value is one sentence naming the file, the line and the field."""
from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any

MAX_INT = 2 ** 63 - 1   # int64: past this a JSON integer is not a count or a time (ns) of any run


class RunFileError(ValueError):
    """A run file that cannot be read or written; the message names it."""


@functools.lru_cache(maxsize=None)  # per record class: resolving hints costs ~0.4 ms a call
def _fields(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


@functools.lru_cache(maxsize=None)
def _split_optional(hint) -> tuple[Any, bool]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), len(args) < len(typing.get_args(hint))
    return hint, hint is Any


def check_raw(data: dict, cls, prefix: str, at: str) -> None:
    """The JSON as read, before `from_json`: nested records are objects, lists are lists, and
    present values have their field's type (missing and null ones are left to `from_json`)."""
    for name, hint, scalar in _field_shapes(cls):
        value = data.get(name)
        if value is not None and not (scalar is not None and scalar(value)):
            check_value(value, hint, prefix + name, at, raw=True)


@functools.lru_cache(maxsize=None)
def _shape(hint) -> tuple:
    """(hint without None, optional, origin, args, is a record, scalar check or None): worked out
    once per hint, since a manifest checks the same hints on every line."""
    hint, optional = _split_optional(hint)
    origin, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    scalar = None if dataclasses.is_dataclass(hint) or origin in (list, tuple, dict) or hint is Any else \
        _FAST.get(hint, functools.partial(_scalar_ok, hint=hint))
    return hint, optional, origin, args, dataclasses.is_dataclass(hint), scalar


# Sufficient checks for the common scalars (a value they miss goes through _scalar_ok's full check).
_FAST = {int: lambda v: type(v) is int and -MAX_INT <= v <= MAX_INT,
         float: lambda v: (type(v) is float or type(v) is int) and -1e300 <= v <= 1e300,
         str: lambda v: type(v) is str, bool: lambda v: type(v) is bool}


@functools.lru_cache(maxsize=None)
def _field_shapes(cls) -> tuple:
    return tuple((name, hint, _shape(hint)[5]) for name, hint in _fields(cls).items())


def check_value(value: Any, hint, name: str, at: str, raw: bool = False) -> None:
    hint, optional, origin, args, record, scalar = _shape(hint)
    if scalar is not None and value is not None and scalar(value):
        return  # the common case, first
    if hint is Any or (value is None and (optional or raw)):
        return
    if value is None:
        raise RunFileError(f"{at}: field {_field(name)} is missing or null; expected {_describe(hint)}.")
    if record:
        if raw and isinstance(value, dict):
            return check_raw(value, hint, name + ".", at)
        if not raw and isinstance(value, hint):
            for field, field_hint, scalar in _field_shapes(hint):
                v = getattr(value, field)
                if v is None or scalar is None or not scalar(v):
                    check_value(v, field_hint, f"{name}.{field}" if name else field, at)
            return
    elif origin in (list, tuple) and isinstance(value, (list, tuple)):
        item_hints = args if origin is tuple and args and args[-1] is not Ellipsis else (args[:1] or (Any,)) * len(value)
        if len(item_hints) == len(value):
            for i, (v, h) in enumerate(zip(value, item_hints)):
                check_value(v, h, f"{name}[{i}]", at, raw)
            return
    elif origin is dict and isinstance(value, dict):
        for k, v in value.items():
            check_value(v, args[1] if args else Any, f"{name}.{k}", at, raw)
        return
    elif _scalar_ok(value, hint):
        return
    raise RunFileError(f"{at}: field {_field(name)} is {show(value)}; expected {_describe(hint)}.")


def _scalar_ok(value: Any, hint) -> bool:
    if hint is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if hint is int:
        return isinstance(value, int) and abs(value) <= MAX_INT
    if hint is float:
        # (the bound first: isfinite() of an int of 400 digits raises OverflowError)
        return isinstance(value, (int, float)) and abs(value) <= 1e300 and math.isfinite(value)
    if typing.get_origin(hint) is typing.Union:
        return any(_scalar_ok(value, h) for h in typing.get_args(hint))
    return isinstance(hint, type) and isinstance(value, hint)


def _describe(hint) -> str:
    if dataclasses.is_dataclass(hint) or hint is dict or typing.get_origin(hint) is dict:
        return "a JSON object"
    if typing.get_origin(hint) is tuple and typing.get_args(hint) and typing.get_args(hint)[-1] is not Ellipsis:
        return f"a list of {len(typing.get_args(hint))} items"
    if typing.get_origin(hint) in (list, tuple) or hint in (list, tuple):
        return "a list"
    names = {int: "an integer (int64)", float: "a finite number", str: "a string",
             bool: "true or false"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _field(name: str) -> str:
    """A field's path, quoted; keys of damaged files may hold anything, even ". "."""
    return repr(name if len(name) <= 80 else name[:77] + "...").replace(". ", ".")


def show(value: Any) -> str:
    """A short description of a bad value that keeps the message one sentence."""
    if isinstance(value, str):
        return f"the string {value!r}" if len(value) <= 40 and ". " not in value else "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a JSON object"
    text = repr(value)
    return text if len(text) <= 40 else f"a {len(text)}-digit number"


def first_sentence(e: BaseException) -> str:
    return str(e).split(". ")[0].rstrip(".").replace("\n", " ")[:200] or type(e).__name__
