"""How much of a phase the op tables explain (coverage), and the layer that costs far more
than its identical siblings (outliers), with the op that makes the difference."""
from __future__ import annotations

import collections
import dataclasses
import re
import statistics

from ..trace.categories import UNSCOPED
from .analysis import Analysis
from .breakdown import breakdowns

_LAYER_N = re.compile(r"^model\.layers\.(\d+)$")
OUTLIER_RATIO = 1.10  # identical layers are expected within ±10% of their median


@dataclasses.dataclass(frozen=True)
class Coverage:
    phase: str
    program_ms: float    # time an XLA program ran, summed over the phase's steps
    op_ms: float         # op time in the tables (on CPU: wall time with the thread pool's work)
    cpu_ms: float        # the ops' CPU time on every thread
    pool_ms: float       # of which on XLA:CPU's thread pool
    unscoped_ms: float
    inherited_ms: float  # op time whose scope came from the HLO graph
    stall_ms: float = 0.0  # program time in stretches of 1 ms or more with no op running anywhere

    @property
    def pct(self) -> float | None:
        return 100 * self.op_ms / self.program_ms if self.program_ms else None

    @property
    def pct_less_stalls(self) -> float | None:
        """Coverage of the time the program was not stalled (on a quiet machine, the same)."""
        run = self.program_ms - self.stall_ms
        return 100 * self.op_ms / run if run > 0 else None


def ms(values) -> float:
    return sum(values) / 1e6


def coverage(a: Analysis, phase: str) -> Coverage:
    """Program time is counted per device (the breakdown's step time less its host time), so
    that a capture of several devices compares their summed op time with their summed runs."""
    steps = a.phase_steps(phase)
    ops = [o for s in steps for o in s.ops]
    parts = breakdowns(a, phase)
    return Coverage(phase, ms(b.step_ns - b.host_ns for b in parts), ms(o.self_ns for o in ops),
                    ms(o.cpu_time_ns for o in ops), ms(o.pool_ns for o in ops),
                    ms(o.self_ns for o in ops if o.scope == UNSCOPED),
                    ms(o.self_ns for o in ops if o.inherited), ms(b.stall_ns for b in parts))


@dataclasses.dataclass(frozen=True)
class LayerOutlier:
    phase: str
    layer: str
    layer_ms: float
    median_ms: float     # median of the layers
    op: str              # the op that makes the difference (its name in this layer)
    op_ms: float
    sibling_op_ms: float  # median time of the same op in the other layers
    reason: str


def _op_key(o, layer: str, seen: collections.Counter) -> tuple:
    """The same op in every layer: sub-module, opcode, and its order among those."""
    base = (o.scope[len(layer):], o.opcode, o.category)
    seen[base] += 1
    return base + (seen[base],)


def _reason(layer_index: int, first: int, cpu: float, sibling_cpu: float, same_shape: bool) -> str:
    if not same_shape:
        return "a different fusion: most other layers have no such op"
    if sibling_cpu and cpu < OUTLIER_RATIO * sibling_cpu:
        return "the op took no more CPU time than in the other layers, only longer: it waited for a CPU " \
               "(a busy machine), an artefact of capture"
    if layer_index == first:
        # measured on CPU: each run writes its temp buffers into fresh pages (65 MiB of minor
        # faults per 1024-token prefill of the default model); the first layer touches them first
        return "more CPU time in the first layer of the step: first touch of memory (the run's buffers " \
               "are fresh pages, which the later layers reuse)"
    return "more CPU time in the same op, no cause found in the trace (compare a run on a quiet machine)"


def layer_outliers(a: Analysis, phase: str) -> list[LayerOutlier]:
    """Layers over OUTLIER_RATIO times the median of the decoder layers."""
    per_layer, keyed = collections.defaultdict(float), collections.defaultdict(dict)
    for step in a.phase_steps(phase):
        seen = collections.defaultdict(collections.Counter)
        for o in sorted(step.ops, key=lambda o: o.start_ns):
            if not _LAYER_N.match(o.layer):
                continue
            per_layer[o.layer] += o.self_ns
            k = _op_key(o, o.layer, seen[o.layer])
            wall, cpu = keyed[o.layer].get(k, (0.0, 0.0, o.name))[:2]
            keyed[o.layer][k] = (wall + o.self_ns, cpu + o.cpu_time_ns, o.name)
    if len(per_layer) < 3:
        return []
    median = statistics.median(per_layer.values())
    first = min(int(_LAYER_N.match(n).group(1)) for n in per_layer)
    out = []
    for layer, t in sorted(per_layer.items(), key=lambda kv: int(kv[0].split(".")[2])):
        if t <= OUTLIER_RATIO * median:
            continue
        others = [keyed[n] for n in per_layer if n != layer]
        sibling_wall = {k: statistics.median(o.get(k, (0.0,))[0] for o in others) for k in keyed[layer]}
        k = max(keyed[layer], key=lambda k: keyed[layer][k][0] - sibling_wall[k])
        wall, cpu, name = keyed[layer][k]
        sib_wall = sibling_wall[k]
        sib_cpu = statistics.median(o.get(k, (0.0, 0.0))[1] for o in others)
        same = 2 * sum(k in o for o in others) >= len(others)
        out.append(LayerOutlier(phase, layer, t / 1e6, median / 1e6, name, wall / 1e6, sib_wall / 1e6,
                                _reason(int(layer.split(".")[2]), first, cpu, sib_cpu, same)))
    return out
