"""Broken service-profiler handlers (symbols.py's custom-handler interface), for the reliability
tests: what a user's buggy handler does to an engine method. The server imports them by name."""
from __future__ import annotations

POISON_SEED = 7_777_777_777   # with POISON_PROMPT: the one request `poison_row` breaks
POISON_PROMPT = [3, 1, 4, 1, 5]


def raise_before(original_func, this, *args, **kwargs):
    """Fails before it runs the call."""
    raise RuntimeError("handler failed before the call")


def raise_after(original_func, this, *args, **kwargs):
    """Runs the call, then fails (the call must not run twice)."""
    original_func(this, *args, **kwargs)
    raise RuntimeError("handler failed after the call")


def poison_row(original_func, this, req):
    """Returns garbage instead of the sampling row of one marked request, so the engine step
    that runs it raises: the fault the engine thread must survive."""
    row = original_func(this, req)
    if req.params.seed == POISON_SEED and list(req.prompt) == POISON_PROMPT:
        return None
    return row
