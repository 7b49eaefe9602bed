"""Load test for the OpenAI-compatible server: streamed random-prompt completions, timed per request.

Sends `--num-prompts` completions of random token ids (lengths around `--random-input-len` and
`--random-output-len`, greedy, ignore_eos) to `/v1/completions` with streaming, all at once or as
Poisson arrivals at `--request-rate` per second, at most `--max-concurrency` in flight. Prints
throughput and TTFT, TPOT, ITL and end-to-end latency (mean, p50, p90, p99):
    python -m tpu_engine.serve --max-model-len 64 --max-num-seqs 4 --port 8000 &
    python scripts/benchmark_serving.py --num-prompts 50 --random-input-len 16 --random-output-len 16

`--prompt-kind text` sends the prompts as text (random words, one per token id drawn), as
`vllm bench serve --dataset-name random` does; `--backend openai-chat` sends them as chat
messages to `/v1/chat/completions` (vLLM's backend names; `openai` is `/v1/completions`).
`--profile` wraps the run in POST /start_profile and /stop_profile. `--service-profiler-config
FILE --toggle-rounds N` measures the service profiler's overhead: 2*N rounds of the same
workload, after one untimed warm-up round, with the file's "enable" alternately 0 and 1 (the
server re-reads it while running), then per-mode medians and the on/off ratios.
Modelled on vLLM's benchmarks/benchmark_serving.py.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time

import httpx

from tpu_engine.cli import run_cli

from ..table import number_ranges
from .load import (Record, Request, auth_headers, error_text, make_workload, print_table, run_workload,
                   summarize)

PERCENTILES = (50, 90, 99)           # always shown
FLIP_WAIT_S = 1.5                    # the server re-reads the profiler config every 0.5 s by default


class RunError(Exception):
    """The run itself failed (a profile endpoint refused, every request failed): printed plainly, exit 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line `error: ...` and exit 2 (run_cli), not usage + message
        raise ValueError(f"{message}.")


