"""Latency of one batch run to completion, with prefill and decode timed separately.

Flags follow vLLM's benchmark_latency.py. `--compare-hf` runs HF transformers eager on the same
config and weights in the same process, alternating with the engine, and prints ratios and the
roofline figures (memory bandwidth and matmul peak measured in this run)."""
from __future__ import annotations

import argparse
import json
import os
import resource
import time


import numpy as np

from tpu_engine.cli import add_engine_args, engine_config, run_cli

PERCENTILES = (10, 25, 50, 75, 90, 99)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-iters-warmup", type=int, default=3)
    p.add_argument("--num-iters", type=int, default=10)
    p.add_argument("--compare-hf", action="store_true",
                   help="also run HF transformers eager (same weights), alternating, and print ratios")
    p.add_argument("--output-json", default=None, help="write the figures to this JSON file")
    p.add_argument("--side-by-side", action="store_true",
                   help="run both backends (and HF eager with --compare-hf) in alternating fresh "
                        "processes at batch 1 and --batch-size, cold and warm compilation cache, "
                        "profiled and unprofiled, and print one table (side_by_side.py)")
    add_engine_args(p)
    args = p.parse_args(argv)
    for name in ("input_len", "output_len", "batch_size", "num_iters"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.num_iters_warmup < 0:
        p.error("--num-iters-warmup must be at least 0")
    return args


def rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class EngineRun:
    """One timed generate() pass; prefill and decode step times come from the phase events."""

    def __init__(self, llm, prompts, params):
        self.llm, self.prompts, self.params = llm, prompts, params
        self.steps: list = []
        llm.llm_engine.events.subscribe(lambda e: self.steps.append(e.record) if e.kind == "end" else None)

    def __call__(self) -> dict:
        self.steps.clear()
        t = time.perf_counter()
        self.llm.generate(self.prompts, self.params, use_tqdm=False)
        total = time.perf_counter() - t
        pre = [e.wall_end - e.wall_start for e in self.steps if e.phase == "prefill"]
        dec = [e for e in self.steps if e.phase == "decode"]
        full = [e.wall_end - e.wall_start for e in dec if e.batch_size == len(self.prompts)]
        return dict(total=total, prefill=sum(pre), decode_steps=[e.wall_end - e.wall_start for e in dec],
                    decode_full_batch=full, kv_lens=[(e.kv_len_min, e.kv_len_max) for e in dec])


def hf_model(llm):
    """HF transformers model with the engine's config and exactly its weights (float32, CPU)."""
    import torch
    import transformers
    from tpu_engine.config import REGISTRY
    from tpu_engine.weights import checkpoint_tensors, dummy_tensors
    eng = llm.llm_engine
    cfg, src = eng.model_config, eng.source
    if os.path.isdir(src.name):
        hf_cfg = transformers.AutoConfig.from_pretrained(src.name)
    else:
        raw = dict(REGISTRY[src.name])
        raw.pop("architectures")
        cls = transformers.LlamaConfig if cfg.architecture == "llama" else transformers.Qwen2Config
        hf_cfg = cls(**raw)
    hf_cfg._attn_implementation = "eager"
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf_cfg, torch_dtype=torch.float32)
    tensors = (checkpoint_tensors(src.weights_dir, cfg) if src.weights_dir
               else dummy_tensors(cfg, eng.config.seed))
    model.load_state_dict({n: torch.from_numpy(np.asarray(t, dtype=np.float32)) for n, t in tensors},
                          strict=False, assign=True)
    if cfg.tie_word_embeddings:
        model.tie_weights()
    model.model.rotary_emb = type(model.model.rotary_emb)(config=hf_cfg)  # rebuild meta buffers
    return model.eval()


