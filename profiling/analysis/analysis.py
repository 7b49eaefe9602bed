"""One capture as engine steps holding their XLA op executions: what every table is built from.

Any capture, whatever engine made it (`trace/capture.py` reads `.xplane.pb` and Chrome-trace
JSON alike): steps come from the best source the capture holds (`steps.py`), their phases from
the best rule that applies (`phases.py`) and the ops' layers from the model's scope names, its
loops or its repeating blocks (`layers.py`); the rules used are recorded (`Rules`). Ops are
the XLA op executions, each placed in the step that owns its program run, else in the step
whose window contains its start. Op times are self times, so nested events are counted once.
Our manifest, where present, adds what the trace does not know (tokens, padding, KV lengths,
requests); the run record adds the model, compiles and peaks.
"""
from __future__ import annotations

import bisect
import dataclasses

from tpu_engine.events import StepRecord

from ..runs.layout import resolve_run
from ..runs.record import RunRecord, read_manifest, read_run_record
from ..trace import capture as capture_mod
from ..trace import xspace
from ..trace.ops import Op, Run
from . import layers as layers_mod
from . import phases as phases_mod
from . import steps as steps_mod


@dataclasses.dataclass
class Step:
    phase: str
    step: int
    start_ns: float
    end_ns: float
    record: StepRecord | None                   # the manifest's record of this step, if any
    ops: list[Op] = dataclasses.field(default_factory=list)
    programs: list[tuple[float, float]] = dataclasses.field(default_factory=list)  # XLA program runs
    source: str = "annotation"  # how it was found: annotation, engine, program, loop, capture (steps.py)
    name: str = ""              # the annotation, engine function or program that made it
    phase_rule: str = ""        # why it has its phase (phases.py)
    args: tuple = ()            # what its step annotation carries, as (name, value) pairs
    runs: list[Run] = dataclasses.field(default_factory=list)  # device runs it owns, where known

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


@dataclasses.dataclass(frozen=True)
class Rules:
    """How this analysis found its steps, phases and layers: printed, and carried in JSON."""
    steps: steps_mod.StepRule
    phases: phases_mod.PhaseRule
    layers: layers_mod.LayerRule

    def to_json(self) -> dict:
        return {"steps": self.steps.to_json(), "phases": self.phases.to_json(), "layers": self.layers.to_json()}


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
    rules: Rules | None = None
    capture: capture_mod.Capture | None = dataclasses.field(default=None, repr=False)
    device_runs: list[Run] = dataclasses.field(default_factory=list, repr=False)  # runs on device planes

    @classmethod
    def load(cls, path: str) -> "Analysis":
        """A run dir, a capture file (.xplane.pb, .trace.json[.gz]), or a profile dir (its newest
        run); ValueError when there is nothing readable."""
        run_dir, xplane = resolve_run(path)
        cap = capture_mod.load(xplane)
        by_step = {r.step: r for r in read_manifest(run_dir)}
        found, step_rule = steps_mod.find(cap)
        phase_rule = phases_mod.assign(found, cap.modules, run_dir, by_step)
        steps = [Step(f.phase, f.step, f.start_ns, f.end_ns, by_step.get(f.step) if f.source == "annotation" else None,
                      source=f.source, name=f.name, phase_rule=f.phase_rule, args=f.args, runs=f.runs)
                 for f in found]
        a = cls.from_parts(steps, cap.ops, cap.programs, read_run_record(run_dir), run_dir, xplane,
                           rule=step_rule, phase_rule=phase_rule,
                           infer_layers=not phases_mod.backward_program(cap.modules),
                           trip_counts={(key, ins.name): ins.trip_count for key, m in cap.modules.items()
                                        for ins in m.instructions.values() if ins.trip_count})
        a.space, a.capture = cap.space, cap
        a.device_runs = cap.device_runs
        return a

    @classmethod
    def from_parts(cls, steps: list[Step], ops: list[Op], programs: list[tuple[float, float]] = (),
                   record: RunRecord | None = None, run_dir: str = "", xplane: str = "",
                   rule: steps_mod.StepRule | None = None, phase_rule: phases_mod.PhaseRule | None = None,
                   infer_layers: bool = True, trip_counts: dict | None = None) -> "Analysis":
        """Put each op and program run into the step it belongs to, then find the layers.
        Without steps, one pseudo step `all` spans every op."""
        ops = sorted(ops, key=lambda o: o.start_ns)
        if not steps:
            lo = min((o.start_ns for o in ops), default=0.0)
            hi = max((o.end_ns for o in ops), default=0.0)
            steps = [Step("all", 0, lo, hi, None, source="capture", phase_rule="the whole capture")]
        steps = sorted(steps, key=lambda s: s.start_ns)
        starts = [s.start_ns for s in steps]
        for a, b in programs:
            i = bisect.bisect_right(starts, b) - 1  # programs may begin before the step's scope
            while i >= 0 and steps[i].end_ns > a:
                steps[i].programs.append((a, b))
                i -= 1
        owner = _run_owner(steps)
        outside = []
        for o in ops:
            step = owner(o)
            if step is None:
                i = bisect.bisect_right(starts, o.start_ns) - 1
                step = steps[i] if i >= 0 and o.start_ns <= steps[i].end_ns else None
            (step.ops if step is not None else outside).append(o)
        a = cls(run_dir, xplane, steps, ops, outside, record)
        a.rules = Rules(rule or steps_mod.StepRule("annotation", f"steps: {len(steps)} given"),
                        phase_rule or phases_mod.PhaseRule("names", "phases: as given"),
                        layers_mod.assign(ops, a.runs_of(), infer=infer_layers, trip_counts=trip_counts))
        return a

    def runs_of(self) -> dict[str, list[list[Op]]]:
        """Program -> the op lists of its runs (one per step and device)."""
        out: dict[str, list[list[Op]]] = {}
        for s in self.steps:
            per = {}
            for o in s.ops:
                per.setdefault((o.module, o.device), []).append(o)
            for (module, _), run_ops in per.items():
                out.setdefault(module, []).append(run_ops)
        return out

    @property
    def phases(self) -> list[str]:
        return list(dict.fromkeys(s.phase for s in self.steps))

    def phase_steps(self, phase: str) -> list[Step]:
        return [s for s in self.steps if s.phase == phase]

    def phase_ops(self, phase: str) -> list[Op]:
        return [o for s in self.phase_steps(phase) for o in s.ops]


def _run_owner(steps: list[Step]):
    """op -> the step owning the device run it executes in (steps found by dispatch own runs
    that outlast them); None where no step owns one."""
    runs = sorted((r.device, r.start_ns, r.end_ns, i) for i, s in enumerate(steps) for r in s.runs)
    if not runs:
        return lambda o: None
    by_device: dict[str, list] = {}
    for device, a, b, i in runs:
        by_device.setdefault(device, []).append((a, b, i))
    starts = {d: [r[0] for r in rs] for d, rs in by_device.items()}

    def owner(o: Op):
        rs = by_device.get(o.device)
        if not rs:
            return None
        j = bisect.bisect_right(starts[o.device], o.start_ns) - 1
        return steps[rs[j][2]] if j >= 0 and o.start_ns <= rs[j][1] else None
    return owner
