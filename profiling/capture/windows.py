"""When a trace runs: the capture window a run asks for, and the one protocol every kind of
window keeps (`CaptureWindow`: begin, observe the engine's step events, end, export what it
captured).

  * env window (the seed's, env_window.py): a detached trace against the profiler server,
    starting VLLM_TPU_PROFILE_DELAY_MS after the request and lasting
    VLLM_TPU_PROFILE_DURATION_MS. Used when either variable is set (it wins over
    --profile-phase) or no phase is asked for; one capture over all the profiled passes.
  * phase window (--profile-phase, phase_window.py): opened and closed at the engine's own
    step boundaries, so a capture holds whole matching steps and nothing else; one per pass.
  * server window (live.py): a live server's capture, from /start_profile to /stop_profile.
"""
from __future__ import annotations

import abc
import dataclasses
import os
import re
import sys
from types import ModuleType
from typing import Callable

from tpu_engine.events import PhaseEvent

from ..runs.parts import Window
from ..runs.record import CaptureTiming

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


@dataclasses.dataclass
class Captured:
    """What a window captured, exported into a staging dir: what `publish` takes."""
    run_dir: str | None                        # the exported run; None: nothing was captured
    timing: CaptureTiming
    expected_steps: list[int] | None = None    # the steps the window ran, where it knows them
    problem: str | None = None                 # why nothing was captured, or what went wrong
    interrupted: bool = False                  # Ctrl-C cut the window short


class CaptureWindow(abc.ABC):
    """One capture's window. The caller subscribes `on_event` to the engine's phase events,
    calls `begin(logdir)` before the steps the capture may hold run and `end()` once they are
    over, then `export()` outside any timing."""
    spec: Window
    label: str = "the capture"                 # for messages: "pass 2's capture", ...
    logdir: str = ""

    def begin(self, logdir: str) -> None:
        """The steps the window may hold are about to run; the capture goes under `logdir`."""
        self.logdir = logdir

    def on_event(self, e: PhaseEvent) -> None:
        """An engine phase event (a step's begin or end)."""

    @abc.abstractmethod
    def end(self, interrupted: bool = False) -> None:
        """The steps are over (or Ctrl-C cut them short): stop tracing (idempotent); the
        capture stays in memory until `export`."""

    @abc.abstractmethod
    def export(self, abandon: Callable[[], bool] = lambda: False) -> Captured:
        """Write the capture under `<logdir>/plugins/profile/`; `abandon()` ends a wait early."""

    @property
    def busy(self) -> bool:
        """A profiler thread still runs (the process must not wait for it at exit)."""
        return False


def make_window(spec: Window, profiler: ModuleType, port: int | None, pass_index: int = 0) -> CaptureWindow:
    """The window an offline run's spec asks for: a phase window (one per pass) or the env
    window (one over all the passes; traced in process when `port` is None, no profiler server)."""
    from .env_window import EnvWindow
    from .phase_window import PhaseWindow
    return PhaseWindow(spec, profiler, pass_index) if spec.per_pass else EnvWindow(spec, profiler, port)
