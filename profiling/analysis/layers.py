"""Which decoder layer each op belongs to, whatever the model calls its layers.

In order of trust:
  * scope: a path component that numbers a layer: ours `model.layers.3`, Flax/NNX `layers_3`,
    `layers/3`, `layer_3`, GPT-style `h.3`, `blocks.3`;
  * scan: a `while` loop whose body runs one layer per iteration (MaxText's `scan_layers`,
    Flax's `nn.scan`): iteration k is layer k, where the trace has the iterations;
  * inferred: no scope numbers the layers, but N decoder layers run the same ops N times, so
    the longest run of a repeating block in a program's op sequence gives the layers, numbered
    in order and marked `(inferred)`;
  * none: ops keep their scope (torchax/vLLM class scopes such as `QKVParallelLinear` still
    make a sub-module table).
"""
from __future__ import annotations

import collections
import dataclasses
import re

import numpy as np

from ..trace.categories import UNSCOPED
from ..trace.ops import Op

# A component that numbers a layer: `layers.3`, `layers_3`, `layer_3`, `h.3`, `blocks.3`, ...
_INDEXED = re.compile(r"(?:^|\.)((?:\w*?(?:layers?|blocks?)|h)[._](\d+))(?=\.|$)", re.IGNORECASE)
INFERRED = " (inferred)"
MIN_BLOCK = 3      # ops in a layer's block, at least (fewer is a loop of elementwise ops, not a layer)
MAX_SEQUENCE = 20000  # ops of one program run searched for the block


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


def repeating_block(tokens: list) -> tuple[int, int, int] | None:
    """(start, period, repeats) of the longest stretch made of one block repeated (at least 2
    times, a block of at least MIN_BLOCK ops), preferring the shortest block for the same
    stretch; None when nothing repeats."""
    n = len(tokens)
    if n < 2 * MIN_BLOCK:
        return None
    ids = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    seq = np.fromiter((ids[t] for t in tokens), dtype=np.int64, count=n)
    best = None  # (covered, -period, start, period, repeats)
    for period in range(MIN_BLOCK, n // 2 + 1):
        same = seq[period:] == seq[:-period]
        if not same.any():
            continue
        # runs of consecutive matches: a run of r matches from i is a stretch of r + period ops
        edges = np.flatnonzero(np.diff(np.concatenate(([0], same.astype(np.int8), [0]))))
        starts, ends = edges[::2], edges[1::2]
        lengths = ends - starts
        k = int(np.argmax(lengths))
        repeats = (int(lengths[k]) + period) // period
        if repeats < 2:
            continue
        covered = repeats * period
        cand = (covered, -period, int(starts[k]), period, repeats)
        if best is None or cand[:2] > best[:2]:
            best = cand
    return None if best is None else best[2:]


def _attention_like(scope: str) -> bool:
    return any("attn" in part or "attention" in part for part in scope.lower().split("."))


def _rotation(tokens: list, cats: list[str], start: int, period: int) -> int:
    """Where in the block a layer begins: at a norm that follows other work (pre-norm decoder
    layers open with one), preferring the norm before attention; else where it was found."""
    starts = [j for j in range(period) if cats[start + j] == "norm" and cats[start + j - 1] != "norm"]
    for j in starts:
        k = j
        while k < 2 * period - 1 and cats[start + k] == "norm":
            k += 1
        if _attention_like(tokens[start + k][0]):
            return j
    return starts[0] if starts else 0


def layer_bounds(tokens: list, cats: list[str]) -> list[tuple[int, int]]:
    """[start, end) of each layer in an op sequence (tokens: `token(op)`; cats: categories).
    The repeating block, turned to begin where a layer begins (`_rotation`); then every layer
    around it, including the first and last, whose ops differ a little (set-up hoisted into
    the first layer, prefetches): each layer holds one `anchor`, an op the block runs once (a
    matmul or attention op where it can), and layers are the stretches between anchors about
    one block apart. A block with no matmul or attention op is no decoder layer: []."""
    found = repeating_block(tokens)
    if not found:
        return []
    start, period, _ = found
    if not any(cats[start + i] in ("matmul", "attention") for i in range(period)):
        return []
    rot = _rotation(tokens, cats, start, period) if start + 2 * period <= len(tokens) else 0
    start += rot
    block = tokens[start:start + period]
    counts = collections.Counter(block)
    once = [i for i, t in enumerate(block) if counts[t] == 1]
    if not once:
        return []
    # Each op the block runs once gives a chain of layers; the count most of them agree on is
    # the layers' (an op of the first layer may differ, the final norm may look like a
    # layer's), and a matmul or attention op anchors it where one agrees.
    chains = [(i, _chain(tokens, block[i], start + i, period)) for i in once[:64]]
    votes = collections.Counter(len(c) for _, c in chains)
    n = max(votes, key=lambda k: (votes[k], k))
    offset, chain = max((c for c in chains if len(c[1]) == n),
                        key=lambda c: cats[start + c[0]] in ("matmul", "attention"))
    if len(chain) < 2:
        return []
    starts = [_snap(cats, p - offset, period) if cats[start] == "norm" else max(0, p - offset) for p in chain]
    ends = starts[1:] + [min(len(tokens), starts[-1] + period)]
    return list(zip(starts, ends))


def _chain(tokens: list, anchor, at: int, period: int) -> list[int]:
    """Positions of `anchor` around `at` that follow one another about a block apart."""
    positions = [i for i, t in enumerate(tokens) if t == anchor]
    k = positions.index(at)
    lo, hi = k, k
    while lo > 0 and 0.75 * period <= positions[lo] - positions[lo - 1] <= 1.4 * period:
        lo -= 1
    while hi + 1 < len(positions) and 0.75 * period <= positions[hi + 1] - positions[hi] <= 1.4 * period:
        hi += 1
    return positions[lo:hi + 1]


def _snap(cats: list[str], b: int, period: int) -> int:
    """The start of the norm run at or before `b` (within half a block): the layer's first op."""
    for i in range(max(0, b), max(-1, b - period // 2), -1):
        if cats[i] == "norm" and (i == 0 or cats[i - 1] != "norm"):
            return i
    return max(0, b)


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
        for run in runs:
            loops = collections.Counter(o.loops[0] for o in run if o.loops)
            if not loops:
                continue
            loop = loops.most_common(1)[0][0]
            its = iterations(run, loop)
            if not its or layers_in(its[0]) > 1:
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
