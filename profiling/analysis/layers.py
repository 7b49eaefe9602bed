"""Which decoder layer each op belongs to, whatever the model calls its layers.

In order of trust:
  * scope: a path component that numbers a layer: ours `model.layers.3`, Flax/NNX `layers_3`,
    `layers/3`, `layer_3`, GPT-style `h.3`, `blocks.3`;
  * scan: a `while` loop whose body runs one layer per iteration (MaxText's `scan_layers`,
    Flax's `nn.scan`): iteration k is layer k, where the trace has the iterations;
  * inferred: no scope numbers the layers, but N decoder layers run the same ops N times, so
    the ops that recur N times in a program's run give the layers (`layer_bounds`), numbered in
    order and marked `(inferred)`;
  * none: ops keep their scope (torchax/vLLM class scopes such as `QKVParallelLinear` still
    make a sub-module table).
"""
from __future__ import annotations

import collections
import dataclasses
import re
import statistics

from ..trace.categories import UNSCOPED
from ..trace.ops import Op

# A component that numbers a layer: `layers.3`, `layers_3`, `layer_3`, `h.3`, `blocks.3`, ...
_INDEXED = re.compile(r"(?:^|\.)((?:\w*?(?:layers?|blocks?)|h)[._](\d+))(?=\.|$)", re.IGNORECASE)
INFERRED = " (inferred)"
MIN_BLOCK = 3      # ops that recur once per layer, at least (fewer is a loop of elementwise ops, not a layer)
MAX_SEQUENCE = 200000  # ops of one program run searched for layers


@dataclasses.dataclass(frozen=True)
class LayerRule:
    how: str          # "scope", "scan", "inferred" or "none"
    layers: int       # decoder layers found
    text: str         # one line for the output

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def scoped_layer(scope: str) -> tuple[str, str, int] | None:
    """(layer key, sub-module, index) from a scope that numbers its layer, else None."""
    if scope == UNSCOPED:
        return None
    m = _INDEXED.search(scope)
    if not m:
        return None
    key = scope[:m.end(1)]
    return key, scope[m.end(1) + 1:], int(m.group(2))


def token(o: Op) -> tuple:
    """What an op does, independent of its instruction number: the same op in every layer."""
    return o.scope, o.opcode, o.category, re.sub(r"[.\d]+$", "", o.name)


