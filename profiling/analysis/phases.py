"""Which phase each step is, without our manifest; the rule used is printed and recorded.

In order: our manifest's step records; tpu-inference's batch-composition files beside the
capture (`batch_composition_stats_<time>.json`, one per profiled step, written by its phased
profiler); the names of the step's annotation or program (prefill, extend -> prefill; decode,
generate -> decode; insert); a generate loop (the part before it is prefill, its iterations
decode); else the step program's input shapes: tokens per step against sequences per step, read
from the token-id parameter of the executed HLO (one token per sequence is decode).

A step mixing prefill and decode tokens (chunked prefill, as vLLM V1 and tpu-inference
schedule) is classified as tpu-inference does (`mix_phase`), so prefill-like and decode-like
time stay apart.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import re

from ..trace import hlo

_NAMES = re.compile(r"(?<![a-z])(prefill|extend|decode|generate|insert)", re.IGNORECASE)
_PHASE_OF = {"prefill": "prefill", "extend": "prefill", "decode": "decode", "generate": "decode", "insert": "insert"}
PREFILL_HEAVY, DECODE_HEAVY, BALANCED = 0.9, 0.2, (0.4, 0.6)   # tpu-inference's thresholds


@dataclasses.dataclass(frozen=True)
class PhaseRule:
    source: str     # "manifest", "batch composition", "names", "loop", "shapes" or "none"
    text: str

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def phase_in_name(name: str) -> str | None:
    m = _NAMES.search(name)
    return _PHASE_OF[m.group(1).lower()] if m else None


def mix_phase(prefill_tokens: int, total_tokens: int) -> str:
    """tpu-inference's classes of a step by its share of prefill tokens: prefill_only (all),
    prefill_heavy (>= 0.9), balanced (0.4-0.6), decode_heavy (<= 0.2), decode_only (none),
    ambiguous (the rest)."""
    if total_tokens <= 0:
        return "ambiguous"
    r = prefill_tokens / total_tokens
    if r == 1.0:
        return "prefill_only"
    if r == 0.0:
        return "decode_only"
    if r >= PREFILL_HEAVY:
        return "prefill_heavy"
    if r <= DECODE_HEAVY:
        return "decode_heavy"
    return "balanced" if BALANCED[0] <= r <= BALANCED[1] else "ambiguous"


@dataclasses.dataclass(frozen=True)
class Composition:
    """One `batch_composition_stats_*.json` record."""
    batch_id: int
    total_tokens: int
    prefill_tokens: int
    decode_tokens: int
    num_reqs: int

    @property
    def phase(self) -> str:
        return mix_phase(self.prefill_tokens, self.total_tokens)


def batch_compositions(run_dir: str) -> list[Composition]:
    """tpu-inference's batch-composition records for a run: in the run dir, or in the phase
    dir's `dp_rank_*/` folders its phased profiler writes (`<phase>/plugins/profile/<time>/`
    holds the capture). Records that do not parse are skipped."""
    phase_dir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(run_dir))))
    paths = sorted(glob.glob(os.path.join(run_dir, "batch_composition_stats_*.json")) or
                   glob.glob(os.path.join(phase_dir, "dp_rank_*", "batch_composition_stats_*.json")))
    out = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                d = json.loads(f.read().strip().splitlines()[0])
            out.append(Composition(int(d["batch_id"]), int(d["total_num_scheduled_tokens"]),
                                   int(d["num_prefill_tokens"]), int(d["num_decode_tokens"]), int(d["num_reqs"])))
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            continue
    return out


TRAINING_NAMES = ("train_step", "jit_train", "loss_fn", "_grad", "jit_grad")


def backward_program(modules: dict[str, hlo.Module]) -> str:
    """The program that runs a backward pass (a training step: JAX names its ops
    `transpose(jvp(...))`), '' if none does."""
    for key, module in modules.items():
        if any(n in key for n in TRAINING_NAMES) or any(
                "transpose(jvp(" in ins.op_name for ins in module.instructions.values()):
            return key.rsplit("(", 1)[0]
    return ""


def tokens_per_sequence(module: hlo.Module) -> tuple[int, int] | None:
    """(tokens, sequences) a step program processes, from its token-id input: the first
    integer parameter of rank 2 ([sequences, tokens each]); None when it has none."""
    for etype, dims in module.parameters:
        if etype in (hlo.S32, hlo.S64) and len(dims) == 2 and min(dims) >= 1:
            return dims[0] * dims[1], dims[0]
    return None


def assign(steps, modules: dict[str, hlo.Module], run_dir: str, records: dict) -> PhaseRule:
    """Set each step's phase and phase rule (steps: analysis.steps.Found, in order)."""
    if records and any(s.step in records for s in steps if s.source == "annotation"):
        for s in steps:
            if s.step in records:
                s.phase, s.phase_rule = records[s.step].phase, "the engine's manifest"
        return PhaseRule("manifest", "phases: from the engine's manifest (manifest.jsonl)")
    comps = batch_compositions(run_dir)
    if comps and len(comps) == len(steps):
        for s, c in zip(steps, comps):
            s.phase = c.phase
            s.phase_rule = f"batch {c.batch_id}: {c.prefill_tokens} prefill of {c.total_tokens} tokens"
        return PhaseRule("batch composition", "phases: from tpu-inference's batch-composition files, by the share "
                                              "of prefill tokens (prefill_only 1, prefill_heavy >= 0.9, balanced "
                                              "0.4-0.6, decode_heavy <= 0.2, decode_only 0)")
    named = [s for s in steps if s.phase != "all"]
    for s in named:
        s.phase_rule = s.phase_rule or f"named `{s.name}`"
    if named and len(named) == len(steps):
        how = "loop" if any(s.source == "loop" for s in steps) else "names"
        text = "names of the steps' programs and annotations" + (
            "; a generate loop's iterations are decode, the part before it prefill" if how == "loop" else "")
        return PhaseRule(how, f"phases: from the {text}")
    if not any(s.runs for s in steps) and not steps:
        return PhaseRule("none", "phases: none (no XLA program run read from the capture): one phase, `all`")
    train = backward_program(modules)
    if train:
        return PhaseRule("none", f"phases: none: a training capture (`{train}` runs a backward pass): one phase, "
                                 f"`all`")
    return _by_shapes(steps, modules) or PhaseRule(
        "none", "phases: unknown (no manifest, no batch-composition file, no phase in the step names, no token-id "
                "input in the step program): one phase, `all`")


def _by_shapes(steps, modules: dict[str, hlo.Module]) -> PhaseRule | None:
    by_name = {}
    for key, m in modules.items():
        by_name.setdefault(key.rsplit("(", 1)[0], m)
    decided = 0
    for s in steps:
        if s.phase != "all" or not s.runs:
            continue
        module = by_name.get(s.runs[0].module)
        shape = tokens_per_sequence(module) if module else None
        if shape is None:
            continue
        tokens, seqs = shape
        s.phase = "decode" if tokens == seqs else "prefill"
        s.phase_rule = f"`{s.runs[0].module}` takes {seqs} sequence(s) x {tokens // seqs} token(s)"
        decided += 1
    if not decided:
        return None
    return PhaseRule("shapes", "phases: from the step program's token-id input shape (one token per sequence: "
                               "decode; more: prefill)")
