"""The profiler's overhead, side by side: `python -m profiling.benchmarks.profiler`."""
from _entry import run

run("profiling.benchmarks.profiler")
