"""Load test for the server: `python -m profiling.benchmarks.serving` (also `tpu-benchmark-serving`)."""
from _entry import run

run("profiling.benchmarks.serving")
