"""Check a written capture: the `.xplane.pb` is there and not empty, XProf can read it, which
engine steps it holds (counted from the step scopes in the trace), and how many of the steps
that ran while profiling those are, per phase."""
from __future__ import annotations

import collections
import dataclasses
import os

from tpu_engine.events import PHASES, StepRecord

from ..runs.layout import find_xplane
from ..runs.parts import Verification
from ..trace import xspace
from ..trace.xprof import xprof_tools


def check_capture(run_dir: str) -> Verification:
    """Verify one run directory; ValueError with a plain sentence when it is not usable.
    XProf must read it and offer its trace viewer (what TensorBoard opens); the step scopes
    are counted from the capture itself."""
    path = find_xplane(run_dir)
    size = os.path.getsize(path)
    space = xspace.load(path)  # raises on empty / unparsable
    tools = xprof_tools(path)
    if not any(t.startswith("trace_viewer") for t in tools):
        raise ValueError(f"XProf cannot open {path} in its trace viewer (tools offered: {tools or 'none'}).")
    steps: dict[str, list[int]] = collections.defaultdict(list)
    for s in xspace.step_scopes(space):
        steps[s.phase].append(s.step)
    return Verification(os.path.basename(path), size, dict(steps), tools, xspace.session_times_ns(space))


@dataclasses.dataclass(frozen=True)
class PhaseCoverage:
    """How many of one phase's steps in the profiled pass(es) a capture holds."""
    phase: str
    ran: int            # steps of the phase that ran in the pass(es)
    captured: int       # of those, the ones the trace holds
    passes: int         # profiled passes those steps ran in
    whole_passes: int   # passes whose steps of this phase the trace holds every one of

    @property
    def complete(self) -> bool:
        return self.captured >= self.ran


def coverage(ran: list[StepRecord], found: dict[str, list[int]]) -> list[PhaseCoverage]:
    """Per phase (in engine order), the steps in `ran` against the step numbers `found` in the
    trace; a phase that did not run is left out."""
    out = []
    for phase in PHASES:
        held = set(found.get(phase, []))
        by_pass: dict[int, list[bool]] = collections.defaultdict(list)
        for s in ran:
            if s.phase == phase:
                by_pass[s.pass_index].append(s.step in held)
        if by_pass:
            flags = [f for v in by_pass.values() for f in v]
            out.append(PhaseCoverage(phase, len(flags), sum(flags), len(by_pass),
                                     sum(all(v) for v in by_pass.values())))
    return out