def layer_bounds(tokens: list, cats: list[str]) -> list[tuple[int, int]]:
    """[start, end) of each decoder layer in one run's op sequence (tokens: `token(op)`, in
    time order; cats: the ops' categories), or [] when no layers repeat in it.

    N layers run the same ops N times, so many ops occur exactly N times, the k-th time in
    layer k (or m*N times, m in each layer); N is the count most ops share (the first layer's
    extra set-up, the embedding and the head occur once; a final norm like the layers' norms
    occurs N+1 times). Layer k runs from just after layer k-1's last recurring op to just after
    its own: robust to a first or last layer whose ops differ a little and to ops that XLA runs
    concurrently in either order. It takes evidence: the recurring ops must be a good share of
    the layers' ops, every layer must hold a matmul or attention op, and layers must be alike
    in length; else [] (a loop of elementwise ops, one layer, or no model)."""
    where: dict = collections.defaultdict(list)
    for i, t in enumerate(tokens):
        where[t].append(i)
    votes = collections.Counter(len(p) for p in where.values() if len(p) >= 2)
    if not votes:
        return []
    n = max(votes, key=lambda c: (votes[c], c))
    per_layer = [[p[k * (len(p) // n):(k + 1) * (len(p) // n)] for k in range(n)]
                 for p in where.values() if len(p) % n == 0]
    spacing = statistics.median(statistics.median(b[0] - a[0] for a, b in zip(r, r[1:])) for r in per_layer)
    per_layer = [r for r in per_layer if min(b[0] - a[0] for a, b in zip(r, r[1:])) >= 0.5 * spacing]
    if sum(len(r[0]) == 1 for r in per_layer) < MIN_BLOCK:
        return []
    last = [max(r[k][-1] for r in per_layer) for k in range(n)]
    first0 = min(r[0][0] for r in per_layer)
    while first0 > 0 and cats[first0 - 1] == "norm":  # a pre-norm layer opens with its norm
        first0 -= 1
    starts = [first0] + [x + 1 for x in last[:-1]]
    bounds = list(zip(starts, [x + 1 for x in last]))
    lengths = [b - a for a, b in bounds]
    recurring = sum(len(r[0]) for r in per_layer) * n
    # two "layers" is the weakest claim (any pair of ops recurs): it needs more of the ops
    if (recurring < (0.5 if n == 2 else 0.3) * sum(lengths) or max(lengths) > 3 * max(1, min(lengths))
            or not all(any(c in ("matmul", "attention") for c in cats[a:b]) for a, b in bounds)):
        return []
    return bounds


def iterations(ops: list[Op], loop: str) -> list[list[Op]]:
    """The ops of one run of `loop`, split into its iterations: an iteration ends when an
    instruction of the loop's own body runs again. Ops of loops nested inside go with the
    iteration they run in."""
    out: list[list[Op]] = []
    seen: set[str] = set()
    for o in sorted(ops, key=lambda o: o.start_ns):
        if not o.loops or o.loops[0] != loop:
            continue
        if len(o.loops) == 1:
            if o.name in seen or not out:
                out.append([])
                seen = set()
            seen.add(o.name)
        if out:
            out[-1].append(o)
    return out


def layers_in(ops: list[Op]) -> int:
    """How many decoder layers a sequence of ops runs: by scope index, else by repetition."""
    indexed = {s[2] for s in map(scoped_layer, {o.scope for o in ops}) if s}
    if indexed:
        return len(indexed)
    seq = sorted(ops, key=lambda o: o.start_ns)[:MAX_SEQUENCE]
    return len(layer_bounds([token(o) for o in seq], [o.category for o in seq]))


def assign(ops: list[Op], runs_of: dict[str, list[list[Op]]], infer: bool = True,
           trip_counts: dict[tuple[str, str], int] | None = None) -> LayerRule:
    """Set every op's `layer_key` and `layer_part`; `runs_of` maps a program to the op lists of
    its runs (one per step and device), where repetition and loops are looked for."""
    scoped = 0
    for o in ops:
        found = scoped_layer(o.scope)
        if found:
            o.layer_key, o.layer_part, _ = found
            scoped += 1
    if scoped:
        n = len({o.layer_key for o in ops if o.layer_key})
        return LayerRule("scope", n, f"layers from scope names ({n} layers, e.g. {_example(ops)})")
    if not infer:
        return LayerRule("none", 0, "no layers: a training step's forward and backward passes are not "
                                    "decoder layers; ops are shown by scope")
    rule = _scanned(runs_of, trip_counts or {})
    if rule is None:
        rule = _inferred(runs_of)
    return rule or LayerRule("none", 0, "no layers: no scope numbers them, no loop runs them and no block of ops "
                                        "repeats; ops are shown by scope")


def _example(ops: list[Op]) -> str:
    return next(o.layer_key for o in ops if o.layer_key)


def _scanned(runs_of: dict[str, list[list[Op]]], trips: dict[tuple[str, str], int]) -> LayerRule | None:
    """Layers as iterations of a loop whose body is one layer (it repeats nothing inside).
    Where the trace holds the body once (no op events per iteration), the body is shown once
    and XLA's trip count says how many layers share it."""
    counts, once = [], []
    for module, runs in runs_of.items():
        for n, run in enumerate(sorted(runs, key=len, reverse=True)):
            loops = collections.Counter(o.loops[0] for o in run if o.loops)
            if not loops:
                continue
            loop = loops.most_common(1)[0][0]
            its = iterations(run, loop)
            if not its or layers_in(its[0]) > 1:
                if n == 0:
                    break  # the program's longest run loops over something else: so do the others
                continue
            base = _common_scope(its[0]) or "layers"
            trips_of = trips.get((module, loop), 0)
            if len(its) == 1 and trips_of >= 2 and any(o.category in ("matmul", "attention") for o in its[0]):
                for o in its[0]:
                    o.layer_key, o.layer_part = f"{base} (scanned x{trips_of})", _rest(o.scope, base)
                once.append(trips_of)
                continue
            if len(its) < 2:
                continue
            for k, it in enumerate(its):
                for o in it:
                    o.layer_key, o.layer_part = f"{base}.{k} (scan)", _rest(o.scope, base)
            counts.append(len(its))
    if counts:
        n = max(counts)
        return LayerRule("scan", n, f"layers from a scanned loop: each of its {n} iterations runs one layer")
    if once:
        n = max(once)
        return LayerRule("scan", n, f"layers scanned: one loop body runs all {n} layers and the trace holds it "
                                    f"once; its row is all layers together (a layer's share: 1/{n} of it)")
    return None


def _rest(scope: str, base: str) -> str:
    return scope[len(base) + 1:] if scope.startswith(base + ".") else scope


def _common_scope(ops: list[Op]) -> str:
    """The scope a loop body's modules share (`Decoder.layers`), leaving out the scopes that
    only hold the loop's own bookkeeping (a scope others extend)."""
    names = {o.scope for o in ops if o.scope != UNSCOPED}
    scopes = [n.split(".") for n in names if not any(m.startswith(n + ".") for m in names)]
    common = []
    for level in zip(*scopes) if scopes else ():
        if len(set(level)) > 1:
            break
        common.append(level[0])
    return ".".join(common)


def _inferred(runs_of: dict[str, list[list[Op]]]) -> LayerRule | None:
    """Layers from the repeating block of each program's longest run, numbered in order, then
    given to the same instructions in every run of that program."""
    best_n, named = 0, 0
    for module, runs in runs_of.items():
        run = max(runs, key=len)
        seq = sorted(run, key=lambda o: o.start_ns)[:MAX_SEQUENCE]
        bounds = layer_bounds([token(o) for o in seq], [o.category for o in seq])
        if not bounds:
            continue
        layer_of = {}
        for i, (a, b) in enumerate(bounds):
            for o in seq[a:b]:
                layer_of.setdefault(o.name, i)
        for r in runs:
            for o in r:
                if o.name in layer_of:
                    o.layer_key = f"layers.{layer_of[o.name]}{INFERRED}"
                    o.layer_part = o.source if o.scope == UNSCOPED and o.source else o.scope
                    named += 1
        best_n = max(best_n, len(bounds))
    if not named:
        return None
    return LayerRule("inferred", best_n, f"layers inferred: a block of ops repeats {best_n} times in a step "
                                         f"(no scope numbers the layers), marked{INFERRED}")
