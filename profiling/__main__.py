"""`python -m profiling <command>`: see `profiling/cli.py`."""
from .cli import cli

cli()
