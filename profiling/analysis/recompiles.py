"""Why it recompiled: every step that compiled (in a capture's window, or over a server's life
from its service profile), with the shape signature that was new (tokens bucket, sequences,
KV span, sampler variant), the request that brought it, and the warm-up that would have
compiled it beforehand.

The request that caused a compile: in a prefill, the request that arrived last (the shape is
the packed prompts', and without the newest one the step would have run an older shape); in a
decode, the one with the longest context (it sets the KV span), else the step's last request.
"""
from __future__ import annotations

import dataclasses

from tpu_engine.events import StepRecord

from ..table import Table

# A compile on TPU takes seconds (a large model's prefill graph: tens of seconds), all of it in
# the step that compiles, so in the TTFT or TPOT of every request in it: the p99.
TPU_NOTE = "on TPU a compile takes seconds, all of it in this step, so in the p99 latency of every request in it"


@dataclasses.dataclass(frozen=True)
class CompileRow:
    step: int
    phase: str
    compiles: int
    compile_s: float | None
    tokens_bucket: int      # prefill: tokens compiled; decode: slots
    sequences: int | None   # prefill: prompt rows compiled; decode: slots
    kv_span: int
    sampling: str
    real_tokens: int
    request: str            # the request that brought the new shape
    requests: str           # every request in the step
    avoid: str              # the warm-up that would have compiled it beforehand


def _cause(r: StepRecord) -> str:
    if not r.request_ids:
        return ""
    if r.phase == "prefill" and r.arrivals:
        return r.request_ids[max(range(len(r.arrivals)), key=lambda i: r.arrivals[i])]
    if r.phase == "decode" and r.request_kv:
        return r.request_ids[max(range(len(r.request_kv)), key=lambda i: r.request_kv[i])]
    return r.request_ids[-1]


def _avoid(r: StepRecord) -> str:
    variant = f", sampler `{r.sampling}`" if r.sampling else ""
    if r.phase == "prefill":
        rows = f" x {r.seq_bucket} prompt rows" if r.seq_bucket else ""
        return (f"compile prefill {r.bucket} tokens{rows}{variant} at warm-up: warm up without `expected` (every "
                f"bucket up to max_num_batched_tokens), or expect requests of {r.num_tokens} prompt tokens")
    return (f"compile decode {r.bucket} slots x KV span {r.kv_bucket}{variant} at warm-up: warm up without "
            f"`expected` (every slot count and span up to max_model_len), or expect contexts of {r.kv_len_max}")


def compile_rows(records: list[StepRecord]) -> Table[CompileRow]:
    rows = [CompileRow(step=r.step, phase=r.phase, compiles=r.compiles, compile_s=r.compile_time_s,
                       tokens_bucket=r.bucket, sequences=r.seq_bucket, kv_span=r.kv_bucket, sampling=r.sampling,
                       real_tokens=r.num_tokens, request=_cause(r), requests=" ".join(r.request_ids), avoid=_avoid(r))
            for r in records if r.compiles]
    return Table("Steps that compiled (the shape that was new, the request that brought it)", CompileRow, rows)
