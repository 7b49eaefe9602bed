"""Instrumenting the functions a symbol YAML names (symbols.py reads it): each is replaced by a
wrapper that times it (`timer`) or hands the call to an allowed handler, and put back on undo.
Attribute expressions are checked against the patched function's signature first."""
from __future__ import annotations

import functools
import importlib
import inspect
import sys
import time
from typing import Any, Callable

from .collector import COLLECTOR, Collector, describe
from .expr import Context, unbound_names
from .handlers import HANDLERS_ENV, allowed_handlers, load_handler
from .symbols import Symbol, package_version, version_allows


def resolve(symbol: str) -> tuple[Any, str, Any]:
    """(owner, attribute name, raw attribute) for 'module:A.b'; ValueError naming what is missing."""
    module_name, chain = symbol.split(":")
    try:
        owner = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"module {module_name!r} cannot be imported ({e})") from None
    *path, attr = chain.split(".")
    for part in path:
        if not hasattr(owner, part):
            raise ValueError(f"{owner.__name__!r} has no attribute {part!r}")
        owner = getattr(owner, part)
    raw = owner.__dict__.get(attr) if isinstance(owner, type) else getattr(owner, attr, None)
    if raw is None:
        raise ValueError(f"{getattr(owner, '__name__', owner)!r} has no attribute {attr!r}")
    return owner, attr, raw


def _binder(fn) -> Callable[[tuple, dict], dict]:
    """Parameter name -> value for one call. Plain signatures take a fast path (zip the names
    with the arguments); others go through inspect's binding."""
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    plain = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if all(p.kind in plain for p in params):
        names = [p.name for p in params]
        defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}

        def fast(args, kwargs):
            return {**defaults, **dict(zip(names, args)), **kwargs}
        return fast

    def bind(args, kwargs):
        bound = sig.bind_partial(*args, **kwargs)
        bound.apply_defaults()
        return dict(bound.arguments)
    return bind


def make_timer(fn, sym: Symbol, collector: Collector) -> Callable:
    domain, name, attributes = sym.domain, sym.name, sym.attributes
    binder = _binder(fn) if attributes else None
    clock = time.perf_counter_ns

    def attrs_of(args, kwargs, result) -> dict | None:
        if not attributes:
            return None
        ctx, out = Context(args, kwargs, result, binder), {}
        for key, _, evaluate in attributes:
            try:
                out[key] = evaluate(ctx)
            except Exception as e:  # never let an attribute break the call
                out[f"{key}.error"] = f"{type(e).__name__}: {e}"
        return out

    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def agen_wrapper(*args, **kwargs):
            if not collector.wants(domain):
                async for item in fn(*args, **kwargs):
                    yield item
                return
            start, items = clock(), 0
            try:
                async for item in fn(*args, **kwargs):
                    items += 1
                    yield item
            finally:
                collector.record(domain, name, start, clock(), attrs_of(args, kwargs, items))
        return agen_wrapper

    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def async_wrapper(*args, **kwargs):
            if not collector.wants(domain):
                return await fn(*args, **kwargs)
            start = clock()
            result = await fn(*args, **kwargs)
            collector.record(domain, name, start, clock(), attrs_of(args, kwargs, result))
            return result
        return async_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not collector.wants(domain):
            return fn(*args, **kwargs)
        start = clock()
        result = fn(*args, **kwargs)
        collector.record(domain, name, start, clock(), attrs_of(args, kwargs, result))
        return result
    return wrapper


