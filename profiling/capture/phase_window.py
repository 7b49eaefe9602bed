"""The exact capture window (--profile-phase), driven by the engine's phase events: the trace
starts at the `begin` event of the first step that matches and stops at the `end` event of the
last one; it closes early if a non-matching step is about to run, and after `max_steps` steps.
The capture is exported after the timed pass, so that writing it is not timed."""
from __future__ import annotations

import time
from types import ModuleType
from typing import Callable

from tpu_engine.events import PhaseEvent

from ..runs.layout import runs_in
from ..runs.parts import Window
from ..runs.record import CaptureTiming
from .windows import Captured, CaptureWindow


def export_session(session, xspace: bytes, logdir: str) -> None:
    """Write an in-memory capture under `logdir/plugins/profile/`; a failure of the profiler's
    C++ writer (a full disk) is one sentence, not a pybind dump."""
    try:
        session.export(xspace, logdir)
    except (RuntimeError, OSError) as e:
        text = str(e).strip()
        reason = text.splitlines()[0].rsplit("; ", 1)[-1] if text else type(e).__name__
        reason = getattr(e, "strerror", None) or reason
        raise ValueError(f"cannot write the capture into {logdir} ({reason.rstrip('.')}); "
                         f"nothing of it was kept.") from None


class PhaseWindow(CaptureWindow):
    def __init__(self, spec: Window, profiler: ModuleType, pass_index: int = 0):
        self.spec, self.profiler, self.pass_index = spec, profiler, pass_index
        self.label = f"pass {pass_index + 1}'s capture"
        self.steps: list[int] = []
        self.state = "waiting"        # -> "open" -> "closed"
        self.interrupted = False
        self._session = None          # the backend profiler's Session while open
        self._xspace: bytes | None = None
        self.opened_at = self.closed_at = None

    def on_event(self, e: PhaseEvent) -> None:
        if e.kind == "begin":
            if self.state == "waiting" and self.spec.matches(e.record):
                self._session = self.profiler.Session()
                self.opened_at = time.time()
                self.state = "open"
            elif self.state == "open" and not self.spec.matches(e.record):
                self.end()
        elif self.state == "open":
            self.steps.append(e.record.step)
            if self.spec.max_steps is not None and len(self.steps) >= self.spec.max_steps:
                self.end()

    def end(self, interrupted: bool = False) -> None:
        self.interrupted = self.interrupted or interrupted
        if self.state == "open":
            self._xspace = self._session.stop()
            self.closed_at = time.time()
            self.state = "closed"

    def export(self, abandon: Callable[[], bool] = lambda: False) -> Captured:
        self.end()
        timing = CaptureTiming(opened_at=self.opened_at, closed_at=self.closed_at, pass_index=self.pass_index,
                               window_steps=list(self.steps))
        if self._xspace is None:
            when = "was interrupted before any" if self.interrupted else "had no"
            return Captured(None, timing, problem=f"pass {self.pass_index + 1} {when} step matching the capture "
                                                  f"window ({self.spec.describe()}); nothing was captured from it.")
        before = set(runs_in(self.logdir))
        export_session(self._session, self._xspace, self.logdir)
        self._xspace = None
        new = [r for r in runs_in(self.logdir) if r not in before]
        return Captured(new[-1], timing, list(self.steps), interrupted=self.interrupted)