def parse_args(argv=None) -> argparse.Namespace:
    p = _Parser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", default=None, help="server URL (default: http://HOST:PORT)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", default=None, help="sent as the request's model field")
    p.add_argument("--dataset-name", default="random", choices=["random"])
    p.add_argument("--backend", default="openai", choices=["openai", "openai-chat"],
                   help="openai: /v1/completions; openai-chat: /v1/chat/completions (text messages)")
    p.add_argument("--prompt-kind", default="ids", choices=["ids", "text"],
                   help="completion prompts as token ids or as text (chat always sends text)")
    p.add_argument("--random-input-len", type=int, default=32)
    p.add_argument("--random-output-len", type=int, default=32)
    p.add_argument("--random-range-ratio", type=float, default=0.0,
                   help="lengths uniform in [len*(1-r), len*(1+r)], 0 <= r < 1")
    p.add_argument("--num-prompts", type=int, default=100)
    p.add_argument("--vocab-size", type=int, default=1000, help="token ids are drawn from [1, vocab-size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--request-rate", type=float, default=float("inf"),
                   help="mean requests per second, Poisson arrivals (default inf: all at once)")
    p.add_argument("--max-concurrency", type=int, default=None, help="most requests in flight")
    p.add_argument("--metric-percentiles", default="",
                   help="extra percentiles to show, comma-separated (e.g. 95,99.9); 50, 90, 99 always")
    p.add_argument("--profile", action="store_true", help="POST /start_profile before, /stop_profile after")
    p.add_argument("--service-profiler-config", default=None, help="the service profiler's JSON config file")
    p.add_argument("--toggle-rounds", type=int, default=0,
                   help="A/B mode: N rounds with enable=0 and N with enable=1, alternating (0: off)")
    p.add_argument("--result-json", default=None, help="write every figure and per-request record here")
    p.add_argument("--disable-tqdm", action="store_true")
    return _checked(p.parse_args(argv))


def _checked(args: argparse.Namespace) -> argparse.Namespace:
    """Values argparse cannot check; ValueError (one line, exit 2) on the first bad one."""

    for name in ("num_prompts", "random_input_len", "random_output_len"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(args, name)}.")
    if args.vocab_size < 2:
        raise ValueError(f"--vocab-size must be at least 2 (ids come from [1, vocab-size)), not {args.vocab_size}.")
    if not 0 <= args.random_range_ratio < 1:
        raise ValueError(f"--random-range-ratio must be in [0, 1), not {args.random_range_ratio}.")
    if math.isnan(args.request_rate) or args.request_rate <= 0:
        raise ValueError(f"--request-rate must be a positive number or inf, not {args.request_rate}.")
    if args.max_concurrency is not None and args.max_concurrency < 1:
        raise ValueError(f"--max-concurrency must be at least 1, not {args.max_concurrency}.")
    if args.temperature < 0:
        raise ValueError(f"--temperature must be at least 0, not {args.temperature}.")
    if args.toggle_rounds < 0:
        raise ValueError(f"--toggle-rounds must be at least 0, not {args.toggle_rounds}.")
    if bool(args.toggle_rounds) != bool(args.service_profiler_config):
        raise ValueError("--service-profiler-config and --toggle-rounds go together (A/B mode needs both).")
    if args.toggle_rounds and args.profile:
        raise ValueError("--profile and the --toggle-rounds A/B mode cannot be combined.")
    bad = f"--metric-percentiles must be numbers between 0 and 100, comma-separated, not {args.metric_percentiles!r}."
    try:
        extra = [float(x) for x in args.metric_percentiles.split(",") if x.strip()]
    except ValueError:
        raise ValueError(bad) from None
    if any(not 0 < q < 100 for q in extra):
        raise ValueError(bad)
    args.percentiles = sorted(set(PERCENTILES) | set(extra))
    args.base_url = (args.base_url or f"http://{args.host}:{args.port}").rstrip("/")
    return args


# ---- the server ----------------------------------------------------------------------------------
def check_server(args, workload: list[Request]) -> dict:
    """The served model (GET /v1/models); ValueError if the server is unreachable or the workload
    cannot fit its max_model_len."""
    try:
        health = httpx.get(args.base_url + "/health", timeout=10)
        models = httpx.get(args.base_url + "/v1/models", timeout=10, headers=auth_headers())
    except httpx.HTTPError as e:
        raise ValueError(f"cannot reach the server at {args.base_url} ({type(e).__name__}: {e}).") from None
    if health.status_code != 200 or models.status_code != 200:
        bad = health if health.status_code != 200 else models
        why = error_text(bad.content, bad.status_code)
        raise ValueError(f"the server at {args.base_url} is not healthy ({why}).")
    try:
        listed = models.json()["data"]
        model = listed[0]
        names = [m["id"] for m in listed]
    except (ValueError, KeyError, IndexError, TypeError):
        raise ValueError(f"{args.base_url}/v1/models did not list a served model.") from None
    if args.model is not None and args.model not in names:
        raise ValueError(f"--model {args.model!r} is not served; the server serves {', '.join(map(repr, names))}.")
    model = listed[names.index(args.model)] if args.model is not None else model
    need = max(len(r.prompt) + r.output_len for r in workload)
    if model.get("max_model_len") and need > model["max_model_len"]:
        raise ValueError(f"the longest request needs {need} tokens (prompt plus output) but the server's "
                         f"max_model_len is {model['max_model_len']}.")
    return model


def post_control(args, path: str) -> dict:
    try:
        resp = httpx.post(args.base_url + path, timeout=600, headers=auth_headers())
    except httpx.HTTPError as e:
        raise RunError(f"POST {path} failed ({type(e).__name__}: {e}).") from None
    if not 200 <= resp.status_code < 300:
        raise RunError(f"POST {path} failed ({error_text(resp.content, resp.status_code)}).")
    try:
        return resp.json()
    except ValueError:
        return {"response": resp.text}


def read_config(path: str) -> dict:
    try:
        with open(path) as f:
            cfg = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"the service profiler config {path} does not exist.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"the service profiler config {path} is not readable JSON ({e}).") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"the service profiler config {path} must hold a JSON object.")
    return cfg


def set_enable(path: str, cfg: dict, enable: int) -> None:
    """Rewrite the config atomically (temp file in the same dir, then rename) with `enable`."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".bench-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({**cfg, "enable": enable}, f, indent=2)
        shutil.copymode(path, tmp)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


# ---- modes ---------------------------------------------------------------------------------------
def records_json(records: list[Record]) -> list[dict]:
    return [dataclasses.asdict(r) for r in records]


def profile_lines(profile: dict) -> list[str]:
    """/stop_profile's answer in a few lines: the run, then its steps as ranges per phase (the
    step lists, one number per line as JSON, stay in --result-json)."""
    steps = profile.get("steps")
    if not isinstance(steps, dict):
        return ["profile: " + json.dumps(profile)]
    phases = ", ".join(f"{phase} {number_ranges(nums)}" for phase, nums in steps.items() if nums)
    total = sum(len(nums) for nums in steps.values())
    took = profile.get("duration_s")
    took = f" in {took:.2f} s" if isinstance(took, (int, float)) else ""
    lines = [f"profile: {profile.get('run')}",
             f"  captured {total} step{'s' if total != 1 else ''}{took}" + (f": {phases}" if phases else "")]
    lines += [f"  problem: {p}" for p in profile.get("problems") or []]
    return lines


def single_run(args, workload) -> dict:
    profile = None
    if args.profile:
        post_control(args, "/start_profile")
    try:
        records, duration = asyncio.run(run_workload(args, workload))
    finally:
        if args.profile:
            profile = post_control(args, "/stop_profile")
    fig = summarize(records, duration, args.percentiles)
    print_table(fig, args.percentiles, args.max_concurrency)
    if profile is not None:
        print("\n".join(profile_lines(profile)))
    return {**fig, "profile": profile, "requests": records_json(records)}


def ab_run(args, workload, cfg: dict) -> dict:
    path = args.service_profiler_config
    poll_ms = cfg.get("poll_interval_ms")
    wait = max(FLIP_WAIT_S, 3 * poll_ms / 1000 if isinstance(poll_ms, (int, float)) else 0)  # 3 polls
    rounds = []
    try:
        # An untimed first round with enable=0, so that no mode pays for a cold start.
        set_enable(path, cfg, 0)
        time.sleep(wait)
        asyncio.run(run_workload(args, workload, "warm-up"))
        for i in range(2 * args.toggle_rounds):
            enable = i % 2
            set_enable(path, cfg, enable)
            time.sleep(wait)
            records, duration = asyncio.run(run_workload(args, workload, f"round {i + 1} enable={enable}"))
            fig = summarize(records, duration, args.percentiles)
            print(f"round {i + 1:2d} enable={enable}: {fig['completed']} ok, {fig['failed']} failed, "
                  f"{fig['output_throughput']:.1f} output tok/s, p99 E2E {fig['p99_e2el_ms'] or 0:.1f} ms, "
                  f"p99 TTFT {fig['p99_ttft_ms'] or 0:.1f} ms", flush=True)
            rounds.append({"round": i + 1, "enable": enable, **fig, "requests": records_json(records)})
    finally:
        set_enable(path, cfg, 0)
    keys = {"output tok/s": "output_throughput", "p99 E2E ms": "p99_e2el_ms", "p99 TTFT ms": "p99_ttft_ms"}
    modes = {m: [r for r in rounds if r["enable"] == m] for m in (0, 1)}
    summary = {"rounds_per_mode": args.toggle_rounds}
    for key in keys.values():
        vals = {m: [r[key] for r in modes[m] if r[key] is not None] for m in (0, 1)}
        ratios = [on / off for on, off in zip(vals[1], vals[0]) if off]
        summary[f"off_median_{key}"] = statistics.median(vals[0]) if vals[0] else None
        summary[f"on_median_{key}"] = statistics.median(vals[1]) if vals[1] else None
        summary[f"on_off_ratio_{key}"] = statistics.median(ratios) if ratios else None  # of round pairs

    def cell(v, fmt):
        return f"{v:{fmt}}" if v is not None else f"{'n/a':>14}"

    print(f"service profiler A/B, {args.toggle_rounds} rounds per mode (medians over rounds):")
    print(f"{'':<10}" + "".join(f"{k:>14}" for k in keys))
    print(f"{'off (0)':<10}" + "".join(cell(summary[f'off_median_{v}'], '14.2f') for v in keys.values()))
    print(f"{'on (1)':<10}" + "".join(cell(summary[f'on_median_{v}'], '14.2f') for v in keys.values()))
    print(f"{'on/off':<10}" + "".join(cell(summary[f'on_off_ratio_{v}'], '14.3f') for v in keys.values()))
    failed = next((r["first_error"] for r in rounds if r["first_error"]), None)
    if failed:
        print(f"first error: {failed}")
    return {**summary, "rounds": rounds}


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = read_config(args.service_profiler_config) if args.toggle_rounds else None
    workload = make_workload(args)
    model = check_server(args, workload)
    result = ab_run(args, workload, cfg) if args.toggle_rounds else single_run(args, workload)
    config = {k: (str(v) if isinstance(v, float) and math.isinf(v) else v) for k, v in vars(args).items()}
    result = {"config": config, "served_model": model["id"], **result}
    if args.result_json:
        with open(args.result_json, "w") as f:
            json.dump(result, f, indent=2)
    if not args.toggle_rounds and result["completed"] == 0:
        raise RunError("every request failed.")


def cli() -> None:
    try:
        run_cli(main)
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli()
