"""Compare two captures: `python scripts/compare_profiles.py A B` = `python -m profiling compare A B`."""
from _entry import run

run("profiling.cli", "compare_cli")
