"""Tensor parallelism with a `jax.sharding.Mesh` of one axis, 'model' (as sharding.py for
torch_xla): column-parallel q/k/v/gate/up, row-parallel o/down, KV cache split on its KV-head
axis, everything else replicated. XLA's SPMD partitioner inserts the collectives."""
from __future__ import annotations

import numpy as np

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

_SPECS = {
    "q": P(None, "model"), "k": P(None, "model"), "v": P(None, "model"),
    "q_bias": P("model"), "k_bias": P("model"), "v_bias": P("model"),
    "o": P("model", None),
    "gate": P(None, "model"), "up": P(None, "model"), "down": P("model", None),
}


class Placement:
    """Where arrays go: one device, or a mesh of `tp` devices."""

    def __init__(self, tp: int):
        devices = jax.devices()
        self.mesh = Mesh(np.array(devices[:tp]), ("model",)) if tp > 1 else None
        self.device = devices[0]
        if self.mesh is not None:
            self.replicated = NamedSharding(self.mesh, P())
            self.kv = NamedSharding(self.mesh, P(None, "model", None))

    @property
    def devices(self) -> list:
        return [self.device] if self.mesh is None else list(self.mesh.devices.flat)

    def param(self, key: str, array):
        if self.mesh is None:
            return jax.device_put(array, self.device)
        return jax.device_put(array, NamedSharding(self.mesh, _SPECS.get(key, P())))

    def input(self, array):
        return jax.device_put(array, self.device if self.mesh is None else self.replicated)

    def kv_cache(self, shape, dtype):
        # Zeros from the host: a jitted zeros would be one more program to compile and count.
        return jax.device_put(np.zeros(shape, dtype), self.device if self.mesh is None else self.kv)

    def constrain(self, caches):
        """Inside a jitted step: keep the updated caches split as the donated ones were."""
        if self.mesh is None:
            return caches
        pin = lambda t: jax.lax.with_sharding_constraint(t, self.kv)  # noqa: E731
        return [(pin(k), pin(v)) for k, v in caches]
