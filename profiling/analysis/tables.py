"""The tables of one capture: phases (step times, busy and host time, tokens, padding), request
latency (TTFT, TPOT), the layer-wise "model table" (op time by module scope), the "summary
table" (op time by category) and the top ops. Times in the op tables are self times."""
from __future__ import annotations

import collections
import dataclasses
import re
import statistics

from ..table import Table, hidden, percentile
from ..trace.categories import CATEGORIES, UNSCOPED
from .analysis import Analysis
from .layers import INFERRED, scoped_layer


@dataclasses.dataclass(frozen=True)
class PhaseRow:
    phase: str
    steps: int
    total_ms: float
    mean_ms: float
    p50_ms: float
    p99_ms: float
    busy_ms: float        # per step: an XLA program running
    host_ms: float        # per step: the rest
    ops_ms: float         # per step: op time in the tables
    tokens: int | None    # from the manifest
    tok_s: float | None
    pad_pct: float | None


def phase_summary(a: Analysis) -> Table[PhaseRow]:
    rows = []
    for phase in a.phases:
        steps = a.phase_steps(phase)
        times = [s.duration_s * 1e3 for s in steps]
        busy = [s.busy_s() * 1e3 for s in steps]
        op_ms = [sum(o.self_ns for o in s.ops) / 1e6 for s in steps]
        recs = [s.record for s in steps if s.record]
        real = sum(r.num_tokens for r in recs)
        padded = sum(r.padded_tokens for r in recs)
        total_s = sum(times) / 1e3
        rows.append(PhaseRow(
            phase=phase, steps=len(steps), total_ms=sum(times), mean_ms=statistics.fmean(times),
            p50_ms=percentile(times, 50), p99_ms=percentile(times, 99),
            busy_ms=statistics.fmean(busy), host_ms=statistics.fmean(t - b for t, b in zip(times, busy)),
            ops_ms=statistics.fmean(op_ms),
            tokens=real if recs else None,
            tok_s=(real / total_s) if recs and total_s > 0 else None,
            pad_pct=(100 * (1 - real / padded)) if padded else None))
    return Table("Phases (per step: busy = an XLA program running, host = the rest, "
                 "ops = op time in the tables)", PhaseRow, rows)


@dataclasses.dataclass(frozen=True)
class RequestLatency:
    """Per request, from the manifest: time to first token (from its pass's first step) and
    time per output token after it."""
    ttft_mean_ms: float | None = None
    ttft_p99_ms: float | None = None
    tpot_mean_ms: float | None = None
    tpot_p99_ms: float | None = None

    def items(self) -> list[tuple[str, float]]:
        return [(k, v) for k, v in dataclasses.asdict(self).items() if v is not None]


def request_latency(a: Analysis) -> RequestLatency:
    """TTFT and TPOT of the requests whose steps the capture holds."""
    recs = [s.record for s in a.steps if s.record]
    passes = collections.defaultdict(list)
    for r in recs:
        passes[r.pass_index].append(r)
    ttft, tpot = [], []
    for rows in passes.values():
        start = min(r.wall_start for r in rows)
        first_token, decode_times = {}, collections.defaultdict(list)
        for r in rows:
            for rid in r.request_ids:
                if r.phase == "prefill":
                    first_token[rid] = r.wall_end - start
                else:
                    decode_times[rid].append(r.wall_end - r.wall_start)
        ttft += list(first_token.values())
        tpot += [statistics.fmean(v) for v in decode_times.values()]
    out = {}
    if ttft:
        out.update(ttft_mean_ms=1e3 * statistics.fmean(ttft), ttft_p99_ms=1e3 * percentile(ttft, 99))
    if tpot:
        out.update(tpot_mean_ms=1e3 * statistics.fmean(tpot), tpot_p99_ms=1e3 * percentile(tpot, 99))
    return RequestLatency(**out)


def _grouped(a: Analysis, phase: str, key: str):
    """(steps, total op self time, ops grouped by attribute `key`) for one phase."""
    steps = a.phase_steps(phase)
    groups = collections.defaultdict(list)
    total = 0.0
    for s in steps:
        for o in s.ops:
            groups[getattr(o, key)].append(o)
            total += o.self_ns
    return steps, total or 1.0, groups


@dataclasses.dataclass(frozen=True)
class ModuleRow:
    """A layer or one of its sub-modules: `module` as shown (indented for sub-modules), `name`
    the full scope; `cpu_ms` the ops' CPU time (on CPU captures, with their thread-pool work),
    `inh_ms` the time of ops whose scope was inherited from the HLO graph."""
    module: str
    total_ms: float
    pct: float
    per_step_ms: float
    ops: int
    cpu_ms: float
    inh_ms: float
    name: str = hidden()
    depth: int = hidden()     # 0: a layer (or a top-level scope), 1: a sub-module of it


@dataclasses.dataclass(frozen=True)
class CategoryRow:
    category: str
    total_ms: float
    pct: float
    per_step_ms: float
    ops: int
    cpu_ms: float


