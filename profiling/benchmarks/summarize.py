"""How long `summarize` takes on a capture and how much memory it needs, against the capture's size.

    python -m profiling.benchmarks.summarize profiles/plugins/profile/<run> [--repeat 3]

Each repeat runs `python -m profiling summarize <capture> --json <tmp>` in a fresh process (the
full analysis, every table) and reads its wall time and peak RSS; the baseline is the same
process importing the analysis and exiting, so the figure is what the analysis itself adds.
With `--service DIR` (a service profile of the same server), runs with and without the join
(`summarize --service DIR`) alternate, and the ratio of their medians is printed with the load
average.
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
    ap.add_argument("--service", metavar="DIR", help="also time summarize joined to this service profile")
    args = ap.parse_args(argv)
    from profiling.runs.layout import resolve_run
    _, xplane = resolve_run(args.capture)
    size = os.path.getsize(xplane)
    _, base_rss = _run(["doctor", "--profile-result-dir", tempfile.gettempdir()])
    walls, rss, joined = [], [], []
    print(f"load average at the start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            w, r = _run(["summarize", xplane, "--json", os.path.join(tmp, f"{i}.json")])
            walls.append(w)
            rss.append(r)
            if args.service:  # alternating, so that the machine's noise hits both
                joined.append(_run(["summarize", xplane, "--service", args.service, "--json",
                                    os.path.join(tmp, f"j{i}.json")])[0])
    added = max(rss) - base_rss
    print(f"capture: {xplane} ({size / 1e6:.1f} MB)")
    print(f"summarize: median {statistics.median(walls):.2f}s, best {min(walls):.2f}s over {args.repeat} run(s)")
    print(f"peak RSS {max(rss) / 1e6:.0f} MB; the analysis adds {added / 1e6:.0f} MB over the bare process "
          f"({base_rss / 1e6:.0f} MB) = {added / size:.2f}x the capture size")
    if joined:
        print(f"summarize --service: median {statistics.median(joined):.2f}s, best {min(joined):.2f}s; with / without "
              f"the join: {statistics.median(joined) / statistics.median(walls):.2f}x")
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    cli()
