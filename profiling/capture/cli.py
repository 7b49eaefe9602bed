"""Capture XLA profiles of prefill and decode for TensorBoard.

    python -m profiling capture --input-len 1024 --output-len 1 --batch-size 1
    (the same: python scripts/profiling.py ..., tpu-profiling ...)
    tensorboard --logdir profiles

Flags follow vLLM's TPU profiling example; VLLM_TPU_PROFILE_DELAY_MS and
VLLM_TPU_PROFILE_DURATION_MS set a detached capture window as there. `--profile-phase` captures
exactly the prefill or decode steps instead, started and stopped at the engine's step boundaries.
The layer-wise example's schedules are subcommands: `run_num_steps -n N`, `run_to_completion -n K`.
"""
from __future__ import annotations

import argparse
import os
import sys

from tpu_engine.backends import registry
from tpu_engine.cli import PROFILER_PORT, add_engine_args, run_cli

from .windows import plan_window

MAX_PASSES = 1_000_000


LOOPBACK, ALL_INTERFACES = ("127.0.0.1", "localhost", "::1"), ("0.0.0.0", "::")


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """vLLM's TPU profiling flags, the capture windows, the engine's flags and the schedules."""
    p.description = __doc__.splitlines()[0]
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "\n".join(__doc__.splitlines()[1:])
    p.add_argument("--input-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-iters-warmup", type=int, default=5, help="unprofiled passes first")
    p.add_argument("--num-iters", type=int, default=1, help="profiled passes")
    p.add_argument("--profile-result-dir", default="profiles",
                   help="TensorBoard log dir; captures go to <dir>/plugins/profile/<run>/")
    p.add_argument("--profiler-port", type=int, default=PROFILER_PORT)
    p.add_argument("--profiler-host", default="127.0.0.1",
                   help="where XLA's profiler server may be reached: the default, loopback, starts no server "
                        "(XLA's server cannot bind one address, only all of them) and the env window is traced "
                        "in process; 0.0.0.0 starts it on --profiler-port on all interfaces, for TensorBoard's "
                        "capture button")
    g = p.add_argument_group("exact capture windows (ignored when the VLLM_TPU_PROFILE_* env window is set)")
    g.add_argument("--profile-phase", choices=["prefill", "decode", "all"], default=None,
                   help="capture exactly these steps of each profiled pass")
    g.add_argument("--profile-steps", type=int, default=None, metavar="N",
                   help="stop after N matching steps")
    g.add_argument("--profile-min-batch", type=int, default=1, metavar="B",
                   help="only decode steps with at least B sequences")
    g.add_argument("--profile-min-kv-len", type=int, default=0, metavar="L",
                   help="only decode steps whose longest context is at least L tokens")
    add_engine_args(p)
    sub = p.add_subparsers(dest="mode", metavar="{run_num_steps,run_to_completion}")
    s = sub.add_parser("run_num_steps", help="every request runs N engine steps (full batch throughout)")
    s.add_argument("-n", type=int, required=True, help="engine steps per request (prefill + N-1 decodes)")
    s = sub.add_parser("run_to_completion", help="K requests finish per decode step")
    s.add_argument("-n", type=int, required=True, help="requests finishing per decode step")
    return p


def check_args(args: argparse.Namespace, error) -> argparse.Namespace:
    """Values argparse cannot check; `error` is the parser's (usage, then exit 2)."""
    args.mode = args.mode or "generate"
    if args.mode == "generate":
        args.n = None
    checks = [("input_len", 1), ("output_len", 1), ("batch_size", 1), ("num_iters", 1),
              ("num_iters_warmup", 0), ("profile_min_batch", 1), ("profile_min_kv_len", 0)]
    for name, least in checks:
        if getattr(args, name) < least:
            error(f"--{name.replace('_', '-')} {getattr(args, name)} must be at least {least}.")
    if args.profile_steps is not None and args.profile_steps < 1:
        error(f"--profile-steps {args.profile_steps} must be at least 1.")
    if args.n is not None and args.n < 1:
        error(f"{args.mode} -n {args.n} must be at least 1.")
    for name in ("num_iters", "num_iters_warmup"):  # passes are counted with C integers (tqdm, range)
        if getattr(args, name) > MAX_PASSES:
            error(f"--{name.replace('_', '-')} {getattr(args, name)} must be at most {MAX_PASSES}.")
    if not 0 <= args.seed <= 2 ** 63 - 1:  # numpy and torch take a non-negative 64-bit seed
        error(f"--seed {args.seed} must be from 0 to {2 ** 63 - 1}.")
    if args.compilation_cache_dir is not None and not args.compilation_cache_dir.strip():
        error("--compilation-cache-dir is empty; expected a directory.")
    if not args.profile_result_dir.strip():  # "" would silently mean the current directory
        error("--profile-result-dir is empty; expected a directory (\".\" for the current one).")
    if not 1 <= args.profiler_port <= 65535:
        error(f"--profiler-port {args.profiler_port} is not a TCP port (1-65535).")
    if args.profiler_host not in LOOPBACK + ALL_INTERFACES:
        error(f"--profiler-host {args.profiler_host!r} cannot be honoured: XLA's profiler server listens on "
              f"all interfaces or not at all; use 127.0.0.1 (no server) or 0.0.0.0.")
    plan_window(args, quiet=True)  # the env window's values: a ValueError now, not after the model loads
    return args


def run(args: argparse.Namespace) -> int:
    """One profiling run; returns the exit status."""
    for var in registry.get(args.backend).capture_env:
        # torch_xla: module names reach the HLO op metadata (and so the layer tables) only with
        # XLA_HLO_DEBUG set before it starts; the compiled path pays for it once, at compile time.
        if var.name not in os.environ:
            os.environ[var.name] = var.value
            print(f"note: {var.note}")
    from .offline import Profiler
    return Profiler(args).run()


def main(argv=None) -> int:
    p = add_arguments(argparse.ArgumentParser())
    return run(check_args(p.parse_args(argv), p.error))


def cli() -> None:
    run_cli(lambda: sys.exit(main()))


if __name__ == "__main__":
    cli()
