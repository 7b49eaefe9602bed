"""Where a capture's engine steps are, from the best source it holds; the source is said in one
line (`StepRule`).

  1. step annotations: TraceMe events with a `step_num` (`jax.profiler.StepTraceAnnotation`,
     our engine's `prefill`/`decode` steps, as XProf groups steps), joined to our manifest by
     step number where there is one;
  2. an engine's own step functions, as the Python tracer records them (`ENGINE_STEPS`); a
     step owns the device runs it dispatched (`PjitFunction(f)` inside it), even when they ran
     after it returned (asynchronous dispatch);
  3. failing those, program executions: every run of the programs named after a phase
     (`jit_prefill`, `jit__decode_fn`), else of the dominant program (`jit_step_fun`); runs of
     one program at once on several devices are one step, and the smaller programs that follow
     a run (logits, sampling) belong to its step. A run whose `while` loop runs the whole model
     per iteration (a generate loop in one program) is split: the ops before the loop are one
     step, each iteration another;
  4. else the whole capture is one step, `all`.
"""
from __future__ import annotations

import bisect
import collections
import dataclasses

from ..trace.capture import Capture, Mark
from ..trace.ops import Op, Run
from . import layers as layers_mod
from .phases import phase_in_name

# (engine, file the function is in ('' = any), function): the step functions engines run
ENGINE_STEPS = (
    ("vLLM EngineCore step", "core.py", "_process_engine_step"),
    ("tpu-inference execute_model", "", "execute_model"),
    ("SGLang forward", "", "forward_extend"), ("SGLang forward", "", "forward_decode"),
    ("SGLang forward", "", "forward_batch_generation"),
    ("JetStream engine", "maxengine.py", "prefill"), ("JetStream engine", "maxengine.py", "generate"),
    ("JetStream engine", "maxengine.py", "insert"),
)


@dataclasses.dataclass
class Found:
    """A step before its ops are placed: its window and, when known, the device runs it owns."""
    phase: str
    step: int
    start_ns: float
    end_ns: float
    source: str                 # "annotation", "engine", "program", "loop" or "capture"
    name: str                   # the annotation, function or program that made it
    phase_rule: str = ""
    runs: list[Run] = dataclasses.field(default_factory=list)
    args: tuple = ()            # what the step annotation carries


@dataclasses.dataclass(frozen=True)
class StepRule:
    source: str
    text: str

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def find(cap: Capture) -> tuple[list[Found], StepRule]:
    for finder in (_annotated, _engine, _programs):
        found = finder(cap)
        if found:
            return found
    return [], StepRule("capture", "steps: none found (no step annotation, no engine step function, no XLA "
                                   "program run read): the whole capture is one step, `all`")


def _outermost(marks: list[Mark]) -> list[Mark]:
    """Drop marks nested in a mark of the same name on the same thread (a function calling
    itself, or PjitFunction's two nested events)."""
    out, open_end = [], {}
    for m in sorted(marks, key=lambda m: (m.start_ns, -m.end_ns)):
        key = (m.thread, m.name)
        if open_end.get(key, -1.0) >= m.end_ns:
            continue
        open_end[key] = m.end_ns
        out.append(m)
    return out


def _annotated(cap: Capture):
    marks = _outermost([m for m in cap.marks if m.step_num is not None])
    if not marks:
        return None
    names = sorted({m.name for m in marks})
    steps = [Found(phase_in_name(m.name) or m.name, m.step_num, m.start_ns, m.end_ns, "annotation", m.name,
                   args=m.args) for m in marks]
    return steps, StepRule("annotation", f"steps: {len(steps)} step annotations (TraceMe with step_num: "
                                         f"{', '.join(names[:4])})")


def _engine(cap: Capture):
    if not cap.runs:
        return None
    for engine, file, function in ENGINE_STEPS:
        marks = _outermost([m for m in cap.marks if m.function == function and (not file or m.file == file)])
        if not marks:
            continue
        owned = _owners(cap, marks)
        kept = [(m, owned[i]) for i, m in enumerate(marks) if owned.get(i)]
        steps = [Found(phase_in_name(m.function) or "all", i, m.start_ns, max([m.end_ns] + [r.end_ns for r in rs]),
                       "engine", m.name, runs=rs, args=m.args) for i, (m, rs) in enumerate(kept)]
        if steps:
            return steps, StepRule("engine", f"steps: {engine} (`{function}`): {len(marks)} in the trace, "
                                             f"{len(steps)} of them launched XLA programs")
    return None


