"""The one way a capture reaches the profile dir, for offline runs and live servers alike:
name its file after this host, verify it, name the run after the time and the phases it holds,
write its manifest and run record beside it, and move it into `plugins/profile/` with one
rename. An offline run's notes also say, per phase, how much of the profiled passes it holds."""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from collections.abc import Callable

from ..runs.layout import runs_in
from ..runs.parts import Verification, Window
from ..runs.record import CaptureTiming, RunRecord, read_run_record, write_manifest, write_run_record
from ..table import number_ranges
from .record import StepLog
from .store import Staging, free_run_name, name_capture, real_dir_inside, staging_entries
from .verify import PhaseCoverage, check_capture, coverage
from .windows import DELAY_ENV, DURATION_ENV, Captured


class CaptureWriteError(ValueError):
    """The capture could not be written (a full disk, a read-only or removed profile dir)."""


@dataclasses.dataclass
class Published:
    run_dir: str                   # where the run went
    verification: Verification
    problems: list[str]            # what is wrong with it (the run still went out)
    notes: list[str]               # what the user should know


def publish(staging: Staging, captured: Captured, steps: StepLog, record: RunRecord, *,
            checkpoint: Callable[[str], None] = lambda stage: None) -> Published:
    """Publish the window's export (`captured.run_dir`, a run dir in `staging`) as
    `<time>_<label>`, the label its window gives (`Window.run_label`). `steps` holds the
    engine's records of the window's steps; only those the trace holds go into the manifest.
    With `captured.expected_steps`, the trace must hold exactly those, unless Ctrl-C cut the
    window short: then it holds what ran up to the interrupt, and the record says so.
    `checkpoint(stage)` runs before verifying and before the final rename (the interrupt
    policy's safe points). ValueError (nothing published) if it cannot be verified, CaptureWriteError
    if it cannot be written (a full disk, a profile dir removed meanwhile)."""
    try:
        return _publish(staging, captured, steps, record, checkpoint)
    except OSError as e:
        raise CaptureWriteError(f"it could not be written into {staging.root} "
                                f"({e.strerror or type(e).__name__})") from None


def _publish(staging: Staging, captured: Captured, steps: StepLog, record: RunRecord, checkpoint) -> Published:
    exported, expected_steps, interrupted = captured.run_dir, captured.expected_steps, captured.interrupted
    name_capture(exported)
    checkpoint("verify")
    verification = check_capture(exported)
    found = verification.step_numbers
    problems, notes = [], []
    if interrupted:
        record.interrupted = True
        notes.append(_interrupted_note(found, expected_steps))
        if record.capture.window_steps is not None:  # the steps it ran are the steps it holds
            record.capture = dataclasses.replace(record.capture, window_steps=found)
    elif expected_steps is not None:
        if found != sorted(expected_steps):
            problems.append(f"the {record.window.phase if record.window else 'capture'} capture holds steps "
                            f"{found} but the window ran steps {sorted(expected_steps)}.")
    elif not found:
        problems.append("the capture holds no engine step: none ran while the trace was open (for an "
                        "env window, check the delay and duration).")
    elif steps.steps and found[0] > steps.steps[0].step:
        missed = sum(1 for s in steps.steps if s.step < found[0])
        notes.append(f"the capture window opened after the passes began; it misses their first "
                     f"{missed} step(s).")
    notes += coverage_notes(steps, verification, record.window, record.capture)
    if captured.timing.closed_at is not None:
        ended = min(captured.timing.closed_at, time.time())  # an env window may close after the passes
        record.capture = dataclasses.replace(record.capture, written_after_s=time.time() - ended)
    record.verification = verification
    write_manifest(exported, steps.select(found))
    write_run_record(exported, record)
    checkpoint("publish")
    dest = staging.publish(exported, run_label(record.window, verification))
    return Published(dest, verification, problems, notes)


def settle_stale_staging(root: str) -> list[str]:
    """Staging dirs left under `root` by killed runs: a capture in them that was verified and
    recorded (only the final rename was missing) is published, anything else is removed. One
    line per staging dir says which. Only real directories inside `root` are settled: an entry
    that is a symlink (or a run inside staging that is one) is skipped, and one line says so."""
    stale, skipped = staging_entries(root)
    lines = [f"skipped {os.path.relpath(p)}: it is named like a staging dir but is a link or not a directory "
             f"inside the profile dir, so it is left alone." for p in skipped]
    for path, pid in stale:
        kept, dropped = [], 0
        try:
            for run in runs_in(path):
                if not real_dir_inside(run, path):
                    lines.append(f"skipped {os.path.relpath(run)}: a link inside staging is never followed.")
                    continue
                dest = _recover(root, run)
                if dest:
                    kept.append(os.path.relpath(dest))
                else:
                    dropped += 1
        except OSError as e:  # leave it as it is for a later run (or the user) to settle
            lines.append(f"stale staging {os.path.relpath(path)} (left by process {pid}) could not be settled: {e}.")
            continue
        shutil.rmtree(path, ignore_errors=True)
        what = [f"its verified capture{'s' if len(kept) > 1 else ''} recovered as {', '.join(kept)}"] if kept else []
        if dropped:
            what.append(f"{dropped} unfinished capture(s) (never verified) deleted")
        lines.append(f"removed stale staging {os.path.relpath(path)} (left by process {pid}, which is gone): "
                     f"{'; '.join(what) or 'it held no capture'}.")
    return lines


def _recover(root: str, run: str) -> str | None:
    """Publish a staged run whose record says it was verified and that still verifies; None
    (leave it to be removed) otherwise."""
    try:
        record = read_run_record(run)
        if record is None or record.verification is None:
            return None
        verification = check_capture(run)
    except (ValueError, OSError):
        return None
    kind = run_label(record.window, verification)
    dest_root = os.path.join(root, "plugins", "profile")
    os.makedirs(dest_root, exist_ok=True)
    dest = os.path.join(dest_root, free_run_name(dest_root, kind, record.capture.closed_at))
    os.rename(run, dest)
    return dest


def run_label(window: Window | None, verification: Verification) -> str:
    """The one way runs are named (after the time): by their window, from what the trace holds."""
    return window.run_label(verification.phases()) if window else verification.phases()


def _interrupted_note(found: list[int], ended: list[int] | None) -> str:
    held = f"steps {number_ranges(found)}" if found else "no engine step"
    cut = sorted(set(found) - set(found if ended is None else ended))
    tail = f"; step {number_ranges(cut)} was cut short" if cut else ""
    return f"interrupted: the capture holds {held}, up to the interrupt{tail}."


def coverage_notes(steps: StepLog, verification: Verification, window: Window | None,
                   capture: CaptureTiming) -> list[str]:
    """One line per phase of an offline run: steps in the profiled pass(es) against steps in
    the capture, and what to change when it holds fewer. (A server's StepLog only holds the
    window's own steps, so there is nothing to compare.)"""
    if window is None or not window.offline:
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
    if window.per_pass:
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
