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
from types import ModuleType
from typing import Callable

from tpu_engine.compile import CompileStats

from ..runs.layout import runs_in
from ..runs.parts import Window
from ..runs.record import CaptureTiming, Compiles
from . import peaks, store
from .phase_window import export_session
from .profilers import profiler_of
from .publish import Published, publish, settle_stale_staging
from .record import StepLog, record_of
from .windows import Captured, CaptureWindow

DIR_ENV = "VLLM_TORCH_PROFILER_DIR"


class ProfileStateError(ValueError):
    """Start while a capture runs, or stop while none does."""


class ServerWindow(CaptureWindow):
    """From /start_profile to /stop_profile: the trace opens at `begin` and closes at `end`,
    both called between engine steps, so the capture holds whole steps."""
    label = "the server's capture"

    def __init__(self, profiler: ModuleType):
        self.spec, self.profiler = Window("server"), profiler
        self._session, self._xspace = None, None
        self.opened_at = self.closed_at = None

    def begin(self, logdir: str) -> None:
        self.logdir = logdir
        self._session, self.opened_at = self.profiler.Session(), time.time()

    def end(self, interrupted: bool = False) -> None:
        if self._session is not None and self._xspace is None:
            self._xspace, self.closed_at = self._session.stop(), time.time()

    def export(self, abandon: Callable[[], bool] = lambda: False) -> Captured:
        self.end()
        timing = CaptureTiming(opened_at=self.opened_at, closed_at=self.closed_at)
        export_session(self._session, self._xspace, self.logdir)
        runs = runs_in(self.logdir)
        return Captured(runs[-1] if runs else None, timing, problem=None if runs else "the profiler exported no capture.")


@dataclasses.dataclass
class _Open:
    window: ServerWindow
    steps: StepLog
    unsubscribe: Callable[[], None]
    compiles_before: CompileStats


@dataclasses.dataclass
class Stopped:
    """A closed trace, still in memory, with what its run record needs."""
    window: ServerWindow
    steps: StepLog
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
        """Open the trace now; call between engine steps. The profiler session exists before
        anything subscribes, so a start that fails leaves nothing behind."""
        with self._lock:
            if self._open is not None:
                raise ProfileStateError("a profile capture is already running; POST /stop_profile first.")
            window = ServerWindow(profiler_of(self.engine))
            window.begin("")
            steps = StepLog()
            self._open = _Open(window, steps, self.engine.events.subscribe(steps.on_event), self.engine.compile_stats())
            return {"status": "profiling", "profile_dir": self.root, "started": window.opened_at}

    def stop(self) -> Stopped:
        """Close the trace now (call between engine steps); `finish` publishes it."""
        with self._lock:
            if self._open is None:
                raise ProfileStateError("no profile capture is running; POST /start_profile first.")
            o, self._open = self._open, None
            o.window.end()
            o.unsubscribe()
            return Stopped(o.window, o.steps, self.engine.compile_stats() - o.compiles_before)

    def finish(self, stopped: Stopped) -> Published:
        """Export, verify and publish a stopped capture (slow: run it off the engine thread)."""
        staging = store.Staging(self.root)
        try:
            stopped.window.logdir = staging.path
            captured = stopped.window.export()
            if captured.run_dir is None:
                raise ValueError(captured.problem)
            info = self.engine.describe()
            record = record_of(
                self.engine, peaks=peaks.machine_peaks(info.device, measure=False), window=stopped.window.spec,
                compiles=Compiles(self.engine.warmup_stats, stopped.compiles), capture=captured.timing)
            return publish(staging, captured, stopped.steps, record)
        finally:
            staging.discard()
