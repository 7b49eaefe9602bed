"""RoPE's inverse frequencies, computed once on the host (numpy, float32) for every backend."""
from __future__ import annotations

import math

import numpy as np

from .config import RopeScaling


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None) -> np.ndarray:
    """Inverse frequencies (head_dim/2,) float32, with Llama-3.1 frequency-dependent scaling."""
    exponent = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv_freq = (np.float32(1.0) / np.power(np.float32(theta), exponent)).astype(np.float32)
    if scaling is None:
        return inv_freq
    # Llama 3.1: long wavelengths are divided by `factor`, short ones kept, the band between
    # interpolated smoothly (see transformers' `_compute_llama3_parameters`).
    low_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
    high_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
    wavelen = np.float32(2 * math.pi) / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / np.float32(scaling.factor), inv_freq)
    smooth = (np.float32(scaling.original_max_position_embeddings) / wavelen - np.float32(scaling.low_freq_factor)) / (
        np.float32(scaling.high_freq_factor - scaling.low_freq_factor))
    smoothed = (1 - smooth) * scaled / np.float32(scaling.factor) + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)
