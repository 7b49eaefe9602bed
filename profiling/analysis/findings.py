"""What to fix first: rules over one capture's tables, each a row of data (`RULES`: name,
threshold, unit, what it measures, advice), ranked by the time each finding costs.

A rule's measure returns one `Measure` per subject (a phase, a layer, the requests): the value
compared with its threshold, and the time it costs per step and per request, which a fix would
win back at most. The measures themselves are in `measures.py`; `--fail-on padding>30%` gates
on the values (`gates`).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable

from ..table import Table
from . import measures
from .analysis import Analysis
from .measures import Measure
from .recompiles import TPU_NOTE
from .requests import Served


@dataclasses.dataclass(frozen=True)
class Rule:
    name: str
    threshold: float          # the finding fires when the value exceeds it
    unit: str                 # what the value is
    measure: Callable[[measures.Inputs], list[Measure]]
    advice: str


RULES = (
    Rule("padding", 20.0, "% of the phase's compiled tokens that are padding", measures.padding,
         "pad less: smaller or more bucket sizes (prefill token buckets, decode slot counts), or pack more "
         "prompts per prefill step (max_num_batched_tokens)"),
    Rule("host", 30.0, "% of step time with no XLA program running (dispatch, sampling read-back)",
         measures.host,
         "overlap the host's work with the device: compiled graphs instead of --enforce-eager, fewer "
         "read-backs per step, the next step's inputs prepared while this one runs"),
    Rule("roofline", 50.0, "% of step time above the roofline (memory bandwidth for decode, matmul peak for "
                           "prefill)", measures.roofline,
         "decode is bound by bytes: batch more sequences per step; prefill by FLOPs: check the layer "
         "named in the evidence for ops that are not matmuls on the critical path"),
    Rule("collective", 10.0, "% of step time in collectives not hidden by compute, or `-done` waits",
         measures.collective,
         "overlap collectives with compute (async collectives, latency-hiding scheduler), or shard so "
         "that less is exchanged per step"),
    Rule("queueing", 20.0, "% of TTFT spent queued while every slot was busy", measures.queueing,
         "add decode slots (--max-num-seqs), raise max_num_batched_tokens so a prefill takes more "
         "waiting prompts, or serve on more replicas"),
    Rule("recompile", 0.0, "compilations after warm-up", measures.recompile,
         f"compile every shape at warm-up (see the signature in the evidence); {TPU_NOTE}"),
    Rule("outlier", 10.0, "% over the median decoder layer", measures.outlier,
         "look at the op named in the evidence: identical layers should cost the same"),
    Rule("skew", 10.0, "% step-time difference between the slowest and fastest device", measures.skew,
         "balance the shards: every device waits for the slowest at the step's end"),
)
BY_NAME = {r.name: r for r in RULES}


@dataclasses.dataclass(frozen=True)
class Finding:
    rank: int
    rule: str
    subject: str             # a phase, a layer, "requests", a step
    value: float
    threshold: float
    unit: str
    per_step_ms: float | None
    per_request_ms: float | None
    total_ms: float          # the time it costs over the capture: what the ranking orders by
    evidence: str
    advice: str


def findings(a: Analysis, served: Served | None = None, rules=RULES) -> Table[Finding]:
    """Every rule's measures past their threshold, costliest first."""
    inputs = measures.Inputs(a, served)
    fired = [(r, m) for r in rules for m in r.measure(inputs) if m.value > r.threshold]
    fired.sort(key=lambda rm: -rm[1].total_ms)
    rows = [Finding(i + 1, r.name, m.subject, m.value, r.threshold, r.unit, m.per_step_ms, m.per_request_ms,
                    m.total_ms, m.evidence, r.advice) for i, (r, m) in enumerate(fired)]
    return Table("Findings: what to fix first (ranked by the time each costs in this capture)", Finding, rows)


_GATE = re.compile(r"^\s*([a-z_]+)\s*>\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")


@dataclasses.dataclass(frozen=True)
class Gate:
    rule: str
    limit: float

    def failed(self, table: Table[Finding]) -> list[Finding]:
        return [f for f in table.rows if f.rule == self.rule and f.value > self.limit]


def gate(text: str) -> Gate:
    """`padding>30%` -> Gate; ValueError (one sentence) for anything else."""
    m = _GATE.match(text)
    names = ", ".join(BY_NAME)
    if not m:
        raise ValueError(f"--fail-on {text!r} is not RULE>LIMIT (e.g. padding>30%); rules: {names}.")
    if m.group(1) not in BY_NAME:
        raise ValueError(f"--fail-on {text!r} names no rule; rules: {names}.")
    return Gate(m.group(1), float(m.group(2)))


def gates(texts) -> list[Gate]:
    return [gate(t) for t in texts or ()]
