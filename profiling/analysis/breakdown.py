"""Where each step's time went, HTA-style, for XLA captures: compute, collective, copy,
waiting on an async op, host (no XLA program running) and idle (a program running, no op).

Every instant of a step falls in exactly one kind, so the kinds add up to the step time. An
instant at which some op runs takes the first kind running then, in the order compute,
collective, copy, waiting: an async op's `-done` side (`copy-done`, `all-reduce-done`,
`recv-done`, ...) is the device waiting for the transfer, so it counts only when nothing else
runs. Read per device from the device lines (TPU, GPU) and from the host threads on CPU,
where an op runs wherever it or its thread-pool tasks run (trace/threadpool.py).
"""
from __future__ import annotations

import collections
import dataclasses

from ..table import Table
from ..trace.ops import Op, runs_by_device
from .analysis import Analysis, Step

KINDS = ("compute", "collective", "copy", "waiting")
# XLA's runtime takes microseconds between ops; a program that runs no op for this long is
# waiting for the OS to run its threads (a busy machine), not doing or scheduling work.
STALL_NS = 1e6


def kind_of(op: Op) -> str:
    if op.opcode.endswith("-done"):
        return "waiting"
    if op.category == "collective":
        return "collective"
    if op.category == "copy/transpose":
        return "copy"
    return "compute"


@dataclasses.dataclass(frozen=True)
class StepBreakdown:
    phase: str
    step: int
    device: str
    step_ns: float
    compute_ns: float
    collective_ns: float
    copy_ns: float
    waiting_ns: float
    host_ns: float
    idle_ns: float
    collective_overlap_ns: float  # collective time during which compute also ran
    stall_ns: float = 0.0         # of idle_ns on CPU: stretches of at least STALL_NS

    @property
    def total_ns(self) -> float:
        return (self.compute_ns + self.collective_ns + self.copy_ns + self.waiting_ns + self.host_ns
                + self.idle_ns)


def _intervals(op: Op, lo: float, hi: float):
    for a, b in [(op.start_ns, op.end_ns)] + list(op.pool_spans or ()):
        a, b = max(a, lo), min(b, hi)
        if b > a:
            yield a, b


def step_breakdown(step: Step, device: str, ops: list[Op], programs) -> StepBreakdown:
    """One device's share of one step, by a sweep over its op and program intervals."""
    lo, hi = step.start_ns, step.end_ns
    points = []
    for op in ops:
        k = KINDS.index(kind_of(op))
        points += [(t, d, k) for a, b in _intervals(op, lo, hi) for t, d in ((a, 1), (b, -1))]
    for a, b in programs:
        a, b = max(a, lo), min(b, hi)
        if b > a:
            points += [(a, 1, -1), (b, -1, -1)]  # kind -1: a program running
    points.sort(key=lambda p: (p[0], p[1]))
    active, out, overlap, last = collections.Counter(), collections.Counter(), 0.0, lo
    idle_run = stall = 0.0
    for t, d, k in points + [(hi, 0, None)]:
        if t > last:
            dt = t - last
            kinds = [i for i in range(len(KINDS)) if active[i] > 0]
            kind = KINDS[kinds[0]] if kinds else ("idle" if active[-1] > 0 else "host")
            out[kind] += dt
            if 0 in kinds and 1 in kinds:
                overlap += dt
            if kind != "idle":
                stall, idle_run = stall + (idle_run if idle_run >= STALL_NS else 0.0), 0.0
            else:
                idle_run += dt
            last = t
        if k is not None:
            active[k] += d
    stall += idle_run if idle_run >= STALL_NS else 0.0
    stall = stall if device.startswith("/host:") else 0.0  # a device's idle time is its own
    return StepBreakdown(step.phase, step.step, device, hi - lo, out["compute"], out["collective"], out["copy"],
                         out["waiting"], out["host"], out["idle"], overlap, stall)


def breakdowns(a: Analysis, phase: str) -> list[StepBreakdown]:
    """Per step and device (device plane, or the host on CPU); computed once per analysis."""
    key = ("breakdowns", phase)
    if key not in a.derived:
        a.derived[key] = _breakdowns(a, phase)
    return a.derived[key]


def _breakdowns(a: Analysis, phase: str) -> list[StepBreakdown]:
    runs = runs_by_device(a.device_runs)
    out = []
    for step in a.phase_steps(phase):
        by_device = collections.defaultdict(list)
        for o in step.ops:
            by_device[o.device].append(o)
        for device, ops in sorted(by_device.items()):
            programs = runs.get(device, step.programs) if runs else step.programs
            out.append(step_breakdown(step, device, ops, programs))
    return out


@dataclasses.dataclass(frozen=True)
class BreakdownRow:
    """One device's mean step, by kind (ms); the kinds add up to `step_ms`."""
    device: str
    step_ms: float
    compute_ms: float
    collective_ms: float
    copy_ms: float
    waiting_ms: float
    host_ms: float
    idle_ms: float
    overlap_pct: float | None  # share of collective time with compute running


def breakdown_table(a: Analysis, phase: str) -> Table[BreakdownRow]:
    """Mean per step, per device: the kinds add up to the step time."""
    per_device = collections.defaultdict(list)
    for b in breakdowns(a, phase):
        per_device[b.device].append(b)
    rows = []
    for device, bs in per_device.items():
        mean = {f[:-3] + "_ms": sum(getattr(b, f) for b in bs) / len(bs) / 1e6
                for f in ("step_ns", "compute_ns", "collective_ns", "copy_ns", "waiting_ns", "host_ns", "idle_ns")}
        coll = sum(b.collective_ns for b in bs)
        rows.append(BreakdownRow(device.removeprefix("/device:").lstrip("/"), **mean,
                                 overlap_pct=100 * sum(b.collective_overlap_ns for b in bs) / coll if coll else None))
    return Table(f"{phase}: step time by kind (mean per step; overlap = collective time with compute running)",
                 BreakdownRow, rows)
