"""Turn an EngineConfig into a ready backend: check every setting, then load the model."""
from __future__ import annotations

import dataclasses

from .backends import registry
from .compile import default_cache_dir
from .config import ModelConfig
from .memory import check_fits
from .weights import ModelSource, resolve_model

DEFAULT_MAX_MODEL_LEN = 2048


def _positive(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} {value!r} must be a positive integer.")


@dataclasses.dataclass(frozen=True)
class Limits:
    """A config's model and length limits as resolved (defaults filled in, every value checked)."""
    source: ModelSource
    max_model_len: int
    max_prefill: int     # the longest prefill step, in tokens


def resolve_limits(config) -> Limits:
    """Check the model and the length/slot settings without loading anything heavy (read it
    as `EngineConfig.limits`, which resolves once per config)."""
    source = resolve_model(config.model, config.load_format)
    cfg = source.config
    max_len = config.max_model_len
    if max_len is None:
        max_len = min(cfg.max_position_embeddings, DEFAULT_MAX_MODEL_LEN)
    _positive("max_model_len", max_len)
    if max_len > cfg.max_position_embeddings:
        raise ValueError(f"max_model_len {max_len} exceeds the model's max_position_embeddings "
                         f"{cfg.max_position_embeddings}.")
    _positive("max_num_seqs", config.max_num_seqs)
    max_prefill = max_len if config.max_num_batched_tokens is None else config.max_num_batched_tokens
    _positive("max_num_batched_tokens", max_prefill)
    if max_prefill < config.max_num_seqs:
        raise ValueError(f"max_num_batched_tokens {max_prefill} is smaller than max_num_seqs "
                         f"{config.max_num_seqs}.")
    return Limits(source, max_len, min(max_prefill, max_len))


def check_tp(cfg: ModelConfig, tp: int, devices: int) -> None:
    if tp < 1:
        raise ValueError(f"tensor_parallel_size {tp} must be at least 1.")
    if tp > devices:
        raise ValueError(f"tensor_parallel_size {tp} exceeds the {devices} available device(s).")
    for what, n in (("attention heads", cfg.num_attention_heads),
                    ("key/value heads", cfg.num_key_value_heads),
                    ("MLP intermediate size", cfg.intermediate_size)):
        if n % tp:
            raise ValueError(f"tensor_parallel_size {tp} does not divide the model's {n} {what}.")


def build_runner(config):
    """The backend's runner for `config` (an EngineConfig), its weights loaded."""
    backend = registry.get(config.backend)
    limits = config.limits
    source, max_len, max_prefill = limits.source, limits.max_model_len, limits.max_prefill
    cfg = source.config
    _positive("tensor_parallel_size", config.tensor_parallel_size)

    device = backend.platform()
    dtype = config.dtype
    if dtype == "auto":
        dtype = "float32" if device == "CPU" else "bfloat16"
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype {config.dtype!r} is not supported; expected auto, float32 or bfloat16.")
    check_tp(cfg, config.tensor_parallel_size, backend.device_count())
    # before the cache is allocated: one sentence, not an allocator's traceback
    check_fits(cfg, max_num_seqs=config.max_num_seqs, max_model_len=max_len, dtype=dtype,
               tensor_parallel_size=config.tensor_parallel_size, platform=device,
               device_bytes=backend.device_memory_bytes)

    cache_dir = config.compilation_cache_dir
    if cache_dir is None and device == "TPU":
        cache_dir = default_cache_dir(backend.cache_dir_name)
    runner = backend.runner_class()(source, dtype=dtype, max_model_len=max_len, max_num_seqs=config.max_num_seqs,
                                    tensor_parallel_size=config.tensor_parallel_size, seed=config.seed,
                                    compilation_cache_dir=cache_dir or None, strict_compiles=config.strict_compiles,
                                    max_prefill=max_prefill, enforce_eager=config.enforce_eager)
    return runner
