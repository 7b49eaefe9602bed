"""`summarize`'s time and memory on a capture: `python -m profiling.benchmarks.summarize`."""
from _entry import run

run("profiling.benchmarks.summarize")
