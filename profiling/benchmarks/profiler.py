"""Profiler overhead, measured side by side: unprofiled and profiled passes alternate on one
engine, so machine noise hits both alike.

Prints the mean latency ratio (profiled / unprofiled), the capture's size per engine step, and
the time from the end of a pass to its capture being on disk (export + verification).
    python scripts/benchmark_profiler.py --batch-size 8 --input-len 32 --output-len 64
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time

from tpu_engine.cli import add_engine_args, engine_config, run_cli


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--pairs", type=int, default=5, help="unprofiled/profiled pass pairs")
    p.add_argument("--profile-phase", choices=["prefill", "decode", "all"], default="all")
    p.add_argument("--output-json", default=None)
    add_engine_args(p)
    return p.parse_args(argv)


def main(argv=None) -> None:
    from profiling.capture import workload
    from profiling.capture.profilers import profiler_of
    from profiling.capture.verify import check_capture
    from profiling.capture.phase_window import PhaseWindow
    from profiling.runs.parts import Window
    from tpu_engine import LLM, SamplingParams
    args = parse_args(argv)
    llm = LLM.from_config(engine_config(args))
    engine = llm.llm_engine
    prompts = workload.random_prompts(args.batch_size, args.input_len, engine.model_config.vocab_size, args.seed)
    params = SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=args.output_len)

    def one_pass() -> float:
        t = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        return time.perf_counter() - t

    one_pass()  # first pass after warm-up: page in everything once
    plain, profiled, sizes, written = [], [], [], []
    tmp = tempfile.mkdtemp(prefix="profiler-overhead-")
    try:
        for i in range(args.pairs):
            plain.append(one_pass())
            window = PhaseWindow(Window("phase", phase=args.profile_phase), profiler_of(engine), i)
            off = engine.events.subscribe(window.on_event)
            window.begin(os.path.join(tmp, str(i)))
            try:
                profiled.append(one_pass())
            finally:
                window.end()
                off()
            t = time.perf_counter()
            check = check_capture(window.export().run_dir)
            written.append(time.perf_counter() - t)
            sizes.append(check.bytes / max(1, check.num_steps))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ratios = [p / u for p, u in zip(profiled, plain)]
    fig = dict(unprofiled_mean_s=statistics.fmean(plain), profiled_mean_s=statistics.fmean(profiled),
               ratio_of_means=statistics.fmean(profiled) / statistics.fmean(plain),
               ratio_median=statistics.median(ratios), bytes_per_step=statistics.fmean(sizes),
               capture_on_disk_s=statistics.fmean(written), pairs=args.pairs, phase=args.profile_phase)
    print(f"unprofiled pass: {fig['unprofiled_mean_s']:.4f}s   profiled pass: {fig['profiled_mean_s']:.4f}s")
    print(f"profiled / unprofiled: {fig['ratio_of_means']:.3f} (median of pairs {fig['ratio_median']:.3f})")
    print(f"capture size per step: {fig['bytes_per_step'] / 1e3:.1f} KB")
    print(f"end of pass to verified capture on disk: {fig['capture_on_disk_s']:.3f}s")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(fig, f, indent=2)


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
