"""How long `summarize` takes on a capture and how much memory it needs, against the capture's size.

    python -m profiling.benchmarks.summarize profiles/plugins/profile/<run> [--repeat 3]

Each repeat runs `python -m profiling summarize <capture> --json <tmp>` in a fresh process (the
full analysis, every table) and reads its wall time and peak RSS; the baseline is the same
process importing the analysis and exiting, so the figure is what the analysis itself adds.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from tpu_engine.cli import run_cli


def _run(args: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one child process."""
    code = "\n".join([
        "import resource, runpy, sys",
        "sys.argv = ['profiling'] + sys.argv[1:]",
        "try:",
        "    runpy.run_module('profiling', run_name='__main__')",
        "except SystemExit:",
        "    pass",
        "print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, file=sys.stderr)"])
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"summarize failed: {p.stderr.strip().splitlines()[-1]}")
    rss = int([line for line in p.stderr.splitlines() if line.startswith("RSS ")][-1].split()[1])
    return wall, rss


def cli() -> None:
    run_cli(main)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture", help="run dir, profile dir or .xplane.pb")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    from profiling.runs.layout import resolve_run
    _, xplane = resolve_run(args.capture)
    size = os.path.getsize(xplane)
    _, base_rss = _run(["doctor", "--profile-result-dir", tempfile.gettempdir()])
    walls, rss = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            w, r = _run(["summarize", xplane, "--json", os.path.join(tmp, f"{i}.json")])
            walls.append(w)
            rss.append(r)
    added = max(rss) - base_rss
    print(f"capture: {xplane} ({size / 1e6:.1f} MB)")
    print(f"summarize: median {statistics.median(walls):.2f}s, best {min(walls):.2f}s over {args.repeat} run(s)")
    print(f"peak RSS {max(rss) / 1e6:.0f} MB; the analysis adds {added / 1e6:.0f} MB over the bare process "
          f"({base_rss / 1e6:.0f} MB) = {added / size:.2f}x the capture size")


if __name__ == "__main__":
    cli()
