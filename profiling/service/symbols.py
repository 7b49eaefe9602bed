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
import importlib
import importlib.metadata
import os
import re
import sys
from typing import Callable

from .expr import ExpressionError, compile_expr

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
