"""Shared command-line pieces: the engine's flags (vLLM's names) and clean error exits."""
from __future__ import annotations

import argparse
import socket
import sys
from typing import Any, Callable

from .config import DEFAULT_MODEL


def add_engine_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = parser.add_argument_group("engine")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help="local HF model dir, or a model id (HF cache, or built-in config with --load-format dummy)")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    g.add_argument("--max-model-len", type=int, default=None)
    g.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    g.add_argument("--enforce-eager", action="store_true",
                   help="trace every step lazily instead of capturing it once with dynamo "
                        "(slower host side; module names in the HLO metadata)")
    g.add_argument("--load-format", default="auto", choices=["auto", "safetensors", "dummy"])
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--max-num-seqs", type=int, default=None, help="decode slots (default 8; profiling.py: the batch size); more requests wait in the queue")
    g.add_argument("--max-num-batched-tokens", type=int, default=None)
    g.add_argument("--compilation-cache-dir", default=None,
                   help="persistent XLA compilation cache (default on TPU: ~/.cache/tpu_engine/xla_cache)")
    return parser


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kw = dict(dtype=args.dtype, max_model_len=args.max_model_len,
              tensor_parallel_size=args.tensor_parallel_size, enforce_eager=args.enforce_eager,
              load_format=args.load_format, seed=args.seed,
              max_num_batched_tokens=args.max_num_batched_tokens,
              compilation_cache_dir=args.compilation_cache_dir)
    if args.max_num_seqs is not None:
        kw["max_num_seqs"] = args.max_num_seqs
    return kw


def run_cli(main: Callable[[], Any]) -> None:
    """Run `main`; a ValueError (bad flag, model, limit) is one line on stderr and exit 2."""
    try:
        main()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def check_port(what: str, port: int, flag: str, host: str = "") -> None:
    """ValueError unless `port` is a valid TCP port that nothing listens on."""
    if not 1 <= port <= 65535:
        raise ValueError(f"{what} {port} is not a valid TCP port (1-65535).")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            raise ValueError(f"{what} {port} is already in use; choose another with {flag}.") from None