def hf_run(model, ids, output_len: int) -> dict:
    """Greedy generation with HF eager: one batched prefill, then one forward per token."""
    import torch
    from transformers import DynamicCache
    with torch.inference_mode():
        t = time.perf_counter()
        out = model(ids, past_key_values=DynamicCache(), use_cache=True)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        prefill = time.perf_counter() - t
        steps = []
        for _ in range(output_len - 1):
            s = time.perf_counter()
            out = model(nxt, past_key_values=out.past_key_values, use_cache=True)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            steps.append(time.perf_counter() - s)
    return dict(total=time.perf_counter() - t, prefill=prefill, decode_steps=steps)


def describe(name: str, runs: list[dict], batch: int) -> dict:
    totals = np.array([r["total"] for r in runs])
    steps = np.concatenate([r["decode_steps"] for r in runs]) if runs[0]["decode_steps"] else np.array([])
    prefill = np.array([r["prefill"] for r in runs])
    print(f"\n[{name}]")
    print(f"  Avg latency: {totals.mean():.4f} s")
    for p in PERCENTILES:
        print(f"  {p}% percentile latency: {np.percentile(totals, p):.4f} s")
    print(f"  Prefill (whole batch): mean {prefill.mean() * 1e3:.2f} ms, p50 {np.percentile(prefill, 50) * 1e3:.2f} ms")
    fig = dict(latency_mean_s=float(totals.mean()), prefill_mean_s=float(prefill.mean()))
    if steps.size:
        tps = batch / steps.mean()
        print(f"  Decode step: mean {steps.mean() * 1e3:.2f} ms, p50 {np.percentile(steps, 50) * 1e3:.2f} ms, "
              f"p99 {np.percentile(steps, 99) * 1e3:.2f} ms ({tps:.1f} tokens/s at batch {batch})")
        fig.update(decode_step_mean_s=float(steps.mean()), decode_tokens_per_s=float(tps))
    return fig


def checked_config(args):
    """The engine's settings for this workload (warm-up of just its shapes), checked before
    anything loads."""
    from tpu_engine.scheduler import ExpectedRequests
    config = engine_config(args, max_num_seqs=args.batch_size, max_model_len=args.input_len + args.output_len,
                           expected=ExpectedRequests(((args.input_len, args.output_len),) * args.batch_size))
    limits = config.limits
    if args.input_len > limits.max_prefill or args.input_len + args.output_len > limits.max_model_len:
        raise ValueError(f"input length {args.input_len} + output length {args.output_len} does not fit "
                         f"max_model_len {limits.max_model_len} (longest prompt {limits.max_prefill}).")
    return config


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.side_by_side:
        from .side_by_side import run_side_by_side
        return run_side_by_side(args)
    from tpu_engine import LLM, SamplingParams
    config = checked_config(args)
    from tpu_engine.backends import registry
    registry.get(args.backend).device_count()  # start the runtime: the baseline includes it
    baseline_rss = rss_bytes()
    print("loading the model and compiling every shape it will use...", flush=True)
    t0 = time.perf_counter()
    llm = LLM.from_config(config)
    eng = llm.llm_engine
    ready_s, stats = time.perf_counter() - t0, eng.warmup_stats
    print(f"ready in {ready_s:.1f} s, {eng.warmup_s:.1f} s of it warm-up ({stats.compiles} XLA graphs built, "
          f"{stats.compile_time_s:.1f} s of it in XLA; persistent cache {stats.cache_hits} hits, "
          f"{stats.cache_misses} misses)")
    params = SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=args.output_len)
    rng = np.random.default_rng(args.seed)
    ids = rng.integers(0, min(10000, eng.model_config.vocab_size), size=(args.batch_size, args.input_len))
    prompts = [{"prompt_token_ids": row} for row in ids.tolist()]
    for p in prompts:
        eng.validate(p, params)
    print(f"model {args.model} ({eng.source.description}); batch {args.batch_size}, "
          f"input {args.input_len}, output {args.output_len}; device {eng.runner.device_kind}")
    ours = EngineRun(llm, prompts, params)
    ours()
    engine_rss = rss_bytes()  # the engine's peak, before any HF model exists
    hf = hf_ids = None
    if args.compare_hf:
        import torch
        hf, hf_ids = hf_model(llm), torch.tensor(ids)
    runs, hf_runs = [], []
    for i in range(args.num_iters_warmup + args.num_iters):
        r = ours()
        h = hf_run(hf, hf_ids, args.output_len) if hf is not None else None
        if i >= args.num_iters_warmup:
            runs.append(r)
            if h:
                hf_runs.append(h)
    figures = {"args": vars(args), "engine": describe(f"tpu_engine ({args.backend})", runs, args.batch_size),
               "startup": dict(ready_s=ready_s, warmup_s=eng.warmup_s, compiles=stats.compiles, compile_time_s=stats.compile_time_s,
                               cache_hits=stats.cache_hits, cache_misses=stats.cache_misses)}
    weights, kv = eng.runner.weight_bytes(), eng.runner.kv_cache_bytes()
    figures["memory"] = dict(weights_bytes=weights, kv_cache_bytes=kv, baseline_rss_bytes=baseline_rss,
                             peak_rss_bytes=engine_rss)
    print(f"\n[memory] weights {weights / 2**20:.1f} MiB, KV cache {kv / 2**20:.1f} MiB, runtime baseline "
          f"{baseline_rss / 2**20:.1f} MiB, peak RSS {engine_rss / 2**20:.1f} MiB"
          + f"; bound 1.3 x (weights + KV) + baseline = {(1.3 * (weights + kv) + baseline_rss) / 2**20:.1f} MiB")
    if hf is not None:
        figures["hf"] = describe("HF transformers eager", hf_runs, args.batch_size)
        figures["roofline"] = roofline(eng, runs, figures)
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(figures, f, indent=2, default=str)


