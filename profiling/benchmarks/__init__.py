"""Benchmarks that print figures: engine latency (against HF transformers), the server under
load, the profiler's own overhead, `summarize` on big captures, the service collector."""
