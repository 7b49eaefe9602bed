"""The measurements behind the findings (`findings.py`): one function per rule, each returning a
value per subject with the time it costs, from the tables the summary prints (phases, requests,
breakdown, roofline, layer outliers, compiles). No rule invents a figure: where a capture lacks
what a rule needs (no manifest, no peaks, one device), the rule says nothing."""
from __future__ import annotations

import collections
import dataclasses
import functools
import statistics

from . import tables
from .analysis import Analysis
from .breakdown import breakdowns
from .fidelity import layer_outliers
from .recompiles import compile_rows
from .requests import Served, request_table
from . import roofline as roofline_mod


@dataclasses.dataclass(frozen=True)
class Measure:
    subject: str
    value: float
    per_step_ms: float | None
    per_request_ms: float | None
    total_ms: float
    evidence: str


class Inputs:
    """One capture (and service profile) as the rules read it; shared tables built once."""

    def __init__(self, a: Analysis, served: Served | None = None):
        self.a, self.served = a, served

    @functools.cached_property
    def requests(self):
        return request_table(self.a, self.served).rows

    def phase_requests(self, phase: str) -> int:
        return len({r for s in self.a.phase_steps(phase) if s.record for r in s.record.request_ids})


def padding(x: Inputs) -> list[Measure]:
    out = []
    for phase in x.a.phases:
        steps = [s for s in x.a.phase_steps(phase) if s.record and s.record.padded_tokens]
        if not steps:
            continue
        busy = [s.busy_s() * 1e3 for s in steps]
        pad = [b * (1 - s.record.num_tokens / s.record.padded_tokens) for s, b in zip(steps, busy)]
        real, padded = sum(s.record.num_tokens for s in steps), sum(s.record.padded_tokens for s in steps)
        n = x.phase_requests(phase)
        out.append(Measure(phase, 100 * (padded - real) / padded, sum(pad) / len(steps),
                           sum(pad) / n if n else None, sum(pad),
                           f"{phase}: {padded - real} of {padded} compiled tokens are padding ({real} real) over "
                           f"{len(steps)} step(s): {sum(pad):.2f} ms of {sum(busy):.2f} ms device time"))
    return out


def host(x: Inputs) -> list[Measure]:
    out = []
    for r in tables.phase_summary(x.a).rows:
        if not r.mean_ms or not x.a.device_runs and not any(s.programs for s in x.a.phase_steps(r.phase)):
            continue
        n = x.phase_requests(r.phase)
        out.append(Measure(r.phase, 100 * r.host_ms / r.mean_ms, r.host_ms, r.host_ms * r.steps / n if n else None,
                           r.host_ms * r.steps, f"{r.phase}: per step {r.mean_ms:.2f} ms, of which {r.busy_ms:.2f} "
                                                f"ms an XLA program ran and {r.host_ms:.2f} ms none did"))
    return out


def roofline(x: Inputs) -> list[Measure]:
    roof = roofline_mod.roofline(x.a)
    out = []
    for phase, got, unit, scale in (("prefill", roof and roof.prefill, "GFLOP/s", 1e9),
                                    ("decode", roof and roof.decode, "GB/s", 1e9)):
        if not got or got.pct_of_peak is None:
            continue
        steps = len([s for s in x.a.phase_steps(phase) if s.record])
        lost = got.seconds * 1e3 * (1 - min(got.pct_of_peak, 100) / 100)
        peak = got.per_s / (got.pct_of_peak / 100)
        evidence = (f"{phase}: {got.per_s / scale:.2f} {unit}, {got.pct_of_peak:.1f}% of the {peak / scale:.1f} "
                    f"{unit} peak ({roof.peaks.source}){_slowest_layer(x.a, phase)}")
        n = x.phase_requests(phase)
        out.append(Measure(phase, 100 - got.pct_of_peak, lost / steps if steps else None, lost / n if n else None,
                           lost, evidence))
    return out


def _slowest_layer(a: Analysis, phase: str) -> str:
    """Identical layers do the same work: the slowest of them is the furthest from the roofline."""
    rows = [r for r in tables.model_table(a, phase).rows if r.depth == 0 and ".layers." in f".{r.module}"]
    if len(rows) < 2:
        return ""
    slow = max(rows, key=lambda r: r.total_ms)
    median = statistics.median(r.total_ms for r in rows)
    return f"; per layer: {slow.module} the slowest, {slow.per_step_ms:.2f} ms per step against a median " \
           f"{median / max(1, len(a.phase_steps(phase))):.2f} ms"


