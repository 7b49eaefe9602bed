"""Compare two captures: `python scripts/compare_profiles.py A B` (same as `python -m profiling compare`)."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cli() -> None:
    from profiling.__main__ import cli as profiling_cli
    sys.argv = [sys.argv[0], "compare", *sys.argv[1:]]
    profiling_cli()


if __name__ == "__main__":
    cli()
