"""What the capture side records while an engine runs: each finished step (`StepLog`, for the
manifest) and the run record of this process and its engine (`record_of`); the schema itself
is `profiling/runs/`."""
from __future__ import annotations

import dataclasses
import sys

from tpu_engine.events import PhaseEvent, StepRecord

from ..runs.record import RunRecord, environment, versions


class StepLog:
    """Subscribe `on_event` to the engine's phase events: keeps the record of every finished
    step, tagged with the profiled pass it belongs to."""

    def __init__(self):
        self.steps: list[StepRecord] = []
        self.pass_index = 0

    def on_event(self, e: PhaseEvent) -> None:
        if e.kind == "end":
            self.steps.append(dataclasses.replace(e.record, pass_index=self.pass_index))

    def select(self, step_numbers) -> list[StepRecord]:
        wanted = set(step_numbers)
        return [s for s in self.steps if s.step in wanted]


def record_of(engine, **fields) -> RunRecord:
    """A record of this process and `engine` (an LLMEngine), plus `fields`."""
    return RunRecord(command=[sys.executable] + sys.argv, env=environment(), versions=versions(),
                     engine=engine.describe(), model_config=engine.model_config,
                     backend=engine.config.backend, **fields)
