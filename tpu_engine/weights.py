"""Find a model and read its weights as numpy arrays, for every backend: a local HF directory,
the local HF cache, or a seeded dummy init. bfloat16 checkpoints read as ml_dtypes' bfloat16
(what jax uses); each backend casts and places the arrays itself."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterator

import ml_dtypes  # noqa: F401  (registers numpy's bfloat16, which safetensors' numpy reader needs)
import numpy as np
from safetensors import SafetensorError, safe_open

from .config import DEFAULT_MODEL, REGISTRY, ModelConfig, config_from_hf, load_config

LOAD_FORMATS = ("auto", "safetensors", "dummy")


@dataclasses.dataclass(frozen=True)
class ModelSource:
    name: str
    config: ModelConfig
    weights_dir: str | None  # None: dummy weights
    description: str         # one line for the user: where the weights come from


def hf_cache_dir() -> str:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.path.join(home, "hub")


def find_in_hf_cache(model_id: str) -> str | None:
    """The snapshot directory of `model_id` in the local HF cache (refs/main first), if any."""
    repo = os.path.join(hf_cache_dir(), "models--" + model_id.replace("/", "--"))
    ref = os.path.join(repo, "refs", "main")
    if os.path.isfile(ref):
        with open(ref) as f:
            snap = os.path.join(repo, "snapshots", f.read().strip())
        if os.path.isfile(os.path.join(snap, "config.json")):
            return snap
    snaps = sorted(glob_dirs(os.path.join(repo, "snapshots")), key=os.path.getmtime, reverse=True)
    return next((s for s in snaps if os.path.isfile(os.path.join(s, "config.json"))), None)


def glob_dirs(path: str) -> list[str]:
    return [os.path.join(path, d) for d in os.listdir(path)] if os.path.isdir(path) else []


def resolve_model(model: str, load_format: str = "auto") -> ModelSource:
    if load_format not in LOAD_FORMATS:
        raise ValueError(f"load_format {load_format!r} is not supported; expected one of {', '.join(LOAD_FORMATS)}.")
    dummy = load_format == "dummy"
    if os.path.isdir(model):
        cfg = load_config(model)
        return ModelSource(model, cfg, None if dummy else model,
                           "dummy weights" if dummy else f"weights from {model}")
    snapshot = find_in_hf_cache(model) if model != DEFAULT_MODEL else None
    if snapshot and not dummy:
        return ModelSource(model, load_config(snapshot), snapshot, f"weights from the HF cache ({snapshot})")
    if model in REGISTRY:
        cfg = config_from_hf(REGISTRY[model])
        if dummy or (model == DEFAULT_MODEL and load_format == "auto"):
            return ModelSource(model, cfg, None, "dummy weights (seeded random init)")
        raise ValueError(
            f"model {model!r} has no weights in the local HF cache ({hf_cache_dir()}); "
            f"download it there or pass load_format='dummy'.")
    if snapshot:  # a cached id outside the registry, asked for with dummy weights
        return ModelSource(model, load_config(snapshot), None, "dummy weights (seeded random init)")
    raise ValueError(
        f"model {model!r} is not a local directory, not in the HF cache ({hf_cache_dir()}), "
        f"and not a known id (known: {', '.join(sorted(REGISTRY))}).")


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint must provide, with its shape (HF names)."""
    h, d = cfg.hidden_size, cfg.head_dim
    q, kv, i = cfg.num_attention_heads * d, cfg.num_key_value_heads * d, cfg.intermediate_size
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, h), "model.norm.weight": (h,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, h)
    for n in range(cfg.num_hidden_layers):
        p = f"model.layers.{n}."
        shapes.update({
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
            p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h),
            p + "mlp.down_proj.weight": (h, i),
        })
        if cfg.attention_bias:
            shapes.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                           p + "self_attn.v_proj.bias": (kv,)})
    return shapes


def _checkpoint_files(weights_dir: str) -> list[str]:
    index = os.path.join(weights_dir, "model.safetensors.index.json")
    single = os.path.join(weights_dir, "model.safetensors")
    if os.path.isfile(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ValueError(f"{index} is not a valid safetensors index (no weight_map).") from None
        files = sorted(set(weight_map.values()))
        for name in files:
            if not os.path.isfile(os.path.join(weights_dir, name)):
                raise ValueError(f"checkpoint shard {os.path.join(weights_dir, name)} is missing.")
        return [os.path.join(weights_dir, n) for n in files]
    if os.path.isfile(single):
        return [single]
    raise ValueError(f"{weights_dir} has no model.safetensors or model.safetensors.index.json.")


def _index_checkpoint(weights_dir: str, cfg: ModelConfig) -> dict[str, str]:
    """tensor name -> file, after checking every file opens and every tensor's shape."""
    expected = expected_shapes(cfg)
    where: dict[str, str] = {}
    for path in _checkpoint_files(weights_dir):
        try:
            with safe_open(path, framework="np") as f:
                for name in f.keys():
                    if name in expected:
                        shape = tuple(f.get_slice(name).get_shape())
                        if shape != expected[name]:
                            raise ValueError(f"tensor {name} in {path} has shape {list(shape)}; "
                                             f"expected {list(expected[name])}.")
                        where[name] = path
        except SafetensorError as e:
            raise ValueError(f"checkpoint file {path} is unreadable or truncated ({e}).") from None
    missing = [n for n in expected if n not in where]
    if missing:
        raise ValueError(f"checkpoint {weights_dir} lacks tensor {missing[0]}"
                         f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}.")
    return where


def checkpoint_tensors(weights_dir: str, cfg: ModelConfig) -> Iterator[tuple[str, np.ndarray]]:
    """(name, host array, in the checkpoint's dtype) for every expected tensor, validated before
    the first is yielded."""
    where = _index_checkpoint(weights_dir, cfg)
    by_file: dict[str, list[str]] = {}
    for name, path in where.items():
        by_file.setdefault(path, []).append(name)
    for path, names in by_file.items():
        try:
            with safe_open(path, framework="np") as f:
                for name in names:
                    yield name, f.get_tensor(name)
        except SafetensorError as e:
            raise ValueError(f"checkpoint file {path} could not be read ({e}).") from None


def dummy_tensors(cfg: ModelConfig, seed: int) -> Iterator[tuple[str, np.ndarray]]:
    """Seeded random float32 weights, as vLLM's load_format='dummy': norms 1, everything else
    small; the same arrays for every backend."""
    rng = np.random.default_rng(seed)
    for name, shape in expected_shapes(cfg).items():
        if name.endswith("norm.weight"):
            yield name, np.ones(shape, np.float32)
        else:
            yield name, rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
