"""One capture as engine steps holding their XLA op executions: what every table is built from.

Times come from the trace itself: engine steps are the `prefill`/`decode` step scopes; ops are
the XLA op executions (`trace/ops.py`), each placed in the step whose scope contains its start.
Op times are self times, so nested events are counted once. The manifest adds what the trace
does not know (tokens, padding, KV lengths, requests); the run record adds the model,
compiles and peaks. Captures made elsewhere (no manifest) are analysed as one phase, `all`.
"""
from __future__ import annotations

import bisect
import dataclasses

from tpu_engine.events import StepRecord

from ..runs.layout import resolve_run
from ..runs.record import RunRecord, read_manifest, read_run_record
from ..trace import ops as ops_mod
from ..trace import xspace
from ..trace.ops import Op


@dataclasses.dataclass
class Step:
    phase: str
    step: int
    start_ns: float
    end_ns: float
    record: StepRecord | None                   # the manifest's record of this step, if any
    ops: list[Op] = dataclasses.field(default_factory=list)
    programs: list[tuple[float, float]] = dataclasses.field(default_factory=list)  # XLA program runs

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9

    def busy_s(self) -> float:
        """Time during which an XLA program was executing (or, where the capture has no
        program events, at least one op ran), as a union over threads and devices."""
        if self.programs:
            spans = sorted((max(a, self.start_ns), min(b, self.end_ns)) for a, b in self.programs)
        else:
            spans = sorted((o.start_ns, min(o.end_ns, self.end_ns)) for o in self.ops)
        total, cur_s, cur_e = 0.0, None, None
        for s, e in spans:
            if cur_e is None or s > cur_e:
                if cur_e is not None:
                    total += cur_e - cur_s
                cur_s, cur_e = s, e
            else:
                cur_e = max(cur_e, e)
        if cur_e is not None:
            total += cur_e - cur_s
        return total / 1e9


@dataclasses.dataclass
class Analysis:
    run_dir: str
    xplane: str
    steps: list[Step]
    ops: list[Op]
    outside: list[Op]                    # ops that started outside every step scope
    record: RunRecord | None             # run_info.json, if the capture has one
    space: xspace.Space | None = None    # the capture itself (None when built from parts)
    derived: dict = dataclasses.field(default_factory=dict, repr=False)  # tables computed once, by name

    @classmethod
    def load(cls, path: str) -> "Analysis":
        """A run dir, an .xplane.pb, or a profile dir (its newest run); ValueError when there
        is nothing readable."""
        run_dir, xplane = resolve_run(path)
        space = xspace.load(xplane)
        by_step = {r.step: r for r in read_manifest(run_dir)}
        steps = [Step(s.phase, s.step, s.start_ns, s.end_ns, by_step.get(s.step)) for s in xspace.step_scopes(space)]
        found, programs = ops_mod.ops_and_programs(space)
        a = cls.from_parts(steps, found, programs, read_run_record(run_dir), run_dir, xplane)
        a.space = space
        return a

    @classmethod
    def from_parts(cls, steps: list[Step], ops: list[Op], programs: list[tuple[float, float]] = (),
                   record: RunRecord | None = None, run_dir: str = "", xplane: str = "") -> "Analysis":
        """Put each op and program run into the step it belongs to. Without steps, one pseudo
        step `all` spans every op."""
        ops = sorted(ops, key=lambda o: o.start_ns)
        if not steps:
            lo = min((o.start_ns for o in ops), default=0.0)
            hi = max((o.end_ns for o in ops), default=0.0)
            steps = [Step("all", 0, lo, hi, None)]
        steps = sorted(steps, key=lambda s: s.start_ns)
        starts = [s.start_ns for s in steps]
        for a, b in programs:
            i = bisect.bisect_right(starts, b) - 1  # programs may begin before the step's scope
            while i >= 0 and steps[i].end_ns > a:
                steps[i].programs.append((a, b))
                i -= 1
        outside = []
        for o in ops:
            i = bisect.bisect_right(starts, o.start_ns) - 1
            if i >= 0 and o.start_ns <= steps[i].end_ns:
                steps[i].ops.append(o)
            else:
                outside.append(o)
        return cls(run_dir, xplane, steps, ops, outside, record)

    @property
    def phases(self) -> list[str]:
        return list(dict.fromkeys(s.phase for s in self.steps))

    def phase_steps(self, phase: str) -> list[Step]:
        return [s for s in self.steps if s.phase == phase]

    def phase_ops(self, phase: str) -> list[Op]:
        return [o for s in self.phase_steps(phase) for o in s.ops]
