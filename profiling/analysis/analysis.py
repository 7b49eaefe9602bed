"""Turn one capture into numbers: phases, layers, op categories, top ops, compiles, roofline.

Times come from the trace itself: engine steps are the `prefill`/`decode` step scopes; ops are
the XLA op executions (ops.py), each placed in the step whose scope contains its start. Op
times are self times, so nested events are counted once. The manifest adds what the trace does
not know (tokens, padding, KV lengths, requests); `run_info.json` adds the model, compiles and
peaks. Captures made elsewhere (no manifest) are analysed as one phase, `all`.
"""
from __future__ import annotations

import bisect
import collections
import dataclasses
import glob
import json
import os
import statistics

from ..capture.record import MANIFEST, RUN_INFO
from ..trace import ops as ops_mod
from ..trace import xspace
from .table import Table, percentile

PHASES = ("prefill", "decode")


def resolve_run(path: str) -> tuple[str, str]:
    """(run dir, xplane path) for a run dir, an .xplane.pb file, or a profile dir (newest run).
    ValueError when nothing readable is there."""
    if os.path.isfile(path):
        if not path.endswith(".xplane.pb"):
            raise ValueError(f"{path} is not an .xplane.pb capture.")
        return os.path.dirname(os.path.abspath(path)), path
    if not os.path.isdir(path):
        raise ValueError(f"{path} does not exist.")
    here = sorted(glob.glob(os.path.join(path, "*.xplane.pb")))
    if here:
        return path, here[0]
    runs = [r for r in glob.glob(os.path.join(path, "plugins", "profile", "*"))
            if glob.glob(os.path.join(r, "*.xplane.pb"))]
    if runs:
        run = max(runs, key=os.path.getmtime)
        if len(runs) > 1:
            print(f"{path} holds {len(runs)} runs; reading the newest, {os.path.basename(run)} "
                  f"(pass a run dir to choose another).")
        return run, sorted(glob.glob(os.path.join(run, "*.xplane.pb")))[0]
    raise ValueError(f"no .xplane.pb capture in {path} (nor in {path}/plugins/profile/<run>/).")


@dataclasses.dataclass
class Step:
    phase: str
    step: int
    start_ns: float
    end_ns: float
    record: dict | None          # the manifest row, if any
    ops: list = dataclasses.field(default_factory=list)
    programs: list = dataclasses.field(default_factory=list)  # XLA program executions (start, end)

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