def make_custom(fn, handler: Callable, sym: Symbol, collector: Collector, is_method: bool) -> Callable:
    """The handler runs the call. If the handler itself raises, its error is recorded (a span
    with `handler.error`, and one warning per symbol) and the call proceeds as if unprofiled:
    its result if the handler had already run it, else the function is called now. An error
    raised by the function itself passes through unchanged."""
    domain, reported = sym.domain, []

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not collector.wants(domain):
            return fn(*args, **kwargs)
        call: dict[str, Any] = {}

        @functools.wraps(fn)
        def original(*a, **kw):
            try:
                call["result"] = fn(*a, **kw)
            except BaseException as e:
                call["error"] = e
                raise
            return call["result"]
        start = time.perf_counter_ns()
        try:
            if is_method:
                return handler(original, args[0], *args[1:], **kwargs)
            return handler(original, None, *args, **kwargs)
        except Exception as e:
            if "error" in call:  # the function's own failure (or one the handler made of it)
                raise call["error"] from None
            _handler_failed(sym, e, reported, collector, start)
            return call["result"] if "result" in call else fn(*args, **kwargs)
    return wrapper


def _handler_failed(sym: Symbol, e: Exception, reported: list, collector: Collector, start: int) -> None:
    if not reported:
        reported.append(True)
        print(f"warning: service profiler: handler {sym.handler} of {sym.symbol} raised {describe(e)}; "
              f"the call went on unprofiled (reported once).", file=sys.stderr, flush=True)
    collector.record(sym.domain, sym.name, start, time.perf_counter_ns(), {"handler.error": describe(e)})


def check_names(symbols: list[Symbol]) -> None:
    """ValueError (one sentence naming the symbol, the attribute and the name) when an attribute
    expression reads a parameter its function does not have: a misspelt name would otherwise
    fail on every call. Symbols that do not resolve are left to `instrument` to report."""
    for sym in symbols:
        try:
            _, _, raw = resolve(sym.symbol)
        except ValueError:
            continue
        fn = raw.__func__ if isinstance(raw, (staticmethod, classmethod)) else raw
        for name, text, expr in sym.attributes if callable(fn) else ():
            missing = unbound_names(expr, fn)
            if missing:
                params = ", ".join(inspect.signature(fn).parameters)
                raise ValueError(f"symbol {sym.symbol}: attribute {name!r} ({text!r}) reads {missing[0]!r}, which is "
                                 f"not a parameter of {fn.__qualname__} (its parameters: {params}).")


def instrument(symbols: list[Symbol], collector: Collector = COLLECTOR,
               allowed: set[str] | None = None) -> tuple[list[Callable], list[str]]:
    """Patch every symbol; returns (functions that undo the patches, problem messages).
    ValueError, with nothing patched, for an expression naming a parameter that is not there."""
    check_names(symbols)
    undo, problems = [], []
    allowed = allowed_handlers() if allowed is None else allowed
    for sym in symbols:
        where = f"symbol {sym.symbol}"
        try:
            owner, attr, raw = resolve(sym.symbol)
        except ValueError as e:
            problems.append(f"{where}: {e}; skipped.")
            continue
        version = package_version(sym.symbol.split(":")[0])
        if not version_allows(sym, version):
            problems.append(f"{where}: version {version} is outside [{sym.min_version or '-'}, "
                            f"{sym.max_version or '-'}]; skipped.")
            continue
        wrap_kind = type(raw) if isinstance(raw, (staticmethod, classmethod)) else None
        fn = raw.__func__ if wrap_kind else raw
        if not callable(fn):
            problems.append(f"{where}: is not a function; skipped.")
            continue
        is_method = isinstance(owner, type) and wrap_kind is not staticmethod
        wrapped = None
        if sym.handler not in allowed:
            problems.append(f"{where}: handler {sym.handler!r} is not allowed (only the shipped handlers and "
                            f"those listed in {HANDLERS_ENV}); using the timer.")
        elif sym.handler != "timer":
            try:
                wrapped = make_custom(fn, load_handler(sym.handler), sym, collector, is_method)
            except Exception as e:
                problems.append(f"{where}: handler {sym.handler!r} cannot be imported ({e}); using the timer.")
        if wrapped is None:
            wrapped = make_timer(fn, sym, collector)
        setattr(owner, attr, wrap_kind(wrapped) if wrap_kind else wrapped)
        undo.append(functools.partial(setattr, owner, attr, raw))
    return undo, problems
