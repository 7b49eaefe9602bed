"""When a trace runs: the capture window a run asks for, and the two ways of keeping it.

  * env window (the seed's): a detached trace against the profiler server, starting
    VLLM_TPU_PROFILE_DELAY_MS after the request and lasting VLLM_TPU_PROFILE_DURATION_MS.
    Used when either variable is set (it wins over --profile-phase) or no phase is asked for.
  * phase window (--profile-phase): opened and closed at the engine's own step boundaries,
    driven by its phase events, so a capture holds whole matching steps and nothing else.
A live server's captures (`live.py`) open and close between engine steps on request.
"""
from __future__ import annotations

import os
import re
import sys
import threading
import time
from typing import Callable

from tpu_engine.events import PhaseEvent

from ..runs.parts import Window
from . import xla_profiler

DELAY_ENV, DURATION_ENV = "VLLM_TPU_PROFILE_DELAY_MS", "VLLM_TPU_PROFILE_DURATION_MS"
DEFAULT_DELAY_MS, DEFAULT_DURATION_MS = 0, 3000
MAX_WINDOW_MS = 3_600_000  # an hour: the profiler client takes an int32 of ms, and the trace is held in memory


def _env_int(environ, name: str, default: int, minimum: int) -> int:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    text = raw.strip()
    if not re.fullmatch(r"[+-]?[0-9]+", text):  # ASCII digits only: isdigit() takes '¹' too
        raise ValueError(f"{name}={raw[:40]!r} is not an integer number of milliseconds.")
    # Python refuses to convert 4300+ digits; such a number is far out of range either way.
    value = int(text) if len(text) <= 4000 else (-1 if text.startswith("-") else 1) * 10 ** 4000
    shown = text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"
    if value < minimum:
        raise ValueError(f"{name}={shown} must be at least {minimum}.")
    if value > MAX_WINDOW_MS:
        raise ValueError(f"{name}={shown} must be at most {MAX_WINDOW_MS} (an hour).")
    return value


def plan_window(args, environ=os.environ, quiet: bool = False) -> Window:
    """The window a capture run's flags and environment ask for; ValueError on bad env values.
    `quiet`: only check (no note about an ignored --profile-phase)."""
    delay = _env_int(environ, DELAY_ENV, DEFAULT_DELAY_MS, 0)
    duration = _env_int(environ, DURATION_ENV, DEFAULT_DURATION_MS, 1)
    env_set = any(environ.get(k, "").strip() for k in (DELAY_ENV, DURATION_ENV))
    if args.profile_phase and not env_set:
        return Window("phase", phase=args.profile_phase, max_steps=args.profile_steps,
                      min_batch=args.profile_min_batch, min_kv_len=args.profile_min_kv_len)
    if args.profile_phase and not quiet:
        print(f"note: {DELAY_ENV}/{DURATION_ENV} are set, so the env window is used and "
              f"--profile-phase {args.profile_phase} is ignored.", file=sys.stderr)
    return Window("env", delay_ms=delay, duration_ms=duration)


class DetachedTrace:
    """The env window: ask the profiler server for a trace starting `delay_ms` from now and
    lasting `duration_ms`, from a background thread; `wait()` for the files to land. Without a
    server (`port` None) the thread traces in process over the same window: the server would
    run the same session in this process, only reached over the network."""

    def __init__(self, port: int | None, logdir: str, delay_ms: int, duration_ms: int, profiler=xla_profiler):
        self.port, self.logdir, self.delay_ms, self.duration_ms = port, logdir, delay_ms, duration_ms
        self.profiler = profiler  # the engine backend's (profilers.py)
        self.error: BaseException | None = None
        self.requested_at: float | None = None
        self._thread = threading.Thread(target=self._run, name="detached-trace", daemon=True)
        self.opened = threading.Event()   # the trace runs (in process), or the request is out

    def _run(self) -> None:
        try:
            if self.port is None:
                self._trace_in_process()
            else:
                self.profiler.request_trace(self.port, self.logdir, self.delay_ms, self.duration_ms)
                self.opened.set()
        except BaseException as e:  # reported by wait()
            self.error = e
            self.opened.set()

    def _trace_in_process(self) -> None:
        time.sleep(max(0.0, self.window_opens_at - time.time()))
        session = self.profiler.Session()
        self.opened.set()
        time.sleep(max(0.0, self.window_opens_at + self.duration_ms / 1000 - time.time()))
        session.export(session.stop(), self.logdir)

    def start(self) -> None:
        self.requested_at = time.time()
        self._thread.start()

    @property
    def window_opens_at(self) -> float:
        return self.requested_at + self.delay_ms / 1000

    def wait(self, slack_s: float = 60.0, stop: Callable[[], bool] = lambda: False) -> bool:
        """Block until the trace thread ends (the capture is on disk) or the window plus
        `slack_s` has passed; True if it ended.

        While waiting, the main thread marks itself with an `idle: waiting for capture` scope
        every 50 ms: the profiler client retries a window in which nothing happened instead of
        returning, so an idle tail (or a window that opened after the passes) needs one event.
        `stop()` ends the wait early (a second Ctrl-C: the capture is to be discarded)."""
        deadline = self.window_opens_at + self.duration_ms / 1000 + slack_s
        while self._thread.is_alive() and time.time() < deadline and not stop():
            with self.profiler.marker("idle: waiting for capture"):
                self._thread.join(0.05)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


class PhaseWindow:
    """An exact capture window driven by the engine's phase events.

    Subscribe `on_event` to `engine.events`. The trace starts at the `begin` event of the first
    step that matches and stops at the `end` event of the last one: it closes early if a
    non-matching step is about to run, and after `window.max_steps` steps. Exporting the
    capture is deferred to `export()`, after the timed pass.
    """

    def __init__(self, window: Window, profiler=xla_profiler):
        self.window = window
        self.profiler = profiler  # the engine backend's (profilers.py)
        self.steps: list[int] = []
        self.state = "waiting"        # -> "open" -> "closed"
        self._session: xla_profiler.Session | None = None
        self._xspace: bytes | None = None
        self.opened_at = self.closed_at = None

    def on_event(self, e: PhaseEvent) -> None:
        if e.kind == "begin":
            if self.state == "waiting" and self.window.matches(e.record):
                self._session = self.profiler.Session()
                self.opened_at = time.time()
                self.state = "open"
            elif self.state == "open" and not self.window.matches(e.record):
                self.close()
        elif self.state == "open":
            self.steps.append(e.record.step)
            if self.window.max_steps is not None and len(self.steps) >= self.window.max_steps:
                self.close()

    def close(self) -> None:
        """Stop tracing now (idempotent); the trace stays in memory until `export`."""
        if self.state == "open":
            self._xspace = self._session.stop()
            self.closed_at = time.time()
            self.state = "closed"

    def export(self, logdir: str) -> bool:
        """Write the capture under `logdir/plugins/profile/`; False if the window never opened."""
        self.close()
        if self._xspace is None:
            return False
        try:
            self._session.export(self._xspace, logdir)
        except (RuntimeError, OSError) as e:  # torch_xla's C++ writer, JAX's file write (a full disk)
            reason = e.strerror if isinstance(e, OSError) and e.strerror else \
                str(e).strip().splitlines()[0].rsplit("; ", 1)[-1] if str(e).strip() else type(e).__name__
            raise ValueError(f"cannot write the capture into {logdir} ({reason.rstrip('.')}); "
                             f"nothing of it was kept.") from None
        self._xspace = None
        return True
