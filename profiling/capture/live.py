"""XLA traces of a live server, started and stopped on request (`POST /start_profile`,
`POST /stop_profile`), into the directory named by VLLM_TORCH_PROFILER_DIR.

The trace opens and closes between two engine steps (the calls run in the engine's thread),
so a capture holds whole steps. Each capture is published exactly as offline ones are
(`publish.py`): `<dir>/plugins/profile/<time>_serve-<phases>/` with `<host>.xplane.pb`,
`manifest.jsonl` (one line per captured step) and `run_info.json` (with the compiles during
the window and the device's peaks).
"""
from __future__ import annotations

import dataclasses
import sys
import threading
import time

from tpu_engine.compile import CompileStats

from ..runs.parts import Window
from ..runs.record import CaptureTiming, Compiles
from . import peaks, store
from .profilers import profiler_of
from .publish import Published, publish, settle_stale_staging
from .record import StepLog, record_of

DIR_ENV = "VLLM_TORCH_PROFILER_DIR"


class ProfileStateError(ValueError):
    """Start while a capture runs, or stop while none does."""


@dataclasses.dataclass
class _Open:
    session: object        # the backend profiler's Session
    steps: StepLog
    unsubscribe: object
    opened_at: float
    compiles_before: CompileStats


@dataclasses.dataclass
class Stopped:
    """A closed trace, still in memory, with what its run record needs."""
    session: object
    xspace: bytes
    steps: StepLog
    opened_at: float
    closed_at: float
    compiles: CompileStats


class LiveCapture:
    def __init__(self, root: str, engine):
        self.root = store.check_writable_dir(root)
        self.engine = engine          # the LLMEngine (phase events, describe, compile counters)
        self._lock = threading.Lock()
        self._open: _Open | None = None
        for line in settle_stale_staging(self.root):  # left by a killed server or capture run
            print(f"note: {line}", file=sys.stderr)

    @property
    def running(self) -> bool:
        return self._open is not None

    def start(self) -> dict:
        """Open the trace now; call between engine steps."""
        with self._lock:
            if self._open is not None:
                raise ProfileStateError("a profile capture is already running; POST /stop_profile first.")
            steps = StepLog()
            unsubscribe = self.engine.events.subscribe(steps.on_event)
            self._open = _Open(profiler_of(self.engine).Session(), steps, unsubscribe, time.time(),
                               self.engine.compile_stats())
            return {"status": "profiling", "profile_dir": self.root, "started": self._open.opened_at}

    def stop(self) -> Stopped:
        """Close the trace now (call between engine steps); `finish` publishes it."""
        with self._lock:
            if self._open is None:
                raise ProfileStateError("no profile capture is running; POST /start_profile first.")
            o, self._open = self._open, None
            xspace = o.session.stop()
            o.unsubscribe()
            return Stopped(o.session, xspace, o.steps, o.opened_at, time.time(),
                           self.engine.compile_stats() - o.compiles_before)

    def finish(self, stopped: Stopped) -> Published:
        """Export, verify and publish a stopped capture (slow: run it off the engine thread)."""
        staging = store.Staging(self.root)
        try:
            stopped.session.export(stopped.xspace, staging.path)
            runs = staging.runs()
            if not runs:
                raise ValueError("the profiler exported no capture.")
            info = self.engine.describe()
            record = record_of(
                self.engine, peaks=peaks.machine_peaks(info.device, measure=False), window=Window("server"),
                compiles=Compiles(self.engine.warmup_stats, stopped.compiles),
                capture=CaptureTiming(opened_at=stopped.opened_at, closed_at=stopped.closed_at))
            return publish(staging, runs[-1], stopped.steps, record, prefix="serve-", window_end=stopped.closed_at)
        finally:
            staging.discard()
