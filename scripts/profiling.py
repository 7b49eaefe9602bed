"""Capture XLA profiles of prefill and decode: the seed's command, word for word.
Same as `python -m profiling capture ...` and `tpu-profiling ...`."""
from _entry import run

run("profiling.capture.cli")
