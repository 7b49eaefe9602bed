"""The JAX runner: the runner contract (backends/base.py) over jitted JAX functions.

The same rules keep the set of executables finite and fixed after warm-up: every input that
changes between calls is a device array built on the host; the only static arguments are
bucket sizes and the sampler variant; the KV cache is donated and comes back updated in
place; results are read back once per step, after the sampler.
"""
from __future__ import annotations

import numpy as np

from ...buckets import Buckets
from ...compile import CompileGuard, CompileStats
from ...config import ModelConfig
from ...info import DeviceInfo
from ...memory import release_freed_memory
from ...rope import rope_inv_freq
from ...weights import ModelSource, checkpoint_tensors, dummy_tensors
from ..base import Runner
from ..inputs import SamplingInputs
from . import compile as jcompile
from .graphs import compile_steps
from .model import build_params
from .platform import platform
from .programs import ProgramStore, StepProgram, context
from .sharding import Placement


def _host_arrays(source: ModelSource, cfg: ModelConfig, seed: int):
    """The same arrays the torch runner loads (checkpoint or seeded dummy init), as float32;
    the cast to the model dtype happens on placement."""
    tensors = checkpoint_tensors(source.weights_dir, cfg) if source.weights_dir else dummy_tensors(cfg, seed)
    for name, array in tensors:
        yield name, np.asarray(array, dtype=np.float32)


class JaxRunner(Runner):
    def __init__(self, source: ModelSource, *, dtype: str, max_model_len: int, max_num_seqs: int,
                 tensor_parallel_size: int, seed: int, compilation_cache_dir: str | None,
                 strict_compiles: bool, max_prefill: int, enforce_eager: bool = False):
        import jax
        import jax.numpy as jnp
        self._jax = jax
        jcompile.install_counters()
        self.device_kind = platform()
        self.cfg: ModelConfig = source.config
        self.cache_dir = jcompile.cache_dir(compilation_cache_dir) if compilation_cache_dir else None
        self.jdtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]
        self.dtype = np.dtype(self.jdtype)
        self.max_model_len, self.max_num_seqs = max_model_len, max_num_seqs
        self.buckets = Buckets(max_model_len, max_num_seqs, max_prefill)
        self.tp = tensor_parallel_size
        self.place = Placement(tensor_parallel_size)
        # enforce_eager has no JAX meaning worth having: scopes reach the HLO either way.
        self.enforce_eager = enforce_eager
        self.params = build_params(self.cfg, _host_arrays(source, self.cfg, seed), self._place_param)
        self.inv_freq = self.place.input(rope_inv_freq(self.cfg.head_dim, self.cfg.rope_theta,
                                                       self.cfg.rope_scaling))
        self.scratch_row = max_num_seqs * max_model_len  # a packed prefill's padding writes here
        shape = (self.scratch_row + 1, self.cfg.num_key_value_heads, self.cfg.head_dim)
        self.kv_caches = [(self.place.kv_cache(shape, self.jdtype), self.place.kv_cache(shape, self.jdtype))
                          for _ in range(self.cfg.num_hidden_layers)]
        # Each slot's output token counts and prompt tokens (row S: the scratch slot), for the
        # penalties; updated by the prefill and sampler executables (donated, in place).
        vocab_rows = (max_num_seqs + 1, self.cfg.vocab_size)
        self.penalty_state = (self.place.input(np.zeros(vocab_rows, dtype=np.int32)),
                              self.place.input(np.zeros(vocab_rows, dtype=bool)))
        store = ProgramStore(self.cache_dir, context(self.cfg, dtype), self.place.devices) \
            if self.cache_dir else None
        self._prefill_fn, self._gather_fn, self._decode_fn, self._head_fn, self._prompt_fn = (
            StepProgram(fn.__name__, fn, store) for fn in compile_steps(self.cfg, self.place.constrain))
        self.guard = CompileGuard(jcompile.compile_stats, strict=strict_compiles,
                                  hint="run with JAX_LOG_COMPILES=1 to see which function and shapes")
        self.sampling = SamplingInputs(self.cfg.vocab_size, lambda floats, ints: (
            self.place.input(np.asarray(floats, dtype=np.float32)),
            self.place.input(np.asarray(ints, dtype=np.uint32))))
        release_freed_memory()

    def _place_param(self, key: str, array: np.ndarray):
        out = self.place.param(key, array.astype(self.dtype))
        release_freed_memory()
        return out

    # ---- facts ----------------------------------------------------------------------------
    def kv_cache_bytes(self) -> int:
        k, _ = self.kv_caches[0]
        return 2 * len(self.kv_caches) * k.size * k.dtype.itemsize

    def weight_bytes(self) -> int:
        leaves = self._jax.tree_util.tree_leaves(self.params)
        seen = {id(x): x for x in leaves}  # a tied head is a copy, counted as the torch runner does
        return sum(x.size * x.dtype.itemsize for x in seen.values())

    def device_info(self) -> DeviceInfo:
        devices = self._jax.devices()
        return DeviceInfo(platform=self.device_kind, device_kind=str(devices[0].device_kind),
                          device_count=len(devices), spmd=self.tp > 1, dtype=str(self.dtype))

    @staticmethod
    def compile_stats() -> CompileStats:
        return jcompile.compile_stats()

    def step_scope(self, phase: str, step: int):
        """One engine step as a step in the trace (XProf's step markers)."""
        return self._jax.profiler.StepTraceAnnotation(phase, step_num=step)

    # ---- the device side of a step (base.Runner runs the steps) ----------------------------
    def _ints(self, rows):
        return self.place.input(np.asarray(rows, dtype=np.int32))

    def _counters(self, values: list[int]):
        return self.place.input(np.asarray(values, dtype=np.uint32))

    def _prefill_forward(self, ints, T: int):
        hidden, self.kv_caches, self.penalty_state = self._prefill_fn(
            self.params, ints, self.kv_caches, self.penalty_state, self.inv_freq, cache_len=self.max_model_len)
        return hidden

    def _gather(self, hidden, last):
        return self._gather_fn(hidden, last)

    def _decode_forward(self, ints, B: int, span: int):
        hidden, self.kv_caches = self._decode_fn(self.params, ints, self.kv_caches, self.inv_freq, span=span,
                                                 cache_len=self.max_model_len)
        return hidden

    def _head(self, hidden, floats, ints, counters, random: bool, num_logprobs: int) -> tuple:
        out, self.penalty_state = self._head_fn(self.params, hidden, floats, ints, counters, self.penalty_state,
                                                random=random, num_logprobs=num_logprobs)
        return self._jax.device_get(out)  # the step's one read-back

    def _prompt_head(self, hidden, next_tokens, num_logprobs: int) -> tuple:
        return self._jax.device_get(self._prompt_fn(self.params, hidden, next_tokens, num_logprobs=num_logprobs))