def collective(x: Inputs) -> list[Measure]:
    out = []
    for phase in x.a.phases:
        parts = breakdowns(x.a, phase)
        step_ns = sum(b.step_ns for b in parts)
        exposed = sum(b.collective_ns - b.collective_overlap_ns + b.waiting_ns for b in parts)
        if not step_ns or not exposed:
            continue
        devices, steps = len({b.device for b in parts}), len({b.step for b in parts})
        waits = collections.Counter()
        for s in x.a.phase_steps(phase):
            for o in s.ops:
                if o.opcode.endswith("-done") or o.category == "collective":
                    waits[o.name.split(".")[0]] += o.self_ns
        top = ", ".join(f"{k} {v / 1e6:.2f} ms" for k, v in waits.most_common(3))
        per_step = exposed / 1e6 / devices / steps
        out.append(Measure(phase, 100 * exposed / step_ns, per_step, None, per_step * steps,
                           f"{phase}: {exposed / 1e6:.2f} ms of {step_ns / 1e6:.2f} ms device-step time (summed "
                           f"over {devices} device(s)) is collective time with no compute beside it or `-done` "
                           f"waits; the most: {top}"))
    return out


def queueing(x: Inputs) -> list[Measure]:
    rows = [r for r in x.requests if r.queue_ms is not None and r.ttft_ms]
    if not rows:
        return []
    slots = x.a.record.engine.max_num_seqs if x.a.record and x.a.record.engine else None
    full = [s for s in x.a.steps if s.record and slots and s.phase == "decode" and s.record.batch_size >= slots]
    queued = sorted((r for r in rows if r.waited_behind), key=lambda r: -r.queue_ms)
    total = sum(r.queue_ms for r in rows)
    worst = queued[0] if queued else max(rows, key=lambda r: r.queue_ms)
    evidence = (f"{len(queued)} of {len(rows)} requests queued ({total:.1f} ms in all); {len(full)} decode step(s) "
                f"ran with all {slots} slots busy; request {worst.request_id} waited {worst.queue_ms:.1f} ms"
                + (f" behind {worst.waited_behind}" if worst.waited_behind else ""))
    value = 100 * total / sum(r.ttft_ms for r in rows) if (full or not slots) else 0.0
    return [Measure("requests", value, None, total / len(rows), total, evidence)]


def recompile(x: Inputs) -> list[Measure]:
    rows = compile_rows([s.record for s in x.a.steps if s.record]).rows
    out = [Measure(f"step {r.step}", float(r.compiles), (r.compile_s or 0) * 1e3, (r.compile_s or 0) * 1e3,
                   (r.compile_s or 0) * 1e3,
                   f"step {r.step} ({r.phase}) compiled {r.compiles} program(s) in {r.compile_s or 0:.2f} s: "
                   f"{r.tokens_bucket} tokens x {r.sequences} sequences, KV span {r.kv_span}, sampler "
                   f"`{r.sampling or '?'}` ({r.real_tokens} real tokens), brought by request {r.request}; "
                   f"{r.avoid}") for r in rows]
    profiled = x.a.record.compiles.profiled if x.a.record else None
    if not out and profiled and profiled.compiles:  # the window compiled, in no step the manifest has
        out.append(Measure("window", float(profiled.compiles), None, None, profiled.compile_time_s * 1e3,
                           f"{profiled.compiles} compilation(s), {profiled.compile_time_s:.2f} s, during the window"))
    return out


def outlier(x: Inputs) -> list[Measure]:
    out = []
    for phase in x.a.phases:
        steps = max(1, len(x.a.phase_steps(phase)))
        for o in layer_outliers(x.a, phase):
            extra = o.layer_ms - o.median_ms
            out.append(Measure(f"{phase} {o.layer}", 100 * (o.layer_ms / o.median_ms - 1), extra / steps, None, extra,
                               f"{o.layer} takes {o.layer_ms:.2f} ms against the layers' median {o.median_ms:.2f} "
                               f"ms: {o.op} {o.op_ms:.2f} ms against {o.sibling_op_ms:.2f} ms; {o.reason}"))
    return out


def skew(x: Inputs) -> list[Measure]:
    out = []
    for phase in x.a.phases:
        per_step = collections.defaultdict(list)
        for b in breakdowns(x.a, phase):
            if b.device.startswith("/device:"):
                per_step[b.step].append((b.step_ns - b.host_ns - b.idle_ns, b.device))
        spans = [(max(v)[0] - min(v)[0], max(v)[0], max(v)[1], min(v)[1]) for v in per_step.values() if len(v) > 1]
        if not spans or not sum(s[1] for s in spans):
            continue
        gap = sum(s[0] for s in spans)
        slow = collections.Counter(s[2] for s in spans).most_common(1)[0][0]
        out.append(Measure(phase, 100 * gap / sum(s[1] for s in spans), gap / 1e6 / len(spans), None, gap / 1e6,
                           f"{phase}: over {len(spans)} step(s) the slowest device is busy {gap / 1e6:.2f} ms longer "
                           f"than the fastest; most often the slowest: {slow}"))
    return out
