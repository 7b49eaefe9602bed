"""Did it recompile? XLA compilations during warm-up and during the profiled passes (from the
run record), the captured steps that compiled (from the manifest), and the persistent cache."""
from __future__ import annotations

import dataclasses

from tpu_engine.compile import CompileStats
from tpu_engine.events import StepRecord

from .analysis import Analysis


@dataclasses.dataclass(frozen=True)
class CompileReport:
    warmup: CompileStats | None          # None: the capture has no run record
    profiled: CompileStats | None        # during the profiled passes (or a server capture)
    steps_that_compiled: list[StepRecord]
    cache_dir: str | None


def compile_report(a: Analysis) -> CompileReport:
    rec = a.record
    return CompileReport(warmup=rec.compiles.warmup if rec else None,
                         profiled=rec.compiles.profiled if rec else None,
                         steps_that_compiled=[s.record for s in a.steps if s.record and s.record.compiles],
                         cache_dir=rec.engine.compilation_cache_dir if rec and rec.engine else None)
