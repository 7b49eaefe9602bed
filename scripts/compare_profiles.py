"""Compare two captures: `python scripts/compare_profiles.py A B` (same as `python -m profiling compare`)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cli() -> None:
    from profiling.__main__ import subcommand_cli
    subcommand_cli("compare")


if __name__ == "__main__":
    cli()
