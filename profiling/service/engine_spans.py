"""The service profiler's batch and KV-cache spans, from the engine's public events: each step's
begin and end (`engine.events`) becomes a `Schedule/batch` span and each slot taken or freed
(`engine.slot_events`) a `KVCache/allocate` or `KVCache/free` mark, recorded while collection is
on. Nothing is patched, so renaming an engine internal cannot break them. The listeners run in
the engine's thread, inside its step: an error of theirs is reported once, never raised."""
from __future__ import annotations

import sys
import time
from typing import Callable

from tpu_engine.events import PhaseEvent, SlotEvent

from .collector import COLLECTOR, Collector, describe

SCHEDULE, KVCACHE = "Schedule", "KVCache"


class EngineSpans:
    def __init__(self, collector: Collector = COLLECTOR):
        self.collector = collector
        self._began = 0
        self._failed = False

    def _guarded(self, listen: Callable, event) -> None:
        try:
            listen(event)
        except Exception as e:
            if not self._failed:
                self._failed = True
                print(f"warning: service profiler: engine spans failed ({describe(e)}); the step goes on "
                      f"(reported once).", file=sys.stderr, flush=True)

    def on_phase(self, e: PhaseEvent) -> None:
        self._guarded(self._phase, e)

    def on_slot(self, e: SlotEvent) -> None:
        self._guarded(self._slot, e)

    def _phase(self, e: PhaseEvent) -> None:
        if e.kind == "begin":
            self._began = time.perf_counter_ns()
            return
        if not self.collector.wants(SCHEDULE):
            return
        # the whole step record (its to_json form): step number, shape, requests, compiles
        self.collector.record(SCHEDULE, "batch", self._began or time.perf_counter_ns(), time.perf_counter_ns(),
                              e.record.to_json())

    def _slot(self, e: SlotEvent) -> None:
        if not self.collector.wants(KVCACHE):
            return
        now = time.perf_counter_ns()
        attrs = {"request_id": e.request_id, "slot": e.slot, "tokens": e.tokens, "slots_used": e.slots_used}
        if e.kind == "free":
            attrs.update(output_tokens=e.output_tokens, finish_reason=e.finish_reason)
        self.collector.record(KVCACHE, e.kind, now, now, attrs)

    def attach(self, engine) -> Callable[[], None]:
        """Listen to `engine` (an LLMEngine); returns the function that stops listening."""
        off = [engine.events.subscribe(self.on_phase), engine.slot_events.subscribe(self.on_slot)]

        def detach() -> None:
            for unsubscribe in off:
                unsubscribe()
        return detach