def roofline(eng, runs, figures) -> dict:
    from profiling.analysis.roofline import decode_bytes, prefill_flops
    from profiling.capture.peaks import measure_bandwidth, measure_matmul
    cfg, args = eng.model_config, figures["args"]
    bw, peak = measure_bandwidth(), measure_matmul()
    ours, hf = figures["engine"], figures["hf"]
    out = dict(bandwidth_bytes_per_s=bw, matmul_flops_per_s=peak)
    print(f"\n[roofline] measured now: memory read bandwidth {bw / 1e9:.2f} GB/s, "
          f"float32 matmul {peak / 1e9:.1f} GFLOP/s")
    prefill_s = ours["prefill_mean_s"] / args["batch_size"]  # engine prefills one request per step
    flops = prefill_flops(cfg, args["input_len"])
    out["prefill_flops_per_s"] = flops / prefill_s
    print(f"  prefill: {flops / 1e9:.2f} GFLOP per request in {prefill_s * 1e3:.2f} ms = "
          f"{flops / prefill_s / 1e9:.1f} GFLOP/s, {flops / prefill_s / peak:.0%} of matmul peak")
    print(f"  prefill tokens/s vs HF: {hf['prefill_mean_s'] / ours['prefill_mean_s']:.2f}x")
    if "decode_step_mean_s" in ours:
        full = np.concatenate([r["decode_full_batch"] for r in runs])
        kv_mid = [args["input_len"] + args["output_len"] // 2] * args["batch_size"]
        nbytes = decode_bytes(cfg, kv_mid, eng.runner.dtype.itemsize)
        bound = nbytes / bw
        out.update(decode_bytes_per_step=nbytes, decode_bound_s=bound,
                   decode_vs_bound=bound / full.mean(),
                   decode_speedup_vs_hf=hf["decode_step_mean_s"] / ours["decode_step_mean_s"])
        print(f"  decode: {nbytes / 2**20:.1f} MiB read per step -> bound {bound * 1e3:.2f} ms; measured "
              f"{full.mean() * 1e3:.2f} ms = {bound / full.mean():.0%} of the bandwidth bound")
        print(f"  decode tokens/s vs HF: {out['decode_speedup_vs_hf']:.2f}x at batch {args['batch_size']}")
    return out


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
