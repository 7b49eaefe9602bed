"""The torch_xla backend: weights on device, static KV cache, compiled prefill/decode/sample.

Rules that keep the set of compiled graphs finite and fixed after warm-up:
  * every input that changes between calls is a device tensor (ids, positions, slots,
    sampling parameters); Python values that reach the graph are only bucket sizes;
  * prompts pad to a prefill bucket; decode runs slots [0, B) for a batch bucket B and
    attends over a KV-span bucket; inactive slots are computed and ignored;
  * inputs are built on the host and copied over, in warm-up exactly as in serving;
  * no `.item()` or data-dependent Python branch inside a step: results are read once, at
    the end of the step, and padding is stripped on the host.
Each step runs the model forward (per shape; captured once with dynamo unless `enforce_eager`;
see graphs.py), a prefill also the gather of each prompt's last token, then the head and
sampler (per request bucket and variant: greedy or random, with or without top-logprobs),
whose outputs are the only values read back to the host.
"""
from __future__ import annotations

import logging

import torch

from ...buckets import Buckets
from ...compile import CompileGuard, CompileStats
from ...config import ModelConfig
from ...info import DeviceInfo
from ...memory import release_freed_memory
from ...rope import rope_inv_freq
from ...weights import ModelSource, checkpoint_tensors, dummy_tensors
from ..base import Runner
from ..inputs import SamplingInputs
from .compile import compile_stats, init_persistent_cache
from .dynamo_scopes import compile_with_scopes
from .graphs import decode_forward, gather_rows, head_and_sample, prefill_forward, prompt_head
from .model import CausalLM
from .platform import platform
from .weights import load_weights

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class XlaRunner(Runner):
    def __init__(self, source: ModelSource, *, dtype: str, max_model_len: int, max_num_seqs: int,
                 tensor_parallel_size: int, seed: int, compilation_cache_dir: str | None,
                 strict_compiles: bool, max_prefill: int, enforce_eager: bool = False):
        self.device_kind = platform()
        import torch_xla
        import torch_xla.debug.profiler as xp
        import torch_xla.runtime as xr
        self._xla, self._xp = torch_xla, xp
        self.cfg: ModelConfig = source.config
        if tensor_parallel_size > 1:
            xr.use_spmd()  # must precede every device tensor
        if compilation_cache_dir:
            self.cache_dir = init_persistent_cache(compilation_cache_dir)
        else:
            self.cache_dir = None
        self.device = torch_xla.device()
        self.dtype = DTYPES[dtype]
        self.max_model_len, self.max_num_seqs = max_model_len, max_num_seqs
        self.buckets = Buckets(max_model_len, max_num_seqs, max_prefill)
        self.tp = None
        if tensor_parallel_size > 1:
            from .sharding import TensorParallel
            self.tp = TensorParallel(tensor_parallel_size)
        self.guard = CompileGuard(compile_stats, strict=strict_compiles, hint="set PT_XLA_DEBUG_LEVEL=2 to see why")
        self.enforce_eager = enforce_eager
        self.model = self._load_model(source, seed)
        if enforce_eager:  # lazy tracing every step, each module inside its profiler scope
            self.model.scope = self._scope
            self._prefill_fn, self._gather_fn, self._decode_fn, self._head_fn, self._prompt_fn = (
                prefill_forward, gather_rows, decode_forward, head_and_sample, prompt_head)
        else:
            # Captured once per shape with dynamo; the backend keeps module names in the HLO
            # metadata (dynamo_scopes.py), so compiled captures have layer tables too.
            # The gather is one op: traced lazily it costs nothing per step, and it saves a
            # dynamo compile per (token bucket, request bucket) at warm-up.
            self._prefill_fn, self._gather_fn, self._decode_fn, self._head_fn, self._prompt_fn = (
                compile_with_scopes(prefill_forward), gather_rows,
                compile_with_scopes(decode_forward), compile_with_scopes(head_and_sample),
                compile_with_scopes(prompt_head))
        self.inv_freq = torch.from_numpy(rope_inv_freq(self.cfg.head_dim, self.cfg.rope_theta,
                                                         self.cfg.rope_scaling)).to(self.device)
        self.kv_caches = self._allocate_kv_cache()
        # Each slot's output token counts and prompt tokens (row S: padding's scratch slot), for
        # the penalties; kept on the device and updated by the prefill and sampler graphs.
        vocab_rows = (max_num_seqs + 1, self.cfg.vocab_size)
        self.penalty_state = (torch.zeros(vocab_rows, dtype=torch.int32).to(self.device),
                              torch.zeros(vocab_rows, dtype=torch.bool).to(self.device))
        release_freed_memory()
        self.sampling = SamplingInputs(self.cfg.vocab_size, lambda floats, ints: (
            torch.tensor(floats, dtype=torch.float32).to(self.device), self._ints(ints)))

    # ---- set-up -------------------------------------------------------------------------
    def _load_model(self, source: ModelSource, seed: int) -> CausalLM:
        with torch.device("meta"):
            model = CausalLM(self.cfg)
        tensors = (checkpoint_tensors(source.weights_dir, self.cfg) if source.weights_dir
                   else dummy_tensors(self.cfg, seed))

        def place(name: str, t: torch.Tensor) -> torch.Tensor:
            t = t.to(self.dtype).to(self.device)
            release_freed_memory()  # the host copy is gone; keep the peak at what is kept
            return self.tp.shard_param(name, t) if self.tp else t

        load_weights(model, tensors, place)
        return model.eval()

    def _allocate_kv_cache(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        cfg = self.cfg
        # One row past the slots: the scratch row that a packed prefill's padding writes to.
        self.scratch_row = self.max_num_seqs * self.max_model_len
        shape = (self.scratch_row + 1, cfg.num_key_value_heads, cfg.head_dim)
        caches = []
        for _ in range(cfg.num_hidden_layers):
            pair = tuple(torch.zeros(shape, dtype=self.dtype).to(self.device) for _ in range(2))
            if self.tp:
                pair = tuple(self.tp.shard_kv(t) for t in pair)
            caches.append(pair)
        self._xla.sync()
        return caches

    def kv_cache_bytes(self) -> int:
        k, _ = self.kv_caches[0]
        return 2 * len(self.kv_caches) * k.numel() * k.element_size()

    def weight_bytes(self) -> int:
        seen, total = set(), 0
        for p in self.model.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel() * p.element_size()
        return total

    def device_info(self) -> DeviceInfo:
        import torch_xla.runtime as xr
        attrs = xr.global_runtime_device_attributes()
        kind = attrs[0].get("device_kind") or attrs[0].get("name") if attrs else None
        return DeviceInfo(platform=self.device_kind, device_kind=str(kind), device_count=len(attrs),
                          spmd=self.tp is not None, dtype=str(self.dtype).replace("torch.", ""))

    @staticmethod
    def compile_stats() -> CompileStats:
        return compile_stats()

    def _scope(self, name: str):
        return self._xp.Trace(name)

    def step_scope(self, phase: str, step: int):
        """The profiler's step annotation around one engine step (a host TraceMe, as
        `xp.StepTrace` makes, but without an IR scope, since the step syncs inside it)."""
        return self._xla._XLAC.profiler.TraceMe(phase, step_num=step, _r=1)

    # ---- the device side of a step (base.Runner runs the steps) ----------------------------
    def _ints(self, rows) -> torch.Tensor:
        return torch.tensor(rows, dtype=torch.int64).to(self.device)

    _counters = _ints

    def _prefill_forward(self, ints, T: int):
        hidden = self._prefill_fn(self.model, ints, self.kv_caches, self.inv_freq, T, self.max_model_len,
                                  self.penalty_state)
        self._xla.sync()
        return hidden

    def _gather(self, hidden, last):
        hidden = self._gather_fn(hidden, last)
        self._xla.sync()  # a graph of its own: the head and sampler are shared with decode
        return hidden

    def _decode_forward(self, ints, B: int, span: int):
        hidden = self._decode_fn(self.model, ints, self.kv_caches, self.inv_freq, B, span, self.max_model_len)
        self._xla.sync()
        return hidden

    def _head(self, hidden, floats, ints, counters, random: bool, num_logprobs: int) -> tuple:
        tokens, lps, top = self._head_fn(self.model, hidden, floats, ints, counters, self.penalty_state, random,
                                         num_logprobs)
        self._xla.sync()  # execute the pending graph once, then copy its outputs to the host
        return tokens.cpu(), lps.cpu(), None if top is None else tuple(t.cpu() for t in top)

    def _prompt_head(self, hidden, next_tokens, num_logprobs: int) -> tuple:
        out = self._prompt_fn(self.model, hidden, next_tokens, num_logprobs)
        self._xla.sync()
        return tuple(t.cpu().numpy() for t in out)
