"""Summarize a capture: `python scripts/summarize.py profiles` (same as `python -m profiling summarize`)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cli() -> None:
    from profiling.__main__ import subcommand_cli
    subcommand_cli("summarize")


if __name__ == "__main__":
    cli()
