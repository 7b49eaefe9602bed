"""Thread-pool attribution on CPU: the time XLA:CPU's pool threads spend on an op's tasks
belongs to that op (and so to its scope and layer).

The rule (README, "Thread-pool attribution"):
  * a pool task belongs to the op that was running, innermost, on the thread that scheduled
    it (its `Record` falls inside that op's event); a task scheduled from inside another pool
    task belongs to that task's owner (Eigen splits a range from inside its tasks);
  * a task that runs op events itself belongs to no op: it is the executor continuing the
    program on a pool thread (often scheduled by the last task of an async op, on completion),
    and so is a task scheduled outside any op;
  * on its worker, a task's time minus the op events on that worker is its owner's pool time
    (a task that continues the program runs op events of its own, which are theirs);
  * an op's CPU time is its self time on its own thread plus its pool time; its wall time is
    its share of every instant at which it runs on some thread: an instant shared by n ops is
    split n ways, so wall times add up to the time during which at least one op ran.
"""
from __future__ import annotations

import bisect
import collections
import dataclasses

from .host import PoolTask


@dataclasses.dataclass(frozen=True)
class PoolSummary:
    tasks: int
    attributed_ns: float     # pool time given to ops
    unattributed_ns: float   # pool time of tasks no op scheduled, outside op events


class _Timeline:
    """The ops of one thread, ordered, each with its enclosing op."""

    def __init__(self, ops):
        self.ops = sorted(ops, key=lambda o: (o.start_ns, -o.duration_ns))
        self.starts = [o.start_ns for o in self.ops]
        self.parent, self.children = {}, collections.defaultdict(list)
        stack = []
        for o in self.ops:
            while stack and stack[-1].end_ns <= o.start_ns:
                stack.pop()
            if stack and o.end_ns <= stack[-1].end_ns + 1:  # nested (1 ns of tracer rounding)
                self.parent[id(o)] = stack[-1]
                self.children[id(stack[-1])].append(o)
            stack.append(o)
        self.top = [o for o in self.ops if id(o) not in self.parent]
        self.top_starts = [o.start_ns for o in self.top]

    def innermost(self, t: float):
        i = bisect.bisect_right(self.starts, t) - 1
        op = self.ops[i] if i >= 0 else None
        while op is not None and op.end_ns < t:
            op = self.parent.get(id(op))
        return op

    def has_ops(self, a: float, b: float) -> bool:
        i = bisect.bisect_left(self.starts, a)
        return i < len(self.starts) and self.starts[i] < b

    def uncovered(self, a: float, b: float) -> list[tuple[float, float]]:
        """[a, b) minus the op events on this thread."""
        out, cur = [], a
        i = max(0, bisect.bisect_right(self.top_starts, a) - 1)
        for o in self.top[i:]:
            if o.start_ns >= b:
                break
            if o.end_ns > cur:
                if o.start_ns > cur:
                    out.append((cur, o.start_ns))
                cur = max(cur, o.end_ns)
        if cur < b:
            out.append((cur, b))
        return out


def _owners(lines: dict[str, _Timeline], tasks: list[PoolTask]) -> dict[int, object]:
    """flow -> owning op (or None), resolving tasks in the order they were scheduled, so a
    task scheduled inside another task finds that task's owner already known."""
    by_line = collections.defaultdict(list)
    for t in tasks:
        by_line[t.timeline].append(t)
    for ts in by_line.values():
        ts.sort(key=lambda t: t.start_ns)
    starts = {k: [t.start_ns for t in ts] for k, ts in by_line.items()}
    owner: dict[int, object] = {}
    for task in sorted(tasks, key=lambda t: t.scheduled_ns):
        line, at = lines.get(task.scheduled_on), task.scheduled_ns
        op = line.innermost(at) if line else None
        if op is None and task.scheduled_on in starts:
            i = bisect.bisect_right(starts[task.scheduled_on], at) - 1
            host = by_line[task.scheduled_on][i] if i >= 0 else None
            if host is not None and host.end_ns >= at and host.flow != task.flow:
                op = owner.get(host.flow)
        runs = lines.get(task.timeline)
        owner[task.flow] = None if runs is not None and runs.has_ops(task.start_ns, task.end_ns) else op
    return owner


def _segments(lines: dict[str, _Timeline], tasks: list[PoolTask], owner) -> list[tuple[float, float, object, bool]]:
    """(start, end, op, on the pool) pieces of time during which one thread worked for `op`."""
    segs = []
    for line in lines.values():
        for o in line.ops:
            kids = line.children.get(id(o), [])
            cur = o.start_ns
            for k in kids:
                if k.start_ns > cur:
                    segs.append((cur, k.start_ns, o, False))
                cur = max(cur, k.end_ns)
            if o.end_ns > cur:
                segs.append((cur, o.end_ns, o, False))
    for t in tasks:
        op = owner.get(t.flow)
        if op is None:
            continue
        line = lines.get(t.timeline)
        pieces = line.uncovered(t.start_ns, t.end_ns) if line else [(t.start_ns, t.end_ns)]
        segs += [(a, b, op, True) for a, b in pieces]
    return segs


def _wall_shares(segs) -> dict[int, float]:
    """Each instant split evenly among the distinct ops running then."""
    points = sorted([(a, 1, op) for a, _, op, _ in segs] + [(b, -1, op) for _, b, op, _ in segs],
                    key=lambda p: (p[0], p[1]))
    active, share, last = collections.Counter(), collections.defaultdict(float), None
    for t, kind, op in points:
        if last is not None and t > last and active:
            each = (t - last) / len(active)
            for k in active:
                share[k] += each
        key = id(op)
        active[key] += kind
        if active[key] <= 0:
            del active[key]
        last = t
    return share


def attribute(ops, tasks: list[PoolTask]) -> PoolSummary:
    """Give each pool task to its op; set every op's `pool_ns`, `cpu_ns` and `self_ns` (its
    wall time under the rule above)."""
    by_line = collections.defaultdict(list)
    for o in ops:
        by_line[o.timeline].append(o)
    lines = {k: _Timeline(v) for k, v in by_line.items()}
    owner = _owners(lines, tasks)
    segs = _segments(lines, tasks, owner)
    cpu, pool, spans = collections.defaultdict(float), collections.defaultdict(float), collections.defaultdict(list)
    for a, b, op, on_pool in segs:
        cpu[id(op)] += b - a
        if on_pool:
            pool[id(op)] += b - a
            spans[id(op)].append((a, b))
    wall = _wall_shares(segs)
    for o in ops:
        o.self_ns, o.cpu_ns, o.pool_ns = wall.get(id(o), 0.0), cpu.get(id(o), 0.0), pool.get(id(o), 0.0)
        o.pool_spans = spans.get(id(o)) or None
    unowned = 0.0
    for t in tasks:
        if owner.get(t.flow) is None:
            line = lines.get(t.timeline)
            unowned += sum(b - a for a, b in (line.uncovered(t.start_ns, t.end_ns) if line
                                              else [(t.start_ns, t.end_ns)]))
    return PoolSummary(len(tasks), sum(pool.values()), unowned)