class Analysis:
    def __init__(self, path: str):
        self.run_dir, self.xplane = resolve_run(path)
        self.space = xspace.load(self.xplane)
        self.run_info = _read_json(os.path.join(self.run_dir, RUN_INFO)) or {}
        rows = _read_jsonl(os.path.join(self.run_dir, MANIFEST))
        by_step = {r["step"]: r for r in rows}
        scopes = xspace.step_scopes(self.space)
        self.ops = ops_mod.ops(self.space)
        if scopes:
            self.steps = [Step(s.phase, s.step, s.start_ns, s.end_ns, by_step.get(s.step)) for s in scopes]
        else:  # a capture without engine steps: one pseudo-step over every op
            lo = min((o.start_ns for o in self.ops), default=0.0)
            hi = max((o.end_ns for o in self.ops), default=0.0)
            self.steps = [Step("all", 0, lo, hi, None)]
        starts = [s.start_ns for s in self.steps]
        for a, b in ops_mod.program_spans(self.space):
            i = bisect.bisect_right(starts, b) - 1  # programs may begin before the step's scope
            while i >= 0 and self.steps[i].end_ns > a:
                self.steps[i].programs.append((a, b))
                i -= 1
        self.outside = []  # ops that started outside every step scope
        for o in self.ops:
            i = bisect.bisect_right(starts, o.start_ns) - 1
            if i >= 0 and o.start_ns <= self.steps[i].end_ns:
                self.steps[i].ops.append(o)
            else:
                self.outside.append(o)

    # ---- helpers --------------------------------------------------------------------------
    @property
    def phases(self) -> list[str]:
        seen = []
        for s in self.steps:
            if s.phase not in seen:
                seen.append(s.phase)
        return seen

    def phase_steps(self, phase: str) -> list[Step]:
        return [s for s in self.steps if s.phase == phase]

    def phase_ops(self, phase: str) -> list:
        return [o for s in self.phase_steps(phase) for o in s.ops]

    # ---- tables ---------------------------------------------------------------------------
    def phase_summary(self) -> Table:
        rows = []
        for phase in self.phases:
            steps = self.phase_steps(phase)
            times = [s.duration_s * 1e3 for s in steps]
            busy = [s.busy_s() * 1e3 for s in steps]
            op_ms = [sum(o.self_ns for o in s.ops) / 1e6 for s in steps]
            recs = [s.record for s in steps if s.record]
            real = sum(r["num_tokens"] for r in recs)
            padded = sum(r["padded_tokens"] for r in recs)
            total_s = sum(times) / 1e3
            rows.append(dict(
                phase=phase, steps=len(steps), total_ms=sum(times), mean_ms=statistics.fmean(times),
                p50_ms=percentile(times, 50), p99_ms=percentile(times, 99),
                busy_ms=statistics.fmean(busy), host_ms=statistics.fmean(t - b for t, b in zip(times, busy)),
                ops_ms=statistics.fmean(op_ms),
                tokens=real if recs else None,
                tok_s=(real / total_s) if recs and total_s > 0 else None,
                pad_pct=(100 * (1 - real / padded)) if padded else None))
        return Table("Phases (per step: busy = an XLA program running, host = the rest, "
                     "ops = op time in the tables)",
                     ["phase", "steps", "total_ms", "mean_ms", "p50_ms", "p99_ms", "busy_ms", "host_ms",
                      "ops_ms", "tokens", "tok_s", "pad_pct"], rows)

    def request_latency(self) -> dict:
        """TTFT and TPOT from the manifest (requests whose steps are all in the capture)."""
        recs = [s.record for s in self.steps if s.record]
        if not recs:
            return {}
        passes = collections.defaultdict(list)
        for r in recs:
            passes[r.get("pass", 0)].append(r)
        ttft, tpot = [], []
        for rows in passes.values():
            start = min(r["wall_start"] for r in rows)
            first_token, decode_times = {}, collections.defaultdict(list)
            for r in rows:
                for rid in r["request_ids"]:
                    if r["phase"] == "prefill":
                        first_token[rid] = r["wall_end"] - start
                    else:
                        decode_times[rid].append(r["wall_end"] - r["wall_start"])
            has_prefill = any(r["phase"] == "prefill" for r in rows)
            if has_prefill:
                ttft += list(first_token.values())
            tpot += [statistics.fmean(v) for v in decode_times.values()]
        out = {}
        if ttft:
            out.update(ttft_mean_ms=1e3 * statistics.fmean(ttft), ttft_p99_ms=1e3 * percentile(ttft, 99))
        if tpot:
            out.update(tpot_mean_ms=1e3 * statistics.fmean(tpot), tpot_p99_ms=1e3 * percentile(tpot, 99))
        return out

    def _grouped(self, phase: str, key: str):
        """(steps, total op self time, ops grouped by attribute `key`) for one phase."""
        steps = self.phase_steps(phase)
        groups = collections.defaultdict(list)
        total = 0.0
        for s in steps:
            for o in s.ops:
                groups[getattr(o, key)].append(o)
                total += o.self_ns
        return steps, total or 1.0, groups

    def model_table(self, phase: str) -> Table:
        """Op time by module scope, grouped under its layer (the seed's 'model table')."""
        steps, total, by_scope = self._grouped(phase, "scope")
        by_layer = collections.defaultdict(list)
        for scope in by_scope:
            by_layer[by_scope[scope][0].layer].append(scope)
        rows = []
        for layer in sorted(by_layer, key=_scope_order):
            layer_ops = [o for sc in by_layer[layer] for o in by_scope[sc]]
            rows.append(_time_row("module", layer, layer, 0, layer_ops, total, len(steps)))
            if by_layer[layer] != [layer]:
                for scope in sorted(by_layer[layer], key=_scope_order):
                    rows.append(_time_row("module", "  " + scope[len(layer) + 1:], scope, 1, by_scope[scope],
                                          total, len(steps)))
        return Table(f"{phase}: op time by module (self time, summed over {len(steps)} step(s))",
                     ["module", "total_ms", "pct", "per_step_ms", "ops"], rows)

    def summary_table(self, phase: str) -> Table:
        """Op time by category (the seed's 'summary table')."""
        steps, total, by_cat = self._grouped(phase, "category")
        rows = [_time_row("category", c, c, 0, by_cat[c], total, len(steps))
                for c in ops_mod.CATEGORIES if c in by_cat]
        rows.sort(key=lambda r: -r["total_ms"])
        return Table(f"{phase}: op time by category", ["category", "total_ms", "pct", "per_step_ms", "ops"], rows)

    def top_ops(self, phase: str, limit: int | None = None) -> Table:
        ops = self.phase_ops(phase)
        total = sum(o.self_ns for o in ops) or 1.0
        groups = collections.defaultdict(list)
        for o in ops:
            groups[(o.module, o.name)].append(o)
        rows = []
        for (module, name), g in groups.items():
            t = [o.self_ns / 1e6 for o in g]
            rows.append(dict(op=name, module=module, scope=g[0].scope, category=g[0].category,
                             framework_op=g[0].framework_op, count=len(g), total_ms=sum(t),
                             avg_ms=statistics.fmean(t), min_ms=min(t), max_ms=max(t),
                             pct=100 * sum(t) * 1e6 / total))
        rows.sort(key=lambda r: -r["total_ms"])
        return Table(f"{phase}: top ops", ["op", "category", "count", "total_ms", "avg_ms", "min_ms", "max_ms", "pct",
                                           "scope", "framework_op", "module"], rows[:limit] if limit else rows)

    def compile_report(self) -> dict:
        info = self.run_info.get("compiles") or {}
        recompiled = [dict(step=s.record["step"], phase=s.phase, bucket=s.record["bucket"],
                           kv_bucket=s.record["kv_bucket"], compiles=s.record["compiles"],
                           compile_time_s=s.record["compile_time_s"])
                      for s in self.steps if s.record and s.record.get("compiles")]
        return dict(warmup=info.get("warmup"), profiled_passes=info.get("profiled_passes"),
                    steps_that_compiled=recompiled,
                    cache_dir=(self.run_info.get("engine") or {}).get("compilation_cache_dir"))

    def roofline(self) -> dict:
        """Achieved FLOP/s (prefill) and bytes/s (decode) against the recorded peaks."""
        from tpu_engine.config import ModelConfig, RopeScaling
        from .roofline import decode_bytes, prefill_flops
        raw, peaks = self.run_info.get("model_config"), self.run_info.get("peaks") or {}
        if not raw:
            return {}
        raw = dict(raw)
        if raw.get("rope_scaling"):
            raw["rope_scaling"] = RopeScaling(**raw["rope_scaling"])
        raw["eos_token_ids"] = tuple(raw.get("eos_token_ids") or ())
        cfg = ModelConfig(**raw)
        dtype_bytes = 2 if (self.run_info.get("engine") or {}).get("dtype") == "bfloat16" else 4
        out = dict(peaks=peaks)
        pre = [s for s in self.phase_steps("prefill") if s.record]
        if pre:
            flops = sum(prefill_flops(cfg, s.record["num_tokens"]) for s in pre)
            secs = sum(s.duration_s for s in pre)
            out["prefill"] = dict(flops=flops, seconds=secs, flops_per_s=flops / secs,
                                  pct_of_peak=_pct(flops / secs, peaks.get("flops_per_s")))
        dec = [s for s in self.phase_steps("decode") if s.record]
        if dec:
            # The manifest keeps each step's min and max context; their mean stands in for the rest.
            nbytes = sum(decode_bytes(cfg, [(s.record["kv_len_min"] + s.record["kv_len_max"]) / 2]
                                      * s.record["batch_size"], dtype_bytes) for s in dec)
            secs = sum(s.duration_s for s in dec)
            out["decode"] = dict(bytes=nbytes, seconds=secs, bytes_per_s=nbytes / secs,
                                 pct_of_peak=_pct(nbytes / secs, peaks.get("bytes_per_s")))
        return out

    def context(self) -> dict:
        keys = ("command", "args", "env", "versions", "engine", "window", "workload", "peaks")
        return dict(run_dir=self.run_dir, xplane=os.path.basename(self.xplane),
                    **{k: self.run_info.get(k) for k in keys if k in self.run_info})

    def to_dict(self) -> dict:
        phases = {}
        for p in self.phases:
            phases[p] = dict(model_table=self.model_table(p).to_dict(),
                             summary_table=self.summary_table(p).to_dict(),
                             top_ops=self.top_ops(p).to_dict())
        return dict(context=self.context(), phase_summary=self.phase_summary().to_dict(),
                    request_latency=self.request_latency(), phases=phases,
                    compile_report=self.compile_report(), roofline=self.roofline(),
                    ops_outside_steps=len(self.outside))


def _pct(value, peak):
    return 100 * value / peak if peak else None


def _time_row(label_column, label, key, depth, ops, total, nsteps) -> dict:
    """One table row: `label` as shown (indented for sub-modules), `key` the full name."""
    t = sum(o.self_ns for o in ops) / 1e6
    return {label_column: label, "name": key, "depth": depth, "total_ms": t, "pct": 100 * t * 1e6 / total,
            "per_step_ms": t / max(1, nsteps), "ops": len(ops)}


def _scope_order(scope: str):
    """embed, rotary, layers in numeric order, final norm, lm_head, sampler, then the rest."""
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
    return (3, 0, scope)


def _read_json(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _read_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