def _owners(cap: Capture, marks: list[Mark]) -> dict[int, list[Run]]:
    """Mark index -> the device runs it dispatched: a run belongs to the step holding the last
    dispatch of its program before it started (`PjitFunction(f)` for `jit_f`), else to the
    last step that began before it."""
    starts = [m.start_ns for m in marks]
    dispatch = collections.defaultdict(list)
    for m in cap.marks:
        if m.name.startswith("PjitFunction(") and m.name.endswith(")"):
            dispatch["jit_" + m.name[len("PjitFunction("):-1]].append(m.start_ns)
    for times in dispatch.values():
        times.sort()
    out = collections.defaultdict(list)
    for r in cap.runs:
        times = dispatch.get(r.module, [])
        j = bisect.bisect_right(times, r.start_ns) - 1
        at = times[j] if j >= 0 else r.start_ns
        i = bisect.bisect_right(starts, at) - 1
        if i >= 0 and (j < 0 or at <= marks[i].end_ns):
            out[i].append(r)
    return out


def _program_time(cap: Capture) -> collections.Counter:
    t = collections.Counter()
    for r in cap.runs:
        t[r.module] += r.end_ns - r.start_ns
    return t


def _programs(cap: Capture):
    times = _program_time(cap)
    if not times:
        return None
    named = [m for m in times if phase_in_name(m)]
    chosen = named or [times.most_common(1)[0][0]]
    why = "runs of the programs named for a phase" if named else "runs of the dominant program"
    groups = _groups([r for r in cap.runs if r.module in chosen])
    # a step lasts until the next one begins (windows never overlap, so no instant counts
    # twice; a device that runs late finishes its ops in its step all the same: it owns them)
    ends = [g[0].start_ns for g in groups[1:]] + [max(r.end_ns for r in cap.runs)]
    steps = [Found(phase_in_name(g[0].module) or "all", i, g[0].start_ns, end, "program", g[0].module, runs=g)
             for i, (g, end) in enumerate(zip(groups, ends))]
    # what ran before the first step (set-up programs: a first all-reduce, eager ops) is in it,
    # not lost from the tables
    steps[0].start_ns = min([steps[0].start_ns, min(r.start_ns for r in cap.runs)] +
                            [o.start_ns for o in cap.ops[:1]])
    split = _split_loops(cap, steps)
    rule = StepRule("program", f"steps: {why} ({', '.join(f'`{m}`' for m in chosen)}): {len(steps)} run(s)")
    if split is not None:
        steps, n_loops = split
        rule = StepRule("loop", f"{rule.text}; each holds a generate loop: the ops before the loop are a step, "
                                f"each of its iterations another ({len(steps)} steps)")
    return steps, rule


def _groups(runs: list[Run]) -> list[list[Run]]:
    """Runs of one program that overlap in time on different devices: one step."""
    out: list[list[Run]] = []
    for r in sorted(runs, key=lambda r: r.start_ns):
        last = out[-1] if out else None
        if last and r.module == last[0].module and r.device not in {x.device for x in last} \
                and r.start_ns < max(x.end_ns for x in last):
            last.append(r)
        else:
            out.append([r])
    return out


def _run_ops(cap: Capture, starts: list[float], run: Run) -> list[Op]:
    """The ops of one run (`starts`: the capture's op start times, sorted as its ops are)."""
    lo, hi = bisect.bisect_left(starts, run.start_ns), bisect.bisect_right(starts, run.end_ns)
    return [o for o in cap.ops[lo:hi] if o.device == run.device]


def _split_loops(cap: Capture, steps: list[Found]):
    """Steps whose program runs the whole model in each iteration of a `while` loop (a
    generate loop compiled as one program) split into the part before the loop and one step
    per iteration; None when no step's program has such a loop."""
    out, loops = [], 0
    starts = [o.start_ns for o in cap.ops]
    for s in steps:
        first = min(s.runs, key=lambda r: r.device)
        ops = _run_ops(cap, starts, first)
        top = collections.Counter(o.loops[0] for o in ops if o.loops)
        its = layers_mod.iterations(ops, top.most_common(1)[0][0]) if top else []
        if not its or layers_mod.layers_in(its[0]) < 2:
            out.append(s)
            continue
        loops += 1
        bounds = [it[0].start_ns for it in its]
        pre = [o for o in ops if o.start_ns < bounds[0]]
        if pre and layers_mod.layers_in(pre) >= 1 and any(o.category in ("matmul", "attention") for o in pre):
            # the program runs the model once before its loop: the prefill
            out.append(dataclasses.replace(s, phase="prefill", end_ns=bounds[0], runs=[], source="loop",
                                           phase_rule="the model's run before the generate loop: prefill"))
        else:
            bounds[0] = s.start_ns  # set-up before the loop goes with its first iteration
        for k, b in enumerate(bounds):
            end = bounds[k + 1] if k + 1 < len(bounds) else s.end_ns
            out.append(Found("decode", 0, b, end, "loop", s.name, "an iteration of the generate loop: decode"))
    if not loops:
        return None
    for i, s in enumerate(out):
        s.step = i
    return out, loops
