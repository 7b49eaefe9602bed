"""Compare two captures: per phase, per layer and per op, deltas and ratios sorted by impact
(the absolute change in time, largest first). What one run lacks (a phase, a layer, an op) has
no value there (None: "absent" in text, empty in CSV, null in JSON), not a time of 0; a ratio
over a time of 0 is None too."""
from __future__ import annotations

import collections
import dataclasses
import re

from ..table import Table
from .analysis import Analysis
from .layers import scoped_layer
from .tables import phase_summary


@dataclasses.dataclass(frozen=True)
class DeltaRow:
    """A phase, layer or op in run A against run B; None where a run lacks it (or a ratio over 0)."""
    name: str
    a_ms: float | None
    b_ms: float | None
    delta_ms: float | None
    ratio: float | None

    @property
    def absent(self) -> bool:
        """One of the runs lacks this row's phase, layer or op."""
        return self.a_ms is None or self.b_ms is None


@dataclasses.dataclass(frozen=True)
class PhaseDeltaRow(DeltaRow):
    a_steps: int = 0
    b_steps: int = 0


def _delta_row(key: str, a: float | None, b: float | None, row_type=DeltaRow, **extra) -> DeltaRow:
    both = a is not None and b is not None
    return row_type(name=key, a_ms=a, b_ms=b, delta_ms=b - a if both else None,
                    ratio=b / a if both and a else None, **extra)


def _impact(r: DeltaRow) -> float:
    """The change in time; for a row one run lacks, the time the other run has."""
    if r.delta_ms is not None:
        return abs(r.delta_ms)
    return abs(r.a_ms if r.a_ms is not None else r.b_ms or 0.0)


def _sorted(rows):
    return sorted(rows, key=lambda r: -_impact(r))


def phases(a: Analysis, b: Analysis) -> Table[PhaseDeltaRow]:
    ta = {r.phase: r for r in phase_summary(a).rows}
    tb = {r.phase: r for r in phase_summary(b).rows}
    rows = [_delta_row(p, ta[p].mean_ms if p in ta else None, tb[p].mean_ms if p in tb else None, PhaseDeltaRow,
                       a_steps=ta[p].steps if p in ta else 0, b_steps=tb[p].steps if p in tb else 0)
            for p in list(dict.fromkeys(list(ta) + list(tb)))]
    return Table("phases: mean step time (ms), B vs A", PhaseDeltaRow, _sorted(rows))


_LAYER_INDEX = re.compile(r"^\w+\.(\d+) \(")  # `layers.3 (inferred)`, `layers.3 (scan)`
ALL_STEPS = "all steps"  # two captures with no phase in common are compared step for step


def _steps(analysis: Analysis, phase: str):
    return analysis.steps if phase == ALL_STEPS else analysis.phase_steps(phase)


def _per_step(analysis: Analysis, phase: str, key) -> dict[str, float]:
    steps = _steps(analysis, phase)
    out = collections.Counter()
    for s in steps:
        for o in s.ops:
            out[key(o)] += o.self_ns / 1e6 / max(1, len(steps))
    return out


def _table(a: Analysis, b: Analysis, phase: str, key, title: str) -> Table[DeltaRow]:
    ca, cb = _per_step(a, phase, key), _per_step(b, phase, key)
    rows = [_delta_row(k, ca.get(k), cb.get(k)) for k in dict.fromkeys(list(ca) + list(cb))]
    return Table(f"{phase}: {title} per step (ms), B vs A", DeltaRow, _sorted(rows))


def _layer_names(a: Analysis) -> frozenset[str]:
    """How a capture names its layers: their keys without the number (`model.layers.`)."""
    if "layer_names" not in a.derived:
        a.derived["layer_names"] = frozenset(re.sub(r"\d+.*$", "", o.layer) for o in a.ops
                                             if o.layer_key or scoped_layer(o.layer))
    return a.derived["layer_names"]


def cross_engine(a: Analysis, b: Analysis) -> bool:
    """Captures whose engines name layers differently (ours `model.layers.3`, Flax
    `layers_3`, inferred `layers.3 (inferred)`): layers and ops are matched by layer number
    and category."""
    inferred = any(n.endswith(".") and n.startswith("layers.") for n in _layer_names(a) | _layer_names(b)) and \
        a.rules is not None and b.rules is not None and "inferred" in (a.rules.layers.how, b.rules.layers.how)
    na, nb = _layer_names(a), _layer_names(b)
    return bool(na and nb and na != nb) or inferred or (a.record is None) != (b.record is None)


def layer_label(o) -> str:
    """`layer 3` for an op in a decoder layer, however the model names it (`model.layers.3`,
    `h.3`, `layers.3 (inferred)`); else its layer or scope as is."""
    found = scoped_layer(o.layer)
    if found:
        return f"layer {found[2]}"
    m = _LAYER_INDEX.match(o.layer_key) if o.layer_key else None
    return f"layer {m.group(1)}" if m else o.layer


def layers(a: Analysis, b: Analysis, phase: str) -> Table:
    if cross_engine(a, b):
        return _table(a, b, phase, layer_label, "time by layer (by layer number)")
    return _table(a, b, phase, lambda o: o.layer, "time by layer")


def op_key(o) -> str:
    """Ops are matched across runs by what they do and where, not by HLO instruction numbers
    (which change between compilations): scope, framework op (or opcode) and category."""
    return f"{o.scope} {o.framework_op or o.opcode} [{o.category}]"


def backend_of(a: Analysis) -> str | None:
    return a.record.backend if a.record else None


def op_groups(a: Analysis, b: Analysis, phase: str) -> Table:
    if cross_engine(a, b):
        return _table(a, b, phase, lambda o: f"{layer_label(o)} [{o.category}]", "time by op (layer, category)")
    if backend_of(a) != backend_of(b):
        # torch_xla names aten ops, JAX its primitives (aten__mm vs dot_general): across
        # backends, ops match by where they run and what kind of work they are.
        return _table(a, b, phase, lambda o: f"{o.scope} [{o.category}]", "time by op (scope, category)")
    return _table(a, b, phase, op_key, "time by op (scope, framework op)")


def compare(a: Analysis, b: Analysis) -> list[Table]:
    tables = [phases(a, b)]
    for p in [p for p in a.phases if p in b.phases] or [ALL_STEPS]:
        tables += [layers(a, b, p), op_groups(a, b, p)]
    return tables
