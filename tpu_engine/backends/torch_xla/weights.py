"""Install a checkpoint's host arrays (weights.py) as the torch model's parameters."""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """A host array as a CPU tensor; bfloat16 (ml_dtypes) goes through float32, which is exact."""
    if array.dtype.name == "bfloat16":
        array = array.astype(np.float32)
    elif not array.flags.writeable:  # a checkpoint's memory-mapped bytes: torch wants its own
        array = array.copy()
    return torch.from_numpy(np.ascontiguousarray(array))


def to_model_layout(name: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor]:
    """HF (name, tensor) -> the engine's: projection weights are kept transposed (`weight_t`)."""
    if name.endswith("_proj.weight") or name == "lm_head.weight":
        return name[: -len("weight")] + "weight_t", tensor.t().contiguous()
    return name, tensor


def load_weights(model: torch.nn.Module, tensors: Iterator[tuple[str, np.ndarray]],
                 place: Callable[[str, torch.Tensor], torch.Tensor]) -> None:
    """Install each HF array as the engine parameter it maps to; `place` casts and moves it
    to the device (and shards it). One host tensor is alive at a time."""
    tied = model.cfg.tie_word_embeddings
    for hf_name, hf_array in tensors:
        hf_tensor = as_tensor(hf_array)
        name, tensor = to_model_layout(hf_name, hf_tensor)
        module_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(module_name), leaf, torch.nn.Parameter(place(name, tensor), requires_grad=False))
        if tied and hf_name == "model.embed_tokens.weight":
            # Tied head: a transposed copy, so the logits matmul takes the fast layout too.
            lm_name, lm_tensor = to_model_layout("lm_head.weight", hf_tensor)
            model.lm_head.weight_t = torch.nn.Parameter(place(lm_name, lm_tensor), requires_grad=False)
