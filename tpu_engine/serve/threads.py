"""The server's background threads by name, for `/health`: the engine thread, and those a
plugin starts (the service profiler's writer and config watcher). A thread that died shows
as "stopped", so a thread that fails quietly is still seen."""
from __future__ import annotations

import threading
from typing import Callable

_WATCHED: dict[str, Callable[[], threading.Thread | None]] = {}


def watch(name: str, thread: Callable[[], threading.Thread | None]) -> None:
    """Report `thread()` (None: not started yet) under `name` from now on."""
    _WATCHED[name] = thread


def unwatch(name: str) -> None:
    _WATCHED.pop(name, None)


def states() -> dict[str, str]:
    """name -> "alive", "stopped" or "not started"."""
    out = {}
    for name, get in sorted(_WATCHED.items()):
        t = get()
        out[name] = "not started" if t is None or t.ident is None else "alive" if t.is_alive() else "stopped"
    return out
