"""Which custom handlers a symbols file may use. A handler is code the server runs on every
instrumented call, and the symbols file may come from anyone who can write it: only the shipped
handlers and those the person starting the server lists in PROFILING_HANDLERS
(comma-separated `pkg.module:function`) are imported."""
from __future__ import annotations

import importlib
import os
from typing import Callable

HANDLERS_ENV = "PROFILING_HANDLERS"
SHIPPED_HANDLERS = ("timer",)


def allowed_handlers(environ=os.environ) -> set[str]:
    """The handlers a symbols file may name: the shipped ones and PROFILING_HANDLERS."""
    listed = {h.strip() for h in environ.get(HANDLERS_ENV, "").split(",") if h.strip()}
    return set(SHIPPED_HANDLERS) | listed


def load_handler(spec: str) -> Callable:
    module_name, _, attr = spec.replace(":", ".").rpartition(".")
    fn = getattr(importlib.import_module(module_name), attr)
    if not callable(fn):
        raise TypeError(f"{spec} is not callable")
    return fn
