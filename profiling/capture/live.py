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
import os
import re
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
from .publish import CaptureWriteError, Published, publish, settle_stale_staging
from .record import StepLog, record_of
from .windows import Captured, CaptureWindow

DIR_ENV = "VLLM_TORCH_PROFILER_DIR"
MAX_STEPS_ENV, MAX_SECONDS_ENV = "VLLM_PROFILER_MAX_ITERS", "PROFILING_MAX_CAPTURE_S"
DEFAULT_MAX_STEPS, DEFAULT_MAX_SECONDS = 2000, 120


@dataclasses.dataclass(frozen=True)
class CaptureLimits:
    """How long an open capture may run: a trace grows in memory with every step (about 2 MB a
    second of traffic on CPU) until it is stopped, so one left open must stop by itself."""
    max_steps: int = DEFAULT_MAX_STEPS
    max_seconds: int = DEFAULT_MAX_SECONDS

    @classmethod
    def from_env(cls, environ=os.environ) -> "CaptureLimits":
        """ValueError (one sentence naming the variable) unless each is a whole number >= 1."""
        return cls(_count(environ, MAX_STEPS_ENV, DEFAULT_MAX_STEPS), _count(environ, MAX_SECONDS_ENV,
                                                                          DEFAULT_MAX_SECONDS))

    def reached(self, steps: int, seconds: float) -> str | None:
        if steps >= self.max_steps:
            return f"{self.max_steps} engine steps ({MAX_STEPS_ENV}={self.max_steps})"
        if seconds >= self.max_seconds:
            return f"{self.max_seconds} s ({MAX_SECONDS_ENV}={self.max_seconds})"
        return None


def _count(environ, name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    if not re.fullmatch(r"[0-9]{1,9}", raw) or int(raw) < 1:  # ASCII digits: isdigit() takes '²'
        raise ValueError(f"{name}={raw[:40]!r} must be a whole number from 1 to 999999999 (a capture "
                         f"is always bounded).")
    return int(raw)


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
    compiles_before: CompileStats
    unsubscribe: Callable[[], None] = lambda: None


@dataclasses.dataclass
class Stopped:
    """A closed trace, still in memory, with what its run record needs."""
    window: ServerWindow
    steps: StepLog
    compiles: CompileStats
    stopped_by: str | None = None   # the limit that stopped it, if no /stop_profile did


class LiveCapture:
    def __init__(self, root: str, engine, limits: CaptureLimits = CaptureLimits(),
                 on_limit: Callable[[Stopped], None] | None = None):
        self.root = store.check_writable_dir(root)
        self.engine = engine          # the LLMEngine (phase events, describe, compile counters)
        self.limits = limits
        self.on_limit = on_limit      # gets a capture a limit stopped (on the engine thread: hand it off)
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
            o = _Open(window, StepLog(), self.engine.compile_stats())
            o.unsubscribe = self.engine.events.subscribe(lambda e: self._on_step(o, e))
            self._open = o
            return {"status": "profiling", "started": window.opened_at,
                    "limits": {"max_steps": self.limits.max_steps, "max_seconds": self.limits.max_seconds}}

    def _on_step(self, o: _Open, e) -> None:
        o.steps.on_event(e)
        if e.kind == "end":
            self.stop_at_limit(o)

    def stop_at_limit(self, o: _Open | None = None) -> Stopped | None:
        """Stop the open capture (`o`, if given) once it reached a limit; the stopped capture goes
        to `on_limit`. Call between engine steps (a step's end event is)."""
        with self._lock:
            current = self._open
            if current is None or (o is not None and current is not o):
                return None
            why = self.limits.reached(len(current.steps.steps), time.time() - current.window.opened_at)
            if why is None:
                return None
            stopped = self._stop_locked(why)
        print(f"note: the profile capture reached its limit of {why} and was stopped; it is being saved.",
              file=sys.stderr, flush=True)
        if self.on_limit:
            self.on_limit(stopped)
        return stopped

    def stop(self) -> Stopped:
        """Close the trace now (call between engine steps); `finish` publishes it."""
        with self._lock:
            if self._open is None:
                raise ProfileStateError("no profile capture is running; POST /start_profile first.")
            return self._stop_locked(None)

    def _stop_locked(self, why: str | None) -> Stopped:
        o, self._open = self._open, None
        o.unsubscribe()
        o.window.end()
        return Stopped(o.window, o.steps, self.engine.compile_stats() - o.compiles_before, why)

    def finish(self, stopped: Stopped) -> Published:
        """Export, verify and publish a stopped capture (slow: run it off the engine thread).
        CaptureWriteError when it cannot be written, ValueError when it does not verify."""
        try:
            staging = store.Staging(self.root)
        except OSError as e:
            raise CaptureWriteError(f"it could not be written into {self.root} ({e.strerror})") from None
        try:
            stopped.window.logdir = staging.path
            try:
                captured = stopped.window.export()
            except ValueError as e:  # export_session: the profiler's writer failed (a full disk)
                raise CaptureWriteError(str(e).replace(staging.path, self.root)) from None
            if captured.run_dir is None:
                raise ValueError(captured.problem)
            info = self.engine.describe()
            record = record_of(
                self.engine, peaks=peaks.machine_peaks(info.device, measure=False), window=stopped.window.spec,
                compiles=Compiles(self.engine.warmup_stats, stopped.compiles), capture=captured.timing)
            return publish(staging, captured, stopped.steps, record)
        finally:
            staging.discard()
