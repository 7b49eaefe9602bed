"""`python -m profiling <command>`:
  summarize <run or profile dir>   phase, layer and op tables; --csv/--json/--chrome-trace/--plots
  compare <A> <B>                  per phase, layer and op deltas, largest first
  doctor                           is this machine ready to capture and view profiles
  service parse <dir>              a service profile (events.jsonl) -> Chrome trace, SQLite, CSVs
"""
from __future__ import annotations

import argparse
import sys

from .capture.windows import DEFAULT_PORT


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m profiling", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("summarize", help="tables for one capture (the newest run of a profile dir)")
    s.add_argument("path", help="a run dir, a profile dir (newest run) or an .xplane.pb")
    s.add_argument("--csv", metavar="BASE", help="write <BASE>_<phase>_model_table.csv, _summary_table.csv, _top_ops.csv")
    s.add_argument("--json", metavar="FILE", help="context and every table as JSON")
    s.add_argument("--chrome-trace", metavar="FILE", help="Chrome trace (.json or .json.gz) for Perfetto")
    s.add_argument("--plots", metavar="BASE", help="write stacked-bar PNGs <BASE>_<phase>_layers.png ...")
    s.add_argument("--top", type=int, default=15, help="rows of the top-ops table (default 15)")
    s.add_argument("--detail", action="store_true", help="show every module scope, not only layers")
    c = sub.add_parser("compare", help="deltas between two captures, B against A")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--top", type=int, default=15)
    d = sub.add_parser("doctor", help="check versions, the profile plugin, the port and the profile dir")
    d.add_argument("--profiler-port", type=int, default=DEFAULT_PORT)
    d.add_argument("--profile-result-dir", default="profiles")
    sv = sub.add_parser("service", help="the service profiler's recorded spans")
    svsub = sv.add_subparsers(dest="service_command", metavar="{parse}", required=True)
    sp = svsub.add_parser("parse", help="events.jsonl files -> chrome_tracing.json, profiler.db, CSV tables")
    sp.add_argument("path", help="a collection dir holding events.jsonl, or any dir above several")
    sp.add_argument("--output-path", metavar="DIR", help="where the outputs go (default <path>/output)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "doctor":
        from . import doctor
        return doctor.run(args.profiler_port, args.profile_result_dir)
    if args.command == "service":
        from .service import tables as parse
        return parse.run(args.path, args.output_path)
    from .export import text as report
    if args.command == "summarize":
        report.summarize(args.path, args.csv, args.json, args.chrome_trace, args.plots, args.top, args.detail)
    else:
        report.compare(args.a, args.b, args.top)
    return 0


def cli() -> None:
    try:
        sys.exit(main())
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:  # e.g. piped into `head`
        sys.exit(0)


def subcommand_cli(command: str) -> None:
    """Entry point for a wrapper script that runs one subcommand (scripts/summarize.py ...)."""
    sys.argv = [sys.argv[0], command, *sys.argv[1:]]
    cli()


if __name__ == "__main__":
    cli()
