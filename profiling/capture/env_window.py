"""The seed's env window: a detached trace starting `delay_ms` after the request and lasting
`duration_ms`, over all the profiled passes at once. It is asked of XLA's profiler server when
one runs (`--profiler-host 0.0.0.0`); without one (`port` None, the default: XLA's server
listens on every interface) a thread traces in process over the same window, the session the
server would run in this process. Its timing is not the engine's: the capture may open late,
or miss steps, and `export` says so."""
from __future__ import annotations

import threading
import time
from types import ModuleType
from typing import Callable

from ..runs.layout import runs_in
from ..runs.parts import Window
from ..runs.record import CaptureTiming
from .windows import DELAY_ENV, Captured, CaptureWindow


class EnvWindow(CaptureWindow):
    def __init__(self, spec: Window, profiler: ModuleType, port: int | None, label: str = "the env window's capture"):
        self.spec, self.profiler, self.port, self.label = spec, profiler, port, label
        self.logdir = ""
        self.error: BaseException | None = None
        self.requested_at = self.passes_start = self.passes_end = None
        self.interrupted = False
        self._thread = threading.Thread(target=self._run, name="detached-trace", daemon=True)
        self._opened = threading.Event()   # the in-process trace runs (or failed)

    def _run(self) -> None:
        try:
            if self.port is None:
                self._trace_in_process()
            else:
                self.profiler.request_trace(self.port, self.logdir, self.spec.delay_ms, self.spec.duration_ms)
        except BaseException as e:  # reported by export()
            self.error = e
        finally:
            self._opened.set()

    def _trace_in_process(self) -> None:
        time.sleep(max(0.0, self.opens_at - time.time()))
        session = self.profiler.Session()
        self._opened.set()
        time.sleep(max(0.0, self.opens_at + self.spec.duration_ms / 1000 - time.time()))
        session.export(session.stop(), self.logdir)

    def begin(self, logdir: str) -> None:
        self.logdir, self.requested_at = logdir, time.time()
        self._thread.start()
        if self.spec.delay_ms == 0 and self.port is not None:
            time.sleep(1.0)  # the server needs a moment to begin tracing
        elif self.spec.delay_ms == 0:
            self._opened.wait(30)
        self.passes_start = time.time()

    def end(self, interrupted: bool = False) -> None:
        self.interrupted = self.interrupted or interrupted
        if self.passes_end is None:
            self.passes_end = time.time()

    @property
    def opens_at(self) -> float:
        return self.requested_at + self.spec.delay_ms / 1000

    @property
    def busy(self) -> bool:
        return self._thread.is_alive()

    def _wait(self, slack_s: float, abandon: Callable[[], bool]) -> bool:
        """Block until the trace thread ends (the capture is on disk) or the window plus
        `slack_s` has passed; True if it ended.

        While waiting, the main thread marks itself with an `idle: waiting for capture` scope
        every 50 ms: the profiler client retries a window in which nothing happened instead of
        returning, so an idle tail (or a window that opened after the passes) needs one event.
        `abandon()` ends the wait early (a second Ctrl-C: the capture is to be discarded)."""
        deadline = self.opens_at + self.spec.duration_ms / 1000 + slack_s
        while self._thread.is_alive() and time.time() < deadline and not abandon():
            with self.profiler.marker("idle: waiting for capture"):
                self._thread.join(0.05)
        return not self._thread.is_alive()

    def export(self, abandon: Callable[[], bool] = lambda: False, slack_s: float = 60.0) -> Captured:
        self.end()
        closes = self.opens_at + self.spec.duration_ms / 1000
        timing = CaptureTiming(opened_at=self.opens_at, closed_at=closes, requested_at=self.requested_at,
                               passes_wall=(self.passes_start, self.passes_end))
        late = None
        if self.opens_at > self.passes_end:
            late = (f"profiling is late: the profiled passes ended {self.opens_at - self.passes_end:.2f}s before "
                    f"the capture window opened ({DELAY_ENV}={self.spec.delay_ms}); lower the delay or raise "
                    f"--num-iters.")
        if closes - time.time() > 0.5:
            print(f"Waiting {closes - time.time():.1f}s for the capture window to close...")
        arrived = self._wait(slack_s, abandon)
        runs = runs_in(self.logdir)
        if not arrived or not runs:
            why = f" ({self.error})" if self.error else ""
            source = f"the profiler server on port {self.port}" if self.port else "the in-process trace"
            missing = f"no capture arrived from {source}{why}."
            return Captured(None, timing, problem=f"{late} {missing}" if late else missing)
        return Captured(runs[-1], timing, problem=late, interrupted=self.interrupted)
