"""The one way a capture reaches the profile dir, for offline runs and live servers alike:
name its file after this host, verify it, name the run after the time and the phases it holds,
write its manifest and run record beside it, and move it into `plugins/profile/` with one
rename. An offline run's notes also say, per phase, how much of the profiled passes it holds."""
from __future__ import annotations

import dataclasses
import math
import time

from .record import CaptureTiming, RunRecord, StepLog, write_manifest, write_run_record
from .store import Staging, name_capture
from .verify import PhaseCoverage, Verification, check_capture, coverage
from .windows import DELAY_ENV, DURATION_ENV, Window


@dataclasses.dataclass
class Published:
    run_dir: str                   # where the run went
    verification: Verification
    problems: list[str]            # what is wrong with it (the run still went out)
    notes: list[str]               # what the user should know


def publish(staging: Staging, exported: str, steps: StepLog, record: RunRecord, *,
            prefix: str = "", phase: str | None = None, expected_steps: list[int] | None = None,
            window_end: float | None = None) -> Published:
    """Publish the run `exported` (a run dir in `staging`) as `<time>_<prefix><phase>`; without
    `phase`, it is named after the phases the trace holds. `steps` holds the engine's records of
    the window's steps; only those the trace holds go into the manifest. With `expected_steps`,
    the trace must hold exactly those. ValueError (nothing published) if it cannot be verified."""
    name_capture(exported)
    verification = check_capture(exported)
    found = verification.step_numbers
    problems, notes = [], []
    if expected_steps is not None:
        if found != sorted(expected_steps):
            problems.append(f"the {phase or 'capture'} capture holds steps {found} but the window ran "
                            f"steps {sorted(expected_steps)}.")
    elif not found:
        problems.append("the capture holds no engine step: none ran while the trace was open (for an "
                        "env window, check the delay and duration).")
    elif steps.steps and found[0] > steps.steps[0].step:
        missed = sum(1 for s in steps.steps if s.step < found[0])
        notes.append(f"the capture window opened after the passes began; it misses their first "
                     f"{missed} step(s).")
    notes += coverage_notes(steps, verification, record.window, record.capture)
    if window_end is not None:
        record.capture = dataclasses.replace(record.capture, written_after_s=time.time() - window_end)
    record.verification = verification
    write_manifest(exported, steps.select(found))
    write_run_record(exported, record)
    dest = staging.publish(exported, prefix + (phase or verification.phases()))
    return Published(dest, verification, problems, notes)


def coverage_notes(steps: StepLog, verification: Verification, window: Window | None,
                   capture: CaptureTiming) -> list[str]:
    """One line per phase of an offline run: steps in the profiled pass(es) against steps in
    the capture, and what to change when it holds fewer. (A server's StepLog only holds the
    window's own steps, so there is nothing to compare.)"""
    if window is None or window.kind not in ("env", "phase"):
        return []
    ran = [s for s in steps.steps if capture.pass_index is None or s.pass_index == capture.pass_index]
    return [_coverage_line(c, window, capture) for c in coverage(ran, verification.steps)]


def _coverage_line(c: PhaseCoverage, window: Window, capture: CaptureTiming) -> str:
    passes = "the profiled pass" if c.passes == 1 else f"the {c.passes} profiled passes"
    held = "all of them" if c.complete else (f"{c.captured}" if c.captured else "none")
    line = f"{c.phase}: {passes} ran {c.ran} {c.phase} step(s); the capture holds {held}"
    if c.passes > 1 and not c.complete:
        line += f" ({c.whole_passes} pass(es) whole)"
    if c.complete:
        return line + "."
    if window.kind == "phase":
        return line + f" (the window takes {window.describe()})."
    if not capture.passes_wall:
        return line + "."
    # A detached trace opens at the request with no delay, ~1 s before the passes begin.
    wall = capture.passes_wall[1] - capture.passes_wall[0]
    ms = 1000 * math.ceil(1.25 * wall + 1)
    delay = f"{DELAY_ENV}=0 " if window.delay_ms else ""
    what = "the whole pass" if c.passes == 1 else f"all {c.passes} passes"
    return line + (f"; to capture {what}, set {delay}{DURATION_ENV}={ms} "
                   f"(the pass{'es' if c.passes > 1 else ''} took {wall:.1f} s).")
