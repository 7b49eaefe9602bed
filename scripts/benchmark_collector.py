"""The service collector's cost per event and throughput: `python -m profiling.benchmarks.collector`."""
from _entry import run

run("profiling.benchmarks.collector")
