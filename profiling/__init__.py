"""Profiling layer: capture and analysis of tpu_engine runs (built on the engine's phase events)."""
