"""The JAX runner: the torch_xla runner's interface (backend.py) over jitted JAX functions.

The same rules keep the set of executables finite and fixed after warm-up: every input that
changes between calls is a device array built on the host; the only static arguments are
bucket sizes and the sampler variant; the KV cache is donated and comes back updated in
place; results are read back once per step, after the sampler.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Sequence

import numpy as np

from ..backend import (GREEDY, SamplingInputs, StepResult, decode_rows, prefill_rows, read_back, read_prompt_logprobs,
                       release_freed_memory)
from ..buckets import Buckets
from ..compile import CompileGuard, CompileStats
from ..config import ModelConfig
from ..graphs import next_prompt_tokens, pack_prompts
from ..info import DeviceInfo
from ..model import rope_inv_freq
from ..sampler import MAX_LOGPROBS, SamplingRow
from ..scheduler import ShapePlan
from ..warmup import run_warmup
from ..weights import ModelSource, checkpoint_tensors, dummy_tensors
from . import compile as jcompile
from .graphs import compile_steps
from .model import build_params
from .programs import ProgramStore, StepProgram, context
from .sharding import Placement

log = logging.getLogger(__name__)
_announced = False


def platform() -> str:
    """JAX's default platform, upper-case as PJRT names it ("CPU", "TPU", "GPU"); says once
    when JAX falls back to CPU."""
    global _announced
    import jax
    name = jax.default_backend().upper()
    if name == "CPU" and not _announced:
        print("tpu_engine: no TPU found; JAX runs on CPU.", file=sys.stderr)
    _announced = True
    return name


def device_count() -> int:
    import jax
    return jax.device_count()


def _host_arrays(source: ModelSource, cfg: ModelConfig, seed: int):
    """The same tensors the torch runner loads (checkpoint or seeded dummy init), as float32
    numpy arrays (numpy has no bfloat16; the cast to the model dtype happens on placement)."""
    tensors = checkpoint_tensors(source.weights_dir, cfg) if source.weights_dir else dummy_tensors(cfg, seed)
    for name, t in tensors:
        yield name, t.float().numpy()


class JaxRunner:
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
                                                       self.cfg.rope_scaling).numpy())
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
        self.guard = CompileGuard(strict=strict_compiles, stats=jcompile.compile_stats,
                                  hint="run with JAX_LOG_COMPILES=1 to see which function and shapes")
        self._sampling = SamplingInputs(self.cfg.vocab_size, lambda floats, ints: (
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

    # ---- inputs ---------------------------------------------------------------------------
    def _ints(self, rows) -> object:
        return self.place.input(np.asarray(rows, dtype=np.int32))

    # ---- steps ----------------------------------------------------------------------------
    def prefill(self, slots: Sequence[int], prompts: Sequence[Sequence[int]],
                sampling: Sequence[SamplingRow], prompt_logprobs: bool = False) -> StepResult:
        """Run the prompts, packed, into their slots and sample each one's first token; with
        `prompt_logprobs`, also score every prompt token (the prompt_head executable of this T)."""
        lens = [len(p) for p in prompts]
        T, N = self.buckets.prefill_batch_shape(lens)
        before = jcompile.compile_stats()
        ints = self._ints(pack_prompts(slots, [list(p) for p in prompts], T, self.max_model_len,
                                       self.scratch_row))
        hidden, self.kv_caches, self.penalty_state = self._prefill_fn(
            self.params, ints, self.kv_caches, self.penalty_state, self.inv_freq, cache_len=self.max_model_len)
        scored = None
        if prompt_logprobs:
            scored = self._jax.device_get(self._prompt_fn(self.params, hidden, self._ints(
                next_prompt_tokens(prompts, T)), num_logprobs=MAX_LOGPROBS))
        last, counters = prefill_rows(lens, N)
        hidden = self._gather_fn(hidden, self._ints(last))
        row_slots = list(slots) + [self.max_num_seqs] * (N - len(lens))
        out = self._sample(hidden, list(sampling) + [GREEDY] * (N - len(lens)), counters, row_slots, before,
                           f"prefill of {len(lens)} prompt(s), {sum(lens)} tokens")
        if scored is not None:
            out.prompt = read_prompt_logprobs(*scored, lens)
        return out.first(len(lens))

    def decode(self, slots: Sequence[int], last_tokens: Sequence[int], positions: Sequence[int],
               sampling: Sequence[SamplingRow]) -> StepResult:
        """One token for each active slot. positions[i]: where last_tokens[i] goes."""
        B, span = self.buckets.decode_shape(slots, positions)
        before = jcompile.compile_stats()
        tok, pos, rows, counters = decode_rows(B, slots, last_tokens, positions, sampling)
        hidden, self.kv_caches = self._decode_fn(self.params, self._ints([tok, pos]), self.kv_caches,
                                                 self.inv_freq, span=span, cache_len=self.max_model_len)
        out = self._sample(hidden, rows, counters, list(range(B)), before, f"decode of batch {len(slots)}")
        return out.select(slots)

    def _sample(self, hidden, rows: Sequence[SamplingRow], counters: list[int], row_slots: list[int],
                before, what) -> StepResult:
        n = len(counters)
        floats, ints = self._sampling(rows, n)
        counters = self.place.input(np.asarray([counters, row_slots], dtype=np.uint32))
        want = max(r.num_logprobs for r in rows)
        (tokens, lps, top), self.penalty_state = self._head_fn(
            self.params, hidden, floats, ints, counters, self.penalty_state,
            random=any(r.temperature > 0 for r in rows), num_logprobs=MAX_LOGPROBS if want else 0)
        tokens, lps, top = self._jax.device_get((tokens, lps, top))  # the step's one read-back
        return read_back(tokens, lps, top, rows, self.guard.check(before, what))

    # ---- warm-up --------------------------------------------------------------------------
    def warmup(self, plan: ShapePlan, variants: Sequence[SamplingRow], progress=None,
               prompt_logprobs: bool = False) -> CompileStats:
        """Compile the plan's shapes, with inputs built as real ones are; then arm the guard."""
        t0 = time.perf_counter()
        run_warmup(self, plan, variants, progress, prompt_logprobs)
        self.guard.arm()
        log.info("warm-up compiled %d executables in %.1fs", self.guard.warmup.compiles,
                 time.perf_counter() - t0)
        return self.guard.warmup
