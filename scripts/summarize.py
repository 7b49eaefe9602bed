"""Summarize a capture: `python scripts/summarize.py profiles` = `python -m profiling summarize profiles`."""
from _entry import run

run("profiling.cli", "summarize_cli")
