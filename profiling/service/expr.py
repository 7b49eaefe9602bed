"""Attribute expressions of the symbol YAML: a value, then pipe operations left to right.

    args[0] | attr input_batch | len          the first positional argument (self, for methods)
    request_id                                a parameter, by name (positional or keyword)
    kwargs['batch_size']                      a keyword argument
    return | len | str                        the return value
    len(prompt)                               the same as `prompt | len`
    reqs | map attr request_id                apply an operation to every element

Operations: attr NAME, call (a method with no arguments), len, str, int, float, bool, list,
sum, min, max, map OP. Expressions are parsed when the YAML is loaded (a bad one is reported
then), the parameter names they read are checked against the patched function's signature
when it is instrumented, and they are evaluated after the call returns.

What an expression may reach is restricted, since the symbols file names code to run in the
server: `attr` takes public names only (no `_` prefix, so no `__globals__` or `__class__`),
`['key']` no dunder keys, and `call` only right after an `attr` and only on a bound method (not
a function of a module, not a class).
"""
from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any, Callable

_FUNCS = {"len": len, "str": str, "int": int, "float": float, "bool": bool, "list": list, "sum": sum,
          "min": min, "max": max}
_INDEX = re.compile(r"\[\s*(-?\d+|'[^']*'|\"[^\"]*\")\s*\]")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ExpressionError(ValueError):
    pass


class Context:
    """What an expression can see: the call's arguments, bound parameter names, the result."""
    __slots__ = ("args", "kwargs", "result", "_names", "_binder")

    def __init__(self, args, kwargs, result, binder: Callable[[tuple, dict], dict] | None):
        self.args, self.kwargs, self.result, self._binder, self._names = args, kwargs, result, binder, None

    def name(self, key: str):
        if self._names is None:
            self._names = self._binder(self.args, self.kwargs) if self._binder else dict(self.kwargs)
        if key not in self._names:
            raise NameError(f"no parameter named {key!r}")
        return self._names[key]


@dataclasses.dataclass(frozen=True)
class Expression:
    """A compiled attribute expression: call it with a Context."""
    text: str
    names: frozenset[str]                  # the call's parameters it reads by name
    evaluate: Callable[[Context], Any]

    def __call__(self, ctx: Context) -> Any:
        return self.evaluate(ctx)


def unbound_names(expr: Expression, fn: Callable) -> list[str]:
    """The parameters `expr` reads by name that `fn` does not have (none if it takes **kwargs)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    return sorted(expr.names - set(params))


def compile_expr(text: str) -> Expression:
    """The expression; ExpressionError with the reason if `text` is not valid."""
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError("an expression must be a non-empty string")
    parts = [p.strip() for p in text.split("|")]
    source, name = _source(parts[0])
    ops = [_operation(p, parts[i - 1] if i > 1 else "") for i, p in enumerate(parts[1:], start=1)]

    def evaluate(ctx: Context):
        value = source(ctx)
        for op in ops:
            value = op(value)
        return value
    return Expression(text, frozenset([name] if name else []), evaluate)


def _source(text: str) -> tuple[Callable[[Context], Any], str | None]:
    """(the value's getter, the parameter it reads by name, if any)."""
    m = re.fullmatch(r"(len|str|int|float|bool|list|sum|min|max)\((.+)\)", text)
    if m:  # the call form, `len(x)`
        (inner, name), fn = _source(m.group(2).strip()), _FUNCS[m.group(1)]
        return (lambda ctx: fn(inner(ctx))), name
    m = _NAME.match(text)
    if not m:
        raise ExpressionError(f"{text!r} does not start with a name (args, kwargs, return or a parameter)")
    head, rest = m.group(0), text[m.end():]
    keys = []
    while rest.strip():
        rest = rest.strip()
        k = _INDEX.match(rest)
        if not k:
            raise ExpressionError(f"cannot read {rest!r} after {head!r}; expected [index] or ['key']")
        raw = k.group(1)
        if raw[1:].startswith("__"):
            raise ExpressionError(f"the key {raw} is private; expressions read public data only")
        keys.append(int(raw) if raw.lstrip("-").isdigit() else raw[1:-1])
        rest = rest[k.end():]
    name = None
    if head == "return":
        base = lambda ctx: ctx.result  # noqa: E731
    elif head == "args":
        base = lambda ctx: ctx.args  # noqa: E731
    elif head == "kwargs":
        base = lambda ctx: ctx.kwargs  # noqa: E731
    else:
        base, name = (lambda ctx: ctx.name(head)), head  # noqa: E731
    if not keys:
        return base, name

    def indexed(ctx):
        value = base(ctx)
        for key in keys:
            value = value[key]
        return value
    return indexed, name


def _operation(text: str, previous: str = "") -> Callable[[Any], Any]:
    words = text.split()
    if not words:
        raise ExpressionError("an empty step between two '|'")
    op, rest = words[0], words[1:]
    if op in _FUNCS and not rest:
        return _FUNCS[op]
    if op == "attr" and len(rest) == 1 and _NAME.fullmatch(rest[0]):
        name = rest[0]
        if name.startswith("_"):
            raise ExpressionError(f"attr {name} is private; expressions read public attributes only")
        return lambda v: getattr(v, name)
    if op == "call" and not rest:
        if previous.split()[:1] != ["attr"]:
            raise ExpressionError("call must follow an attr step (it calls a public method)")
        return _call
    if op == "map" and rest:
        inner_prev = " ".join(previous.split()[1:]) if previous.split()[:1] == ["map"] else ""
        inner = _operation(" ".join(rest), inner_prev)
        return lambda v: [inner(x) for x in v]
    raise ExpressionError(f"unknown operation {text!r}; expected attr NAME, call, map OP, or one of "
                          f"{', '.join(_FUNCS)}")


def _call(method):
    """Call a bound method with no arguments; anything else (a module's function, a class) is
    refused when the expression runs."""
    owner = getattr(method, "__self__", None)
    if not callable(method) or owner is None or inspect.ismodule(owner) or inspect.isclass(method):
        raise TypeError(f"call only calls a method of an object, not {type(method).__name__}")
    return method()
