"""Turn an EngineConfig into a ready backend: check every setting, then load the model."""
from __future__ import annotations


from .compile import default_cache_dir
from .platform import device_count, select_device
from .weights import resolve_model

DEFAULT_MAX_MODEL_LEN = 2048


def _positive(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} {value!r} must be a positive integer.")


def resolve_limits(config):
    """Check the model and the length/slot settings without loading anything heavy.
    Returns (model source, max_model_len, longest prefill)."""
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
    return source, max_len, min(max_prefill, max_len)


BACKENDS = ("torch_xla", "jax")


def _backend(name: str):
    """(runner class, platform(), device_count()) of a backend, imported only when chosen."""
    if name == "jax":
        from .jax_backend.runner import JaxRunner, device_count as jax_devices, platform
        return JaxRunner, platform, jax_devices
    from .runner import XlaRunner
    return XlaRunner, select_device, device_count


def backend_device_count(name: str) -> int:
    """Start the backend's runtime (if not yet) and count its devices."""
    return _backend(name)[2]()


def build_runner(config):
    """Returns (runner, model config, model source, max_model_len, longest prefill)."""
    if config.backend not in BACKENDS:
        raise ValueError(f"backend {config.backend!r} is not supported; expected torch_xla or jax.")
    source, max_len, max_prefill = resolve_limits(config)
    cfg = source.config
    _positive("tensor_parallel_size", config.tensor_parallel_size)

    runner_cls, platform, devices = _backend(config.backend)
    device = platform()
    dtype = config.dtype
    if dtype == "auto":
        dtype = "float32" if device == "CPU" else "bfloat16"
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype {config.dtype!r} is not supported; expected auto, float32 or bfloat16.")
    from .sharding import check_tp
    check_tp(cfg, config.tensor_parallel_size, devices())
    from .memory import check_fits  # before the cache is allocated: one sentence, not an allocator's traceback
    check_fits(cfg, max_num_seqs=config.max_num_seqs, max_model_len=max_len, dtype=dtype,
               tensor_parallel_size=config.tensor_parallel_size, platform=device, backend=config.backend)

    cache_dir = config.compilation_cache_dir
    if cache_dir is None and device == "TPU":
        cache_dir = default_cache_dir() if config.backend == "torch_xla" else default_cache_dir("jax")
    runner = runner_cls(source, dtype=dtype, max_model_len=max_len, max_num_seqs=config.max_num_seqs,
                        tensor_parallel_size=config.tensor_parallel_size, seed=config.seed,
                        compilation_cache_dir=cache_dir or None, strict_compiles=config.strict_compiles,
                        max_prefill=max_prefill, enforce_eager=config.enforce_eager)
    return runner, cfg, source, max_len, max_prefill
