"""What an engine runs with, as plain records: the settings in force and the devices. Profilers
keep them beside each capture (`to_json` / `from_json`); nothing here loads a backend."""
from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    platform: str          # PJRT platform: "TPU", "CPU", ...
    device_kind: str       # e.g. "TPU v6 lite"
    device_count: int
    spmd: bool             # tensor parallel over the devices
    dtype: str             # of weights and KV cache


@dataclasses.dataclass(frozen=True)
class EngineInfo:
    model: str
    weights: str                       # checkpoint dir, or "dummy"
    max_model_len: int
    max_prefill_tokens: int
    max_num_seqs: int
    tensor_parallel_size: int
    enforce_eager: bool
    seed: int
    compilation_cache_dir: str | None
    weight_bytes: int
    kv_cache_bytes: int
    device: DeviceInfo

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "EngineInfo":
        """Also reads records written before `device` was nested (its fields at the top)."""
        device = data.get("device", data)
        known = {f.name for f in dataclasses.fields(DeviceInfo)}
        values = {f.name: data.get(f.name) for f in dataclasses.fields(cls)}
        values["device"] = DeviceInfo(**{k: device.get(k) for k in known})
        return cls(**values)
