"""Shared command-line pieces: the engine's flags (vLLM's names) and clean error exits."""
from __future__ import annotations

import argparse
import errno
import socket
import sys
from typing import Any, Callable

from .backends import registry
from .config import DEFAULT_MODEL


def add_engine_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = parser.add_argument_group("engine")
    g.add_argument("--backend", default=registry.DEFAULT, choices=registry.names(),
                   help=f"the XLA front end that compiles and runs the model (default {registry.DEFAULT})")
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
    g.add_argument("--enable-prompt-logprobs", action="store_true",
                   help="compile the LM head over every prompt position at warm-up, so requests may ask for "
                        "prompt logprobs (echo with logprobs, prompt_logprobs) with no compile after warm-up")
    g.add_argument("--compilation-cache-dir", default=None,
                   help="persistent XLA compilation cache (default on TPU: ~/.cache/tpu_engine/xla_cache)")
    return parser


def engine_config(args: argparse.Namespace, **defaults: Any):
    """The EngineConfig the engine flags ask for, made once: `defaults` fill what a flag left
    unset (a command's own default, e.g. one decode slot per request of a batch)."""
    from .engine import EngineConfig
    kw = dict(model=args.model, backend=args.backend, dtype=args.dtype, tensor_parallel_size=args.tensor_parallel_size,
              enforce_eager=args.enforce_eager, load_format=args.load_format, seed=args.seed,
              compilation_cache_dir=args.compilation_cache_dir,
              enable_prompt_logprobs=args.enable_prompt_logprobs, **defaults)
    for name in ("max_model_len", "max_num_seqs", "max_num_batched_tokens"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    return EngineConfig(**kw)


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


PROFILER_PORT = 9012  # the profiler server's port (--profiler-port), for every backend


def check_profiler_port(port: int) -> None:
    check_port("profiler port", port, "--profiler-port")


def check_port(what: str, port: int, flag: str, host: str = "") -> None:
    """ValueError unless `port` is a valid TCP port that nothing listens on at `host`. The probe
    binds as a server does (SO_REUSEADDR), so a port a closed server left in TIME_WAIT is free."""
    if not 1 <= port <= 65535:
        raise ValueError(f"{what} {port} is not a valid TCP port (1-65535).")
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, ValueError) as e:
        reason = e.strerror if isinstance(e, socket.gaierror) else "not a valid host name"
        raise ValueError(f"host {host!r} cannot be resolved ({reason}); give an address such as "
                         f"127.0.0.1 or 0.0.0.0 with --host.") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ValueError(f"{what} {port} is already in use; choose another with {flag}.") from None
            raise ValueError(f"host {host!r} cannot be listened on ({e.strerror}); give an address of "
                             f"this machine with --host.") from None
