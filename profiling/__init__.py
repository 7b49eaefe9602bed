"""Profiling of tpu_engine runs on XLA, built on the engine's events: capture/ makes captures
(offline runs and live servers), trace/ reads them, analysis/ turns them into numbers, export/
writes those out (terminal, CSV, JSON, Chrome trace, plots), service/ is the service-level
profiler, benchmarks/ print figures. `python -m profiling` is cli.py."""
