"""The one way a capture reaches the profile dir, for offline runs and live servers alike:
verify it, name it after the phases it holds, write its manifest and run record beside it, and
move it into `plugins/profile/` with one rename."""
from __future__ import annotations

import dataclasses
import time

from .record import RunRecord, StepLog, write_manifest, write_run_record
from .store import Staging
from .verify import Verification, check_capture


@dataclasses.dataclass
class Published:
    run_dir: str                   # where the run went
    verification: Verification
    problems: list[str]            # what is wrong with it (the run still went out)
    notes: list[str]               # what the user should know


def publish(staging: Staging, exported: str, steps: StepLog, record: RunRecord, *,
            prefix: str = "", phase: str | None = None, expected_steps: list[int] | None = None,
            window_end: float | None = None) -> Published:
    """Publish the run `exported` (a run dir in `staging`) as `<prefix><phase>_<time>`; without
    `phase`, it is named after the phases the trace holds. `steps` holds the engine's records of
    the window's steps; only those the trace holds go into the manifest. With `expected_steps`,
    the trace must hold exactly those. ValueError (nothing published) if it cannot be verified."""
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
    if window_end is not None:
        record.capture = dataclasses.replace(record.capture, written_after_s=time.time() - window_end)
    record.verification = verification
    write_manifest(exported, steps.select(found))
    write_run_record(exported, record)
    dest = staging.publish(exported, prefix + (phase or verification.phases()))
    return Published(dest, verification, problems, notes)
