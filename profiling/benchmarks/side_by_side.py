"""Both backends side by side (`benchmark_latency.py --side-by-side`): one table of figures
measured in this run, in alternating fresh processes so machine noise hits both alike.

For each batch size (1 and --batch-size), each backend starts twice on one new persistent
compilation cache: cold (empty cache), then warm. Each start times its warm-up and then its
latency passes (with --compare-hf, HF transformers eager alternates with the engine in the same
process, on the same weights), and reports its peak RSS. Then benchmark_profiler.py measures
profiled / unprofiled per backend. Order: torch_xla cold, jax cold, torch_xla warm, jax warm.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from tpu_engine.backends import registry

BACKENDS = tuple(registry.names())


def _common(args) -> list[str]:
    out = ["--model", args.model, "--load-format", args.load_format, "--dtype", args.dtype,
           "--input-len", str(args.input_len), "--output-len", str(args.output_len), "--seed", str(args.seed)]
    # The profiler benchmark warms up every shape up to max_model_len: keep it to the workload.
    return out + ["--max-model-len", str(args.max_model_len or args.input_len + args.output_len)]


def _child(module: str, argv: list[str], out_json: str) -> dict:
    cmd = [sys.executable, "-m", module, *argv, "--output-json", out_json]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    with open(out_json) as f:
        return json.load(f)


def _latency_runs(args, tmp: str, batch: int) -> dict:
    """{backend: {"cold": figures, "warm": figures}} for one batch size."""
    caches = {b: os.path.join(tmp, f"cache-{b}-{batch}") for b in BACKENDS}
    runs: dict = {b: {} for b in BACKENDS}
    for start in ("cold", "warm"):
        for backend in BACKENDS:
            argv = _common(args) + ["--backend", backend, "--batch-size", str(batch),
                                    "--num-iters", str(args.num_iters),
                                    "--num-iters-warmup", str(args.num_iters_warmup),
                                    "--compilation-cache-dir", caches[backend]]
            if args.compare_hf:
                argv.append("--compare-hf")
            print(f"  {backend}, batch {batch}, {start} cache...", file=sys.stderr, flush=True)
            runs[backend][start] = _child("profiling.benchmarks.latency", argv,
                                          os.path.join(tmp, f"{backend}-{batch}-{start}.json"))
    return runs


def _row(label: str, values: list[str]) -> str:
    return f"  {label:<34}" + "".join(f"{v:>14}" for v in values)


def _mean(*xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _ms(x) -> str:
    return "-" if x is None else f"{x * 1e3:.2f} ms"


def _print_batch(batch: int, runs: dict, compare_hf: bool) -> dict:
    cols = list(BACKENDS) + (["HF eager"] if compare_hf else [])
    print(f"\n[batch {batch}]")
    print(_row("", cols))
    table = {}
    for key, what in (("prefill_mean_s", "prefill (whole batch)"), ("decode_step_mean_s", "decode step")):
        vals = [_mean(runs[b]["cold"]["engine"].get(key), runs[b]["warm"]["engine"].get(key)) for b in BACKENDS]
        if compare_hf:
            vals.append(_mean(*[runs[b][s]["hf"].get(key) for b in BACKENDS for s in ("cold", "warm")]))
        table[key] = dict(zip(cols, vals))
        print(_row(what, [_ms(v) for v in vals]))
    for key, what in (("ready_s", "start-up"), ("warmup_s", "warm-up")):  # start-up = load + warm-up
        for start in ("cold", "warm"):
            vals = [runs[b][start]["startup"][key] for b in BACKENDS]
            table[f"{key[:-2]}_{start}_s"] = dict(zip(BACKENDS, vals))
            hits = [runs[b][start]["startup"]["cache_hits"] for b in BACKENDS]
            print(_row(f"{what}, {start} cache (hits)", [f"{v:.2f} s ({h})" for v, h in zip(vals, hits)]))
        ratio = [runs[b]["warm"]["startup"][key] / runs[b]["cold"]["startup"][key] for b in BACKENDS]
        table[f"{key[:-2]}_warm_over_cold"] = dict(zip(BACKENDS, ratio))
        print(_row(f"warm / cold {what}", [f"{r:.2f}" for r in ratio]))
    peaks = [max(runs[b][s]["memory"]["peak_rss_bytes"] for s in ("cold", "warm")) for b in BACKENDS]
    table["peak_rss_bytes"] = dict(zip(BACKENDS, peaks))
    print(_row("peak RSS (engine, before HF)", [f"{p / 2**20:.0f} MiB" for p in peaks]))
    return table


def _overhead(args, tmp: str) -> dict:
    out = {}
    for backend in BACKENDS:
        # 9 pairs: with 3, the median ratio moved by 0.15 between runs on a 2-core machine.
        argv = _common(args) + ["--backend", backend, "--batch-size", str(args.batch_size), "--pairs", "9"]
        print(f"  {backend}, profiled vs unprofiled...", file=sys.stderr, flush=True)
        out[backend] = _child("profiling.benchmarks.profiler", argv, os.path.join(tmp, f"overhead-{backend}.json"))
    print(f"\n[profiler overhead, batch {args.batch_size}]")
    print(_row("", list(BACKENDS)))
    print(_row("profiled / unprofiled (median)", [f"{out[b]['ratio_median']:.3f}" for b in BACKENDS]))
    return {b: out[b]["ratio_median"] for b in BACKENDS}


def run_side_by_side(args) -> None:
    print(f"model {args.model}; input {args.input_len}, output {args.output_len}; "
          f"load average {os.getloadavg()[0]:.2f} at start", flush=True)
    figures = {}
    with tempfile.TemporaryDirectory(prefix="side-by-side-") as tmp:
        for batch in sorted({1, args.batch_size}):
            figures[f"batch_{batch}"] = _print_batch(batch, _latency_runs(args, tmp, batch), args.compare_hf)
        figures["profiled_over_unprofiled"] = _overhead(args, tmp)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(figures, f, indent=2)
