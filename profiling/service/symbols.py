"""The symbol YAML: which functions to instrument, without editing them.

    - symbol: tpu_engine.engine:LLMEngine.add_request   # module:attribute.chain
      name: arrive                                      # event name (default: the attribute chain)
      domain: Request                                   # default: "Default"
      handler: timer                                    # or pkg.module:function
      min_version: "0.1.0"                              # of the package that owns the module
      max_version: "0.9"
      attributes:
        - name: request_id
          expr: request_id                              # see expr.py

`timer` records one span per call with the attributes, computed after the call returns; an
attribute whose expression fails records `<name>.error` instead and never affects the call.
A custom handler is called as `handler(original_func, this, *args, **kwargs)` (`this` is the
instance for methods, else None) and records what it likes with `collector.record`; if the
handler raises, the error is recorded and the call proceeds unprofiled (see make_custom).
Handlers are code the server runs, so only the shipped ones (`timer`) and those named in
PROFILING_HANDLERS (comma-separated `pkg.module:function`, set by whoever starts the server)
are used; any other is not even imported, and the timer stands in.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.metadata
import inspect
import os
import re
import sys
import time
from typing import Any, Callable

from .collector import COLLECTOR, Collector, describe
from .expr import Context, ExpressionError, compile_expr, unbound_names
from .handlers import HANDLERS_ENV, allowed_handlers, load_handler

SYMBOLS_ENV = "PROFILING_SYMBOLS_PATH"
DEFAULT_SYMBOLS = os.path.join(os.path.dirname(__file__), "default_symbols.yaml")
_KEYS = {"symbol", "name", "domain", "handler", "min_version", "max_version", "attributes"}


@dataclasses.dataclass
class Symbol:
    symbol: str
    name: str
    domain: str
    handler: str = "timer"
    min_version: str | None = None
    max_version: str | None = None
    attributes: list[tuple[str, str, Callable]] = dataclasses.field(default_factory=list)


def load_symbols(path: str) -> tuple[list[Symbol], list[str]]:
    """The usable entries of the YAML file, and one message per problem found (entries or
    attributes that are skipped). A file that cannot be read at all gives no entries."""
    import yaml
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as e:
        return [], [f"symbols file {path!r} cannot be read ({e.strerror}); nothing is instrumented."]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        return [], [f"symbols file {path!r} is not valid YAML{where} "
                    f"({getattr(e, 'problem', None) or e}); nothing is instrumented."]
    if data is None:
        data = []
    if not isinstance(data, list):
        return [], [f"symbols file {path!r} must hold a list of entries; nothing is instrumented."]
    symbols, problems = [], []
    for i, entry in enumerate(data, start=1):
        where = f"symbols file {os.path.basename(path)}, entry {i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("symbol"), str):
            problems.append(f"{where}: needs a 'symbol: module:Attribute' string; skipped.")
            continue
        where += f" ({entry['symbol']})"
        unknown = set(entry) - _KEYS
        if unknown:
            problems.append(f"{where}: unknown field(s) {', '.join(sorted(unknown))} ignored.")
        if not re.fullmatch(r"[\w.]+:[\w.]+", entry["symbol"]):
            problems.append(f"{where}: symbol must look like 'package.module:Class.method'; skipped.")
            continue
        sym = Symbol(entry["symbol"], str(entry.get("name") or entry["symbol"].split(":")[1]),
                     str(entry.get("domain") or "Default"), str(entry.get("handler") or "timer"),
                     _text(entry.get("min_version")), _text(entry.get("max_version")))
        attrs = entry.get("attributes") or []
        if not isinstance(attrs, list):
            problems.append(f"{where}: attributes must be a list of {{name, expr}}; attributes ignored.")
            attrs = []
        for a in attrs:
            if not isinstance(a, dict) or not isinstance(a.get("name"), str) or "expr" not in a:
                problems.append(f"{where}: attribute {a!r} needs 'name' and 'expr'; skipped.")
                continue
            try:
                sym.attributes.append((a["name"], str(a["expr"]), compile_expr(str(a["expr"]))))
            except ExpressionError as e:
                problems.append(f"{where}: attribute {a['name']!r}: expression {a['expr']!r} is not valid "
                                f"({e}); skipped.")
        symbols.append(sym)
    return symbols, problems


def _text(v) -> str | None:
    return None if v is None else str(v)


# ---- versions ------------------------------------------------------------------------------
def _numbers(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version)[:4])


def package_version(module_name: str) -> str | None:
    top = module_name.split(".")[0]
    for dist in importlib.metadata.packages_distributions().get(top, []):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return getattr(sys.modules.get(top), "__version__", None)


def version_allows(sym: Symbol, version: str | None) -> bool:
    if version is None or (sym.min_version is None and sym.max_version is None):
        return True
    v = _numbers(version)
    if sym.min_version is not None and v < _numbers(sym.min_version):
        return False
    return sym.max_version is None or v <= _numbers(sym.max_version)


# ---- patching ------------------------------------------------------------------------------
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
