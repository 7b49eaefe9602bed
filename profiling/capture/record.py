"""What sits beside each capture: `manifest.jsonl` (one line per engine step in the capture)
and `run_info.json` (arguments, environment, versions, device, latencies, compile counts)."""
from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import platform
import sys

from tpu_engine.events import PhaseEvent

MANIFEST = "manifest.jsonl"
RUN_INFO = "run_info.json"
ENV_KEYS = ("VLLM_TPU_PROFILE_DELAY_MS", "VLLM_TPU_PROFILE_DURATION_MS", "XLA_HLO_DEBUG",
            "XLA_IR_DEBUG", "PJRT_DEVICE", "CPU_NUM_DEVICES", "XLA_FLAGS", "LIBTPU_INIT_ARGS",
            "PT_XLA_DEBUG_LEVEL", "XLA_USE_SPMD")


class StepLog:
    """Subscribe `on_event` to the engine's events: keeps one record per finished step."""

    def __init__(self):
        self.steps: list[dict] = []
        self.pass_index = 0

    def on_event(self, e: PhaseEvent) -> None:
        if e.kind != "end":
            return
        self.steps.append({
            "step": e.step, "phase": e.phase, "pass": self.pass_index, "bucket": e.bucket,
            "batch_size": e.batch_size, "num_tokens": e.num_tokens, "padded_tokens": e.padded_tokens,
            "kv_len_min": e.kv_len_min, "kv_len_max": e.kv_len_max, "kv_bucket": e.kv_bucket,
            "wall_start": e.wall_start, "wall_end": e.wall_end,
            "compiles": e.compiles, "compile_time_s": e.compile_time_s,
            "request_ids": list(e.request_ids)})

    def select(self, step_numbers) -> list[dict]:
        wanted = set(step_numbers)
        return [s for s in self.steps if s["step"] in wanted]


def write_manifest(run_dir: str, steps: list[dict]) -> str:
    path = os.path.join(run_dir, MANIFEST)
    with open(path, "w") as f:
        for s in steps:
            f.write(json.dumps(s) + "\n")
    return path


def read_manifest(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, MANIFEST)) as f:
        return [json.loads(line) for line in f if line.strip()]


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict:
    return {"python": platform.python_version(), "torch": _version("torch"),
            "torch_xla": _version("torch_xla"), "libtpu": _version("libtpu") or _version("libtpu-nightly"),
            "xprof": _version("xprof"), "tpu_inference_profiler": _version("tpu-inference-profiler"),
            "platform": platform.platform()}


def environment() -> dict:
    return {k: os.environ[k] for k in ENV_KEYS if k in os.environ}


def write_run_info(run_dir: str, info: dict) -> str:
    path = os.path.join(run_dir, RUN_INFO)
    with open(path, "w") as f:
        json.dump(info, f, indent=2, default=_jsonable)
        f.write("\n")
    return path


def read_run_info(run_dir: str) -> dict:
    with open(os.path.join(run_dir, RUN_INFO)) as f:
        return json.load(f)


def _jsonable(o):
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def command_line() -> list[str]:
    return [sys.executable] + sys.argv
