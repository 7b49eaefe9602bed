"""How many events per second the service profiler's collector sustains, and what one
instrumented call costs, measured side by side in one process:

    python scripts/benchmark_collector.py --calls 200000 --threads 4 --repeat 3

A trivial method is called `--calls` times per round on `--threads` threads in three modes:
not instrumented, instrumented with collection off, and instrumented with collection on (a
timer with two attributes, the default symbols' shape). Collection-on rounds also wait for the
writer to put every event on disk and count the lines, so "sustained" includes writing.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time


from profiling.service.collector import Collector
from profiling.service.expr import compile_expr
from profiling.service.patching import instrument
from profiling.service.symbols import Symbol
from tpu_engine.cli import run_cli


class Target:
    def work(self, items: list, scale: int = 1) -> int:
        return len(items) * scale


def _round(calls: int, threads: int) -> float:
    """Seconds for `threads` threads to make `calls` calls each."""
    t, items = Target(), [1, 2, 3]
    barrier = threading.Barrier(threads + 1)

    def run():
        barrier.wait()
        work = t.work
        for _ in range(calls):
            work(items, 2)
    pool = [threading.Thread(target=run) for _ in range(threads)]
    for p in pool:
        p.start()
    barrier.wait()
    start = time.perf_counter()
    for p in pool:
        p.join()
    return time.perf_counter() - start


def _count_spans(path: str) -> int:
    with open(path) as f:
        return sum(1 for line in f if json.loads(line)["type"] == "span")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=200_000, help="calls per thread per round")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    if args.calls < 1 or args.threads < 1 or args.repeat < 1:
        raise ValueError("--calls, --threads and --repeat must be at least 1.")
    sym = Symbol(f"{__name__}:Target.work", "work", "Bench",
                 attributes=[(n, e, compile_expr(e)) for n, e in (("items", "items | len"), ("out", "return"))])
    total = args.calls * args.threads
    times = {"plain": [], "off": [], "on": []}
    written, flush_s = [], []
    with tempfile.TemporaryDirectory() as tmp:
        collector = Collector()
        for _ in range(args.repeat):       # the modes alternate within each repeat
            times["plain"].append(_round(args.calls, args.threads))
            undo, problems = instrument([sym], collector)
            assert not problems, problems
            times["off"].append(_round(args.calls, args.threads))
            before = _count_spans(collector.path) if collector.path else 0
            collector.start(tmp)
            t = time.perf_counter()
            elapsed = _round(args.calls, args.threads)
            collector.stop()               # flushes everything recorded
            times["on"].append(elapsed)
            flush_s.append(time.perf_counter() - t - elapsed)
            written.append(_count_spans(collector.path) - before)
            for u in undo:
                u()
        collector.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{total:,} calls per round ({args.threads} thread(s) x {args.calls:,}), median of {args.repeat} rounds")
    for k, label in (("plain", "not instrumented"), ("off", "instrumented, collection off"),
                     ("on", "instrumented, collection on")):
        print(f"  {label:30s} {med[k] / total * 1e6:8.3f} us/call  {total / med[k]:12,.0f} calls/s")
    print(f"  cost of a recorded event: {(med['on'] - med['plain']) / total * 1e6:.3f} us; "
          f"of a disabled wrapper: {(med['off'] - med['plain']) / total * 1e6:.3f} us")
    lost = [total - w for w in written]
    sustained = statistics.median(total / (t + f) for t, f in zip(times["on"], flush_s))
    print(f"  events written per round: {written} (lost: {sum(lost)}); sustained incl. writing: "
          f"{sustained:,.0f} events/s")


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
