"""`python -m profiling <command>`: doctor (is this machine ready to capture and view)."""
from __future__ import annotations

import argparse
import sys

from .capture import DEFAULT_PORT


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m profiling")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("doctor", help="check versions, the profile plugin, the port and the profile dir")
    d.add_argument("--profiler-port", type=int, default=DEFAULT_PORT)
    d.add_argument("--profile-result-dir", default="profiles")
    args = p.parse_args(argv)
    if args.command == "doctor":
        from . import doctor
        return doctor.run(args.profiler_port, args.profile_result_dir)
    return 2


if __name__ == "__main__":
    sys.exit(main())
