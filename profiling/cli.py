"""`python -m profiling <command>`:
  capture [flags]                  capture XLA profiles of prefill and decode (= scripts/profiling.py)
  summarize <run or profile dir>   phase, layer and op tables; --csv/--json/--chrome-trace/--plots
  compare <A> <B>                  per phase, layer and op deltas, largest first
  doctor                           is this machine ready to capture and view profiles
  service parse <dir>              a service profile (events.jsonl) -> Chrome trace, SQLite, CSVs
  mcp                              an MCP server over stdio: summarize, compare, findings, requests
"""
from __future__ import annotations

import argparse
import os
import sys

from tpu_engine.backends import registry
from tpu_engine.cli import PROFILER_PORT
from tpu_engine.cli import run_cli
from tpu_engine.paths import writable_dir

from .capture import cli as capture_cli


def count(least: int):
    """An argparse type: an integer of at least `least` (argparse names the flag when it fails)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            why = "has too many digits" if text.strip().lstrip("+-").isdigit() else "is not an integer"
            shown = repr(text) if len(text) <= 20 else f"{text[:20]!r} (of {len(text)} characters)"
            raise argparse.ArgumentTypeError(f"{shown} {why}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value} must be at least {least}")
        return value
    parse.__name__ = "integer"
    return parse


def dir_path(text: str) -> str:
    """A directory flag: "" would silently mean the current directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path is not a directory; give one (\".\" for this one)")
    return text


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser and its subcommand parsers (whose `error` reports a subcommand's bad values)."""
    p = argparse.ArgumentParser(prog="python -m profiling", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    sub = p.add_subparsers(dest="command", required=True)
    c = capture_cli.add_arguments(sub.add_parser("capture", help="capture XLA profiles (scripts/profiling.py)"))
    s = sub.add_parser("summarize", help="tables for one capture (the newest run of a profile dir)")
    s.add_argument("path", help="a run dir, a run's name, a profile dir (newest run) or a capture file "
                                "(.xplane.pb, .trace.json[.gz], from any engine)")
    s.add_argument("--csv", metavar="BASE", help="write <BASE>_<phase>_model_table.csv, _summary_table.csv, _top_ops.csv")
    s.add_argument("--json", metavar="FILE", help="context and every table as JSON")
    s.add_argument("--chrome-trace", metavar="FILE", help="Chrome trace (.json or .json.gz) for Perfetto")
    s.add_argument("--plots", metavar="BASE", help="write stacked-bar PNGs <BASE>_<phase>_layers.png ...")
    s.add_argument("--top", type=count(1), default=15, help="rows of the top-ops table (default 15)")
    s.add_argument("--detail", action="store_true", help="show every module scope, not only layers")
    s.add_argument("--service", metavar="DIR", help="a service profile of the same server (events.jsonl): "
                                                    "join its requests to the capture's steps by step number")
    s.add_argument("--perfetto", metavar="FILE", help="one timeline as a Perfetto trace (.pftrace): requests, "
                                                      "steps and ops, with flows from each request to its steps")
    s.add_argument("--fail-on", metavar="RULE>LIMIT", action="append", default=[],
                   help="exit 1 when a finding's value exceeds LIMIT (e.g. padding>30%%, recompile>0); repeatable")
    m = sub.add_parser("compare", help="deltas between two captures, B against A")
    m.add_argument("a", help="what summarize takes: a run dir, a run's name, a profile dir or a capture file")
    m.add_argument("b", help="the same, compared against A")
    m.add_argument("--top", type=count(1), default=15, help="rows per table (default 15)")
    d = sub.add_parser("doctor", help="check versions, the profile plugin, the port and the profile dir")
    d.add_argument("--profiler-port", type=int, default=PROFILER_PORT)  # a bad one is a FAIL of its check
    d.add_argument("--profile-result-dir", type=dir_path, default="profiles")
    d.add_argument("--backend", default=registry.DEFAULT, choices=registry.names(), help="the backend to check")
    sv = sub.add_parser("service", help="the service profiler's recorded spans")
    svsub = sv.add_subparsers(dest="service_command", metavar="{parse}", required=True)
    sp = svsub.add_parser("parse", help="events.jsonl files -> chrome_tracing.json, profiler.db, CSV tables")
    sp.add_argument("path", help="a collection dir holding events.jsonl, or any dir above several")
    sp.add_argument("--output-path", metavar="DIR", type=dir_path, help="where the outputs go (default <path>/output)")
    sp.add_argument("--capture", metavar="RUN", help="an XLA capture of the same server: add the `requests` table "
                                                     "(device time per request, joined by step number)")
    sub.add_parser("mcp", help="serve summarize, compare, findings and request lookups to an MCP client (stdio)")
    return p, {"capture": c}


def _check_output(out: str) -> None:
    """Make the folder an export goes into; ValueError naming it if that cannot be done."""
    if not out.strip() or out.endswith(os.sep) or os.path.isdir(out):
        raise ValueError(f"cannot write {out!r}: expected a file name (or base name), not a directory.")
    writable_dir(os.path.dirname(os.path.abspath(out)), f"cannot write {out}: folder")


def summarize(path: str, csv: str | None = None, json_path: str | None = None, chrome: str | None = None,
              plots: str | None = None, top: int = 15, detail: bool = False, service: str | None = None,
              perfetto: str | None = None, fail_on: list[str] | None = None) -> int:
    """Print the tables of one capture and its findings, write the exports asked for; 1 when a
    `fail_on` gate is passed, else 0."""
    from .analysis.analysis import Analysis
    from .analysis.findings import findings, gates
    from .export import files, text
    from .runs.files import Outputs
    checks = gates(fail_on)  # a bad gate is refused before anything is read
    for out in (csv, json_path, chrome, plots, perfetto):
        if out is not None:
            _check_output(out)
    a = Analysis.load(path)
    served, join_note = None, ""
    if service is not None:
        from .service import join
        served = join.served(join.load(service), a)
        join_note = join.coverage_note(served, a)
    found = findings(a, served)
    print(text.render(a, top, detail, served, join_note, found))
    out = Outputs()  # every export, or none of them: a failed write removes the others
    if csv:
        files.write_csv(a, csv, out, served, found)
    if json_path:
        files.write_json(a, json_path, out, served, found)
    if chrome:
        from .export import chrome_trace
        chrome_trace.write(a, chrome, out, served)
    if perfetto:
        from .export import perfetto as perfetto_mod
        perfetto_mod.write(a, perfetto, out, served)
    if plots:
        from .export.plots import write_plots
        write_plots(a, plots, out)
    written = out.written
    if written:
        print("\nwrote:")
        for path in written:
            print(f"  {path}")
    failed = [(g, f) for g in checks for f in g.failed(found)]
    for g, f in failed:
        print(f"fail-on {g.rule}>{g.limit:g}: {f.rule} ({f.subject}) is {f.value:.1f}", file=sys.stderr)
    return 1 if failed else 0


def _backend(a) -> str:
    """` (jax)`: the backend a capture's run record names (none for captures made elsewhere)."""
    return f" ({a.record.backend})" if a.record else ""


def compare(path_a: str, path_b: str, top: int = 15) -> None:
    """Print B's deltas against A, per phase, layer and op."""
    from .analysis import compare as compare_mod
    from .analysis.analysis import Analysis
    from .export.text import compare_text
    a, b = Analysis.load(path_a), Analysis.load(path_b)
    print(f"A: {a.xplane}{_backend(a)}\nB: {b.xplane}{_backend(b)}")
    for t in compare_mod.compare(a, b):
        print()
        print(compare_text(t, limit=top))


def main(argv=None) -> int:
    parser, subparsers = build_parser()
    args = parser.parse_args(argv)
    if args.command == "capture":
        return capture_cli.run(capture_cli.check_args(args, subparsers["capture"].error))
    if args.command == "doctor":
        from . import doctor
        return doctor.run(args.profiler_port, args.profile_result_dir, args.backend)
    if args.command == "service":
        from .service import output
        return output.run(args.path, args.output_path, args.capture)
    if args.command == "mcp":
        from . import mcp_server
        return mcp_server.run()
    if args.command == "summarize":
        return summarize(args.path, args.csv, args.json, args.chrome_trace, args.plots, args.top, args.detail,
                         args.service, args.perfetto, args.fail_on)
    else:
        compare(args.a, args.b, args.top)
    return 0


def cli(argv=None) -> None:
    """Errors in what the user gave (ValueError) are one line and exit 2."""
    try:
        run_cli(lambda: sys.exit(main(argv)))
    except BrokenPipeError:  # e.g. piped into `head`
        sys.exit(0)


def summarize_cli() -> None:
    """`tpu-profiling-summarize ...` = `python -m profiling summarize ...`."""
    cli(["summarize", *sys.argv[1:]])


def compare_cli() -> None:
    """`tpu-profiling-compare A B` = `python -m profiling compare A B`."""
    cli(["compare", *sys.argv[1:]])
