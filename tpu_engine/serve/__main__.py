"""`python -m tpu_engine.serve` (also `tpu-engine-serve`): load the model, warm up every shape,
then serve the OpenAI completions and chat completions API until interrupted."""
from __future__ import annotations

import argparse
import sys

from ..cli import add_engine_args, check_port, engine_config, run_cli


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
    add_engine_args(p)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    check_port("server port", args.port, "--port", args.host)
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
    server = OpenAIServer(AsyncEngine(engine), args.served_model_name or [args.model], tokenizer)
    closers = setup_plugins(plugins, server, args)
    import uvicorn
    server.engine.start()
    print(f"Serving {args.model} on http://{args.host}:{args.port} "
          f"({'text or token-id' if tokenizer else 'token-id'} prompts, {engine.config.max_num_seqs} slots, "
          f"max_model_len {engine.max_model_len})", flush=True)
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
