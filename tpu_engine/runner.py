"""The torch_xla backend: weights on device, static KV cache, compiled prefill/decode/sample.

Rules that keep the set of compiled graphs finite and fixed after warm-up:
  * every input that changes between calls is a device tensor (ids, positions, slots,
    sampling parameters); Python values that reach the graph are only bucket sizes;
  * prompts pad to a prefill bucket; decode runs slots [0, B) for a batch bucket B and
    attends over a KV-span bucket; inactive slots are computed and ignored;
  * inputs are built on the host and copied over, in warm-up exactly as in serving;
  * no `.item()` or data-dependent Python branch inside a step: results are read once, at
    the end of the step, and padding is stripped on the host.
Each step is three graphs: the model forward (per bucket), then the sampler (per batch size
and variant: greedy or random, with or without top-logprobs).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Sequence

import torch

from .buckets import Buckets
from .compile import CompileGuard, CompileStats, compile_stats, init_persistent_cache
from .config import ModelConfig
from .model import CausalLM, rope_inv_freq
from .platform import select_device
from .sampler import MAX_LOGPROBS, sample
from .weights import ModelSource, checkpoint_tensors, dummy_tensors, load_weights

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclasses.dataclass(frozen=True)
class SamplingRow:
    """The per-sequence sampling inputs of one step."""
    temperature: float
    top_k: int          # -1 or 0: off
    top_p: float
    seed: int           # 32-bit
    num_logprobs: int   # top alternatives wanted (0: only the chosen token's)


@dataclasses.dataclass
class StepResult:
    tokens: list[int]
    logprobs: list[float]
    top: list[tuple[int, list[tuple[int, float]]]] | None  # per row: chosen token's rank, (token, logprob) best first
    compiles: CompileStats


class XlaRunner:
    def __init__(self, source: ModelSource, *, dtype: str, max_model_len: int, max_num_seqs: int,
                 tensor_parallel_size: int, seed: int, compilation_cache_dir: str | None,
                 strict_compiles: bool, max_prefill: int):
        self.device_kind = select_device()
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
        self.guard = CompileGuard(strict=strict_compiles)
        self.model = self._load_model(source, seed)
        self.inv_freq = rope_inv_freq(self.cfg.head_dim, self.cfg.rope_theta, self.cfg.rope_scaling).to(self.device)
        self.kv_caches = self._allocate_kv_cache()
        self._sampling_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    # ---- set-up -------------------------------------------------------------------------
    def _load_model(self, source: ModelSource, seed: int) -> CausalLM:
        with torch.device("meta"):
            model = CausalLM(self.cfg)
        tensors = (checkpoint_tensors(source.weights_dir, self.cfg) if source.weights_dir
                   else dummy_tensors(self.cfg, seed))

        def place(name: str, t: torch.Tensor) -> torch.Tensor:
            t = t.to(self.dtype).to(self.device)
            return self.tp.shard_param(name, t) if self.tp else t

        load_weights(model, tensors, place)
        model.scope = self._scope
        return model.eval()

    def _allocate_kv_cache(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        cfg = self.cfg
        shape = (self.max_num_seqs * self.max_model_len, cfg.num_key_value_heads, cfg.head_dim)
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

    def _scope(self, name: str):
        return self._xp.Trace(name)

    def step_scope(self, phase: str, step: int):
        """The profiler's step annotation around one engine step (a host TraceMe, as
        `xp.StepTrace` makes, but without an IR scope, since the step syncs inside it)."""
        return self._xla._XLAC.profiler.TraceMe(phase, step_num=step, _r=1)

    # ---- inputs ---------------------------------------------------------------------------
    def _to_device(self, rows: list[list[int]] | list[int]) -> torch.Tensor:
        return torch.tensor(rows, dtype=torch.int64).to(self.device)

    def _sampling_tensors(self, rows: Sequence[SamplingRow], n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Device tensors (n, 2) float [temperature, top_p] and (n, 2) int [top_k, seed]; padded
        rows are greedy. Cached per batch composition, which changes rarely."""
        key = (n, tuple(rows))
        hit = self._sampling_cache.get(key)
        if hit is None:
            vocab = self.cfg.vocab_size
            pad = [SamplingRow(0.0, 0, 1.0, 0, 0)] * (n - len(rows))
            floats = [[r.temperature, r.top_p] for r in list(rows) + pad]
            ints = [[r.top_k if r.top_k > 0 else vocab, r.seed] for r in list(rows) + pad]
            hit = (torch.tensor(floats, dtype=torch.float32).to(self.device), self._to_device(ints))
            if len(self._sampling_cache) > 64:
                self._sampling_cache.clear()
            self._sampling_cache[key] = hit
        return hit

    # ---- steps ----------------------------------------------------------------------------
    def prefill(self, slot: int, prompt: Sequence[int], sampling: SamplingRow) -> StepResult:
        """Run one prompt through the model into `slot` and sample its first token."""
        n = len(prompt)
        T = Buckets.fit(self.buckets.prefill, n)
        before = compile_stats()
        ints = self._to_device(list(prompt) + [0] * (T - n) + [slot, n])  # one host->device copy
        tokens, slot_t, length = ints[:T].unsqueeze(0), ints[T:T + 1], ints[T + 1:T + 2]
        pos = torch.arange(T, device=self.device)
        positions = pos.unsqueeze(0)                         # (1, T)
        write_index = slot_t * self.max_model_len + pos      # (T,)
        key_mask = (pos.unsqueeze(0) <= pos.unsqueeze(1)) & (pos.unsqueeze(0) < length)
        logits = self.model(tokens, positions, self.kv_caches, write_index, key_mask.unsqueeze(0),
                            length - 1, self.max_model_len, None, self.inv_freq)
        self._xla.sync()
        counters = length  # index of the token being generated
        return self._sample(logits, [sampling], 1, counters, before, f"prefill of {n} tokens")

    def decode(self, slots: Sequence[int], last_tokens: Sequence[int], positions: Sequence[int],
               sampling: Sequence[SamplingRow]) -> StepResult:
        """One token for each active slot. positions[i]: where last_tokens[i] goes."""
        B = Buckets.fit(self.buckets.batch, max(slots) + 1)
        span = Buckets.fit(self.buckets.kv, max(positions) + 1)
        before = compile_stats()
        tok, pos = [0] * B, [0] * B
        for s, t, p in zip(slots, last_tokens, positions):
            tok[s], pos[s] = t, p
        ints = self._to_device([tok, pos])                   # (2, B)
        tokens, position = ints[0].unsqueeze(1), ints[1]
        write_index = torch.arange(B, device=self.device) * self.max_model_len + position
        key_mask = torch.arange(span, device=self.device).unsqueeze(0) <= position.unsqueeze(1)
        zero = torch.zeros(B, dtype=torch.int64, device=self.device)
        logits = self.model(tokens, position.unsqueeze(1), self.kv_caches, write_index,
                            key_mask.unsqueeze(1), zero, self.max_model_len, span, self.inv_freq)
        self._xla.sync()
        rows = [SamplingRow(0.0, 0, 1.0, 0, 0)] * B
        for s, r in zip(slots, sampling):
            rows[s] = r
        out = self._sample(logits, rows, B, position + 1, before, f"decode of batch {len(slots)}")
        keep = list(slots)
        return StepResult([out.tokens[s] for s in keep], [out.logprobs[s] for s in keep],
                          [out.top[s] for s in keep] if out.top else None, out.compiles)

    def _sample(self, logits, rows: Sequence[SamplingRow], n: int, counters, before, what) -> StepResult:
        floats, ints = self._sampling_tensors(rows, n)
        random = any(r.temperature > 0 for r in rows)
        want = max(r.num_logprobs for r in rows)
        tokens, lps, top = sample(
            logits, floats[:, 0], ints[:, 0], floats[:, 1], ints[:, 1], counters,
            random=random, num_logprobs=MAX_LOGPROBS if want else 0)
        if top is not None:
            t_cpu, lp_cpu, ti, tl, rank = self._xla_fetch(tokens, lps, *top)
            top = [(int(rank[r]), list(zip(ti[r, :rows[r].num_logprobs].tolist(),
                                           tl[r, :rows[r].num_logprobs].tolist())))
                   for r in range(n)]
        else:
            t_cpu, lp_cpu = self._xla_fetch(tokens, lps)
        compiles = self.guard.check(before, what)
        return StepResult(t_cpu.tolist(), lp_cpu.tolist(), top, compiles)

    def _xla_fetch(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """Execute the pending graph once, then copy its outputs to the host."""
        self._xla.sync()
        return [t.cpu() for t in tensors]

    # ---- warm-up --------------------------------------------------------------------------
    def warmup(self) -> CompileStats:
        """Compile every graph serving can need, using inputs built as real ones are."""
        t0 = time.perf_counter()
        greedy = SamplingRow(0.0, 0, 1.0, 0, 0)
        variants = [greedy, SamplingRow(0.0, 0, 1.0, 0, 1),
                    SamplingRow(1.0, 0, 1.0, 0, 0), SamplingRow(1.0, 0, 1.0, 0, 1)]
        for T in self.buckets.prefill:
            self.prefill(0, [0] * T, greedy)
        for B, span in self.buckets.decode_shapes():
            slots = list(range(B))
            for row in variants if span == self.buckets.kv[0] else [greedy]:
                self.decode(slots, [0] * B, [span - 1] * B, [row] * B)
        for row in variants[1:]:
            self.prefill(0, [0], row)
        self.guard.arm()
        log.info("warm-up compiled %d graphs in %.1fs", self.guard.warmup.compiles, time.perf_counter() - t0)
        return self.guard.warmup
