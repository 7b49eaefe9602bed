"""Phase-boundary events: the engine announces each prefill and decode step; others listen.

The engine only publishes. Code that wants to act on phases (a profiler starting a trace at
the first decode step, a manifest writer, a metrics exporter) subscribes a callback.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PhaseEvent:
    kind: str            # "begin" or "end"
    phase: str           # "prefill" or "decode"
    step: int            # engine step number, counting from 0 after warm-up
    bucket: int          # prefill: padded length; decode: padded batch (slots)
    batch_size: int      # real sequences in the step
    num_tokens: int      # real tokens processed
    padded_tokens: int   # tokens the compiled shape processes
    kv_len_min: int      # shortest / longest context attended, in tokens
    kv_len_max: int
    kv_bucket: int       # decode: attention span compiled; prefill: same as bucket
    request_ids: tuple[str, ...]
    wall_start: float    # time.time() at the step's start
    wall_end: float | None = None       # set on "end"
    compiles: int | None = None         # XLA compilations seen during the step, on "end"
    compile_time_s: float | None = None


Listener = Callable[[PhaseEvent], None]


class PhaseEvents:
    def __init__(self):
        self._listeners: list[Listener] = []

    def subscribe(self, fn: Listener) -> Callable[[], None]:
        """Call `fn` for every event; returns a function that unsubscribes it."""
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn) if fn in self._listeners else None

    def publish(self, event: PhaseEvent) -> None:
        """Listeners run synchronously in the engine's thread; an exception in one propagates
        out of `step()` (a profiler that fails should not fail silently)."""
        for fn in list(self._listeners):
            fn(event)

    def __bool__(self) -> bool:
        return bool(self._listeners)