def _times(ops, total, nsteps) -> dict:
    t = sum(o.self_ns for o in ops) / 1e6
    return dict(total_ms=t, pct=100 * t * 1e6 / total, per_step_ms=t / max(1, nsteps), ops=len(ops),
                cpu_ms=sum(o.cpu_time_ns for o in ops) / 1e6)


def _module_row(label, key, depth, ops, total, nsteps) -> ModuleRow:
    return ModuleRow(label, **_times(ops, total, nsteps), inh_ms=sum(o.self_ns for o in ops if o.inherited) / 1e6,
                     name=key, depth=depth)


def part_of(o) -> str:
    """An op's sub-module within its layer ('' for the layer's own ops); an op with no scope is
    labelled by the line of model code that made it, where the capture records one."""
    if o.layer_key:
        return o.layer_part
    if o.scope == UNSCOPED:
        return o.source
    layer = o.layer
    return o.scope[len(layer) + 1:] if o.scope.startswith(layer + ".") else ""


def model_table(a: Analysis, phase: str) -> Table[ModuleRow]:
    """Op time by module scope, grouped under its layer (the seed's 'model table')."""
    steps, total, _ = _grouped(a, phase, "scope")
    by_layer: dict[str, dict[str, list]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for s in steps:
        for o in s.ops:
            by_layer[o.layer][part_of(o)].append(o)
    rows = []
    for layer in sorted(by_layer, key=scope_order):
        parts = by_layer[layer]
        rows.append(_module_row(layer, layer, 0, [o for ops in parts.values() for o in ops], total, len(steps)))
        if list(parts) != [""]:
            for part in sorted(parts, key=lambda p: scope_order(f"{layer}.{p}" if p else layer)):
                name = (f"{layer}/{part}" if layer.endswith(")") else f"{layer}.{part}") if part else layer
                rows.append(_module_row("  " + (part or "(its own ops)"), name, 1, parts[part], total, len(steps)))
    return Table(f"{phase}: op time by module (self time, summed over {len(steps)} step(s); on CPU with the "
                 f"thread pool's work)", ModuleRow, rows)


def summary_table(a: Analysis, phase: str) -> Table[CategoryRow]:
    """Op time by category (the seed's 'summary table')."""
    steps, total, by_cat = _grouped(a, phase, "category")
    rows = [CategoryRow(c, **_times(by_cat[c], total, len(steps))) for c in CATEGORIES if c in by_cat]
    rows.sort(key=lambda r: -r.total_ms)
    return Table(f"{phase}: op time by category", CategoryRow, rows)


@dataclasses.dataclass(frozen=True)
class TopOpRow:
    op: str
    category: str
    count: int
    total_ms: float
    cpu_ms: float
    avg_ms: float
    min_ms: float
    max_ms: float
    pct: float
    scope: str
    inherited: bool       # the scope came from the HLO graph: the op has no metadata of its own
    framework_op: str
    module: str


def top_ops(a: Analysis, phase: str, limit: int | None = None) -> Table[TopOpRow]:
    ops = a.phase_ops(phase)
    total = sum(o.self_ns for o in ops) or 1.0
    groups = collections.defaultdict(list)
    for o in ops:
        groups[(o.module, o.name)].append(o)
    rows = []
    for (module, name), g in groups.items():
        t = [o.self_ns / 1e6 for o in g]
        rows.append(TopOpRow(op=name, module=module, scope=g[0].scope, inherited=g[0].inherited,
                             category=g[0].category, framework_op=g[0].framework_op, count=len(g), total_ms=sum(t),
                             cpu_ms=sum(o.cpu_time_ns for o in g) / 1e6, avg_ms=statistics.fmean(t), min_ms=min(t),
                             max_ms=max(t), pct=100 * sum(t) * 1e6 / total))
    rows.sort(key=lambda r: -r.total_ms)
    return Table(f"{phase}: top ops", TopOpRow, rows[:limit] if limit else rows)


_INDEX = re.compile(r"^(.*?)(\d+)((?:\.| \().*)?$")


def scope_order(scope: str):
    """embed, rotary, layers in numeric order, final norm, lm_head, sampler, then the rest;
    another model's layers (`h.3`, `layers.3 (inferred)`) in numeric order too."""
    head = ["model.embed_tokens", "model.rotary_emb"]
    tail = ["model.norm", "lm_head", "sampler"]
    if scope in head:
        return (0, head.index(scope), "")
    if scope.startswith("model.layers."):
        parts = scope.split(".")
        sub = ["input_layernorm", "self_attn", "post_attention_layernorm", "mlp"]
        rest = ".".join(parts[3:])
        return (1, int(parts[2]) if parts[2].isdigit() else 0, f"{sub.index(rest) if rest in sub else 9}{rest}")
    if scope in tail:
        return (2, tail.index(scope), "")
    m = _INDEX.match(scope)
    if m and scoped_layer(scope) or (m and scope.endswith((INFERRED, " (scan)"))):
        return (1, int(m.group(2)), m.group(3) or "")
    return (3, 0, scope)
