"""Summarize a capture: `python scripts/summarize.py profiles` (same as `python -m profiling summarize`)."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cli() -> None:
    from profiling.__main__ import cli as profiling_cli
    sys.argv = [sys.argv[0], "summarize", *sys.argv[1:]]
    profiling_cli()


if __name__ == "__main__":
    cli()
