"""Engine latency, prefill and decode, optionally against HF transformers: `python -m profiling.benchmarks.latency`."""
from _entry import run

run("profiling.benchmarks.latency")
