"""`python -m tpu_engine.serve` (also `tpu-engine-serve`): load the model, warm up every shape,
then serve the OpenAI completions and chat completions API until interrupted."""
from __future__ import annotations

import argparse
import signal
import sys

from ..cli import add_engine_args, check_port, engine_config, run_cli
from .limits import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_WAITING, Limits
from .security import API_KEY_ENV, api_keys


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tpu_engine.serve", description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all interfaces)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", nargs="+", default=None,
                   help="one or more names the API accepts as `model` (default: --model); responses "
                        "echo the name asked for, and metrics carry the first")
    p.add_argument("--tokenizer", default=None,
                   help="dir or tokenizer.json for text prompts and chat (default: the model dir's; the "
                        "built-in default model has one shipped with the package)")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--api-key", nargs="+", default=None,
                   help=f"require `Authorization: Bearer KEY` on every route but /health, /version, /metrics "
                        f"and the docs (default: ${API_KEY_ENV}; unset: no key)")
    p.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                   help=f"largest request body accepted (default {DEFAULT_MAX_BODY_BYTES}); larger is a 400")
    p.add_argument("--max-waiting-queue-length", type=int, default=DEFAULT_MAX_WAITING,
                   help=f"sequences that may wait for a decode slot (default {DEFAULT_MAX_WAITING}); a request "
                        f"beyond it is a 503 with Retry-After")
    add_engine_args(p)
    return p.parse_args(argv)


def _limits(args) -> Limits:
    for flag, value in (("--max-request-bytes", args.max_request_bytes),
                        ("--max-waiting-queue-length", args.max_waiting_queue_length)):
        if value < 1:
            raise ValueError(f"{flag} {value} must be a positive integer.")
    return Limits(args.max_request_bytes, args.max_waiting_queue_length)


def _terminated(signum, frame) -> None:
    """SIGTERM after uvicorn's graceful stop: uvicorn re-raises the signal it caught once it has
    stopped serving; the default action would kill the process before the shutdown below (the
    engine stop, the plugins' close hooks: a capture still open is saved) could run."""


def main(argv=None) -> None:
    args = parse_args(argv)
    check_port("server port", args.port, "--port", args.host)
    limits = _limits(args)
    from ..engine import LLMEngine
    config = engine_config(args)
    config.limits  # bad model or lengths: fail before anything loads
    from .plugins import check_plugins, setup_plugins
    plugins = check_plugins(args)
    from .api import OpenAIServer
    from .async_engine import AsyncEngine
    from .tokenizer import load_tokenizer

    engine = LLMEngine(config)
    tokenizer = load_tokenizer(args.model, engine.source.weights_dir, args.tokenizer)
    server = OpenAIServer(AsyncEngine(engine), args.served_model_name or [args.model], tokenizer,
                          limits=limits, api_keys=api_keys(args.api_key), host=args.host)
    closers = setup_plugins(plugins, server, args)
    import uvicorn
    server.engine.start()
    print(f"Serving {args.model} on http://{args.host}:{args.port} "
          f"({'text or token-id' if tokenizer else 'token-id'} prompts, {engine.config.max_num_seqs} slots, "
          f"max_model_len {engine.max_model_len})", flush=True)
    signal.signal(signal.SIGTERM, _terminated)  # containers and systemd stop servers with SIGTERM
    try:
        uvicorn.run(server.app, host=args.host, port=args.port, log_level=args.log_level)
    finally:
        server.engine.shutdown()  # the current step finishes first; then the plugins close
        for close in closers:
            close()
    if server.engine.error is not None:
        sys.exit(1)


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
