"""The load a serving benchmark sends: random prompts (token ids, or text as `vllm bench serve`
sends) arriving all at once or as a Poisson process, each sent as a streamed completion or chat
completion and timed (TTFT, TPOT, ITL, end to end), and the figures over all of them."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import time

import httpx
import numpy as np

METRICS = ("ttft", "tpot", "itl", "e2el")
ENDPOINTS = {"openai": "/v1/completions", "openai-chat": "/v1/chat/completions"}  # vLLM's --backend names
# Text prompts: random words, each one token or a few in most tokenizers.
WORDS = ("the of and to in is it that for on with as at by this from be are was or an have not but "
         "what all were when we there can more if out so up time into has two may like its over "
         "first water been call who now find long down day did get come made part model server token").split()


# ---- workload ------------------------------------------------------------------------------------
@dataclasses.dataclass
class Request:
    prompt: list[int]    # token ids; for text prompts, ids of the same length (only the length counts)
    output_len: int      # max_tokens asked for; with ignore_eos the server returns exactly this
    arrival_s: float     # send time, seconds after the start of the run
    text: str | None = None  # the prompt as text (--prompt-kind text, and always for chat)


def auth_headers() -> dict[str, str]:
    """`Authorization: Bearer $OPENAI_API_KEY` when it is set, as `vllm bench serve` sends it (for
    a server started with --api-key)."""
    key = os.environ.get("OPENAI_API_KEY", "").strip()
    return {"Authorization": f"Bearer {key}"} if key else {}


def lengths(rng: np.random.Generator, mean: int, ratio: float, n: int) -> list[int]:
    lo, hi = max(1, int(mean * (1 - ratio))), max(1, int(mean * (1 + ratio)))
    return rng.integers(lo, hi + 1, size=n).tolist()


def make_workload(args) -> list[Request]:
    rng = np.random.default_rng(args.seed)
    in_lens = lengths(rng, args.random_input_len, args.random_range_ratio, args.num_prompts)
    out_lens = lengths(rng, args.random_output_len, args.random_range_ratio, args.num_prompts)
    prompts = [rng.integers(1, args.vocab_size, size=n).tolist() for n in in_lens]
    if math.isinf(args.request_rate):
        arrivals = [0.0] * args.num_prompts
    else:  # Poisson process: exponential gaps, the first request at t=0
        gaps = np.random.default_rng(args.seed + 1).exponential(1 / args.request_rate, args.num_prompts)
        arrivals = np.concatenate([[0.0], np.cumsum(gaps[:-1])]).tolist()
    texts = [None] * len(prompts)
    if getattr(args, "prompt_kind", "ids") == "text" or getattr(args, "backend", "openai") == "openai-chat":
        texts = [" ".join(WORDS[i % len(WORDS)] for i in p) for p in prompts]
    return [Request(p, o, a, t) for p, o, a, t in zip(prompts, out_lens, arrivals, texts)]


def payload(args, req: Request) -> dict:
    """The request body: a streamed completion (token ids or text) or a streamed chat."""
    body = {"max_tokens": req.output_len, "temperature": args.temperature, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    if getattr(args, "backend", "openai") == "openai-chat":
        body["messages"] = [{"role": "user", "content": req.text}]
    else:
        body["prompt"] = req.text if req.text is not None else req.prompt
    if args.model:
        body["model"] = args.model
    return body


# ---- one streamed request ------------------------------------------------------------------------
@dataclasses.dataclass
class Record:
    prompt_len: int
    output_len: int                  # requested
    start_s: float = 0.0             # when it was sent, seconds after the start of the run
    success: bool = False
    output_tokens: int = 0           # token ids counted in the stream
    usage_completion_tokens: int | None = None
    finish_reason: str | None = None
    ttft_s: float | None = None      # send -> first token chunk
    tpot_s: float | None = None      # (e2el - ttft) / (output_tokens - 1)
    itl_s: list[float] = dataclasses.field(default_factory=list)  # gaps between token chunks
    e2el_s: float | None = None      # send -> end of stream
    error: str = ""


def error_text(resp_body: bytes, status: int) -> str:
    try:
        body = json.loads(resp_body)
        msg = body.get("error", {}).get("message") or body.get("detail") or body
    except (ValueError, AttributeError):
        msg = resp_body.decode(errors="replace")[:200]
    return f"HTTP {status}: {msg}"


async def send(client: httpx.AsyncClient, url: str, payload: dict, rec: Record, t0: float) -> None:
    start = time.perf_counter()
    rec.start_s = start - t0
    last = start
    try:
        async with client.stream("POST", url, json=payload) as resp:
            if resp.status_code != 200:
                rec.error = error_text(await resp.aread(), resp.status_code)
                return
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    rec.error = f"stream error: {chunk['error'].get('message', chunk['error'])}"
                    return
                if chunk.get("usage"):
                    rec.usage_completion_tokens = chunk["usage"].get("completion_tokens")
                    rec.prompt_len = chunk["usage"].get("prompt_tokens") or rec.prompt_len
                for choice in chunk.get("choices", []):
                    n = _chunk_tokens(choice)
                    if n:
                        now = time.perf_counter()
                        if rec.ttft_s is None:
                            rec.ttft_s = now - start
                        else:
                            rec.itl_s.append(now - last)
                        last = now
                        rec.output_tokens += n
                    rec.finish_reason = choice.get("finish_reason") or rec.finish_reason
        rec.e2el_s = time.perf_counter() - start
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        rec.error = f"{type(e).__name__}: {e}"
        return
    if rec.output_tokens == 0:
        rec.error = "the stream carried no tokens"
    elif rec.usage_completion_tokens is not None and rec.usage_completion_tokens != rec.output_tokens:
        rec.error = (f"usage says {rec.usage_completion_tokens} completion tokens "
                     f"but the stream carried {rec.output_tokens}")
    else:
        rec.success = True
        if rec.output_tokens > 1:
            rec.tpot_s = (rec.e2el_s - rec.ttft_s) / (rec.output_tokens - 1)


def _chunk_tokens(choice: dict) -> int:
    """Tokens in one streamed choice: its token_ids (this server, vLLM's return_token_ids), else
    one per chunk with text (other servers)."""
    if "token_ids" in choice:
        return len(choice["token_ids"] or [])
    text = choice.get("text") if "text" in choice else (choice.get("delta") or {}).get("content")
    return 1 if text else 0


async def run_workload(args, workload: list[Request], desc: str = "requests") -> tuple[list[Record], float]:
    """Send every request at its arrival time; returns the records and the run's duration (s)."""
    from tqdm import tqdm
    url = args.base_url + ENDPOINTS[getattr(args, "backend", "openai")]
    records = [Record(len(r.prompt), r.output_len) for r in workload]
    limit = asyncio.Semaphore(args.max_concurrency) if args.max_concurrency else None
    bar = tqdm(total=len(workload), desc=desc, disable=args.disable_tqdm)
    timeout = httpx.Timeout(None, connect=30.0)
    async with httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=None),
                                 headers=auth_headers()) as client:
        t0 = time.perf_counter()

        async def one(req: Request, rec: Record):
            await asyncio.sleep(max(0.0, t0 + req.arrival_s - time.perf_counter()))
            body = payload(args, req)
            if limit is None:
                await send(client, url, body, rec, t0)
            else:
                async with limit:
                    await send(client, url, body, rec, t0)
            bar.update(1)

        await asyncio.gather(*(one(r, rec) for r, rec in zip(workload, records)))
        duration = time.perf_counter() - t0
    bar.close()
    return records, duration


# ---- figures -------------------------------------------------------------------------------------
def summarize(records: list[Record], duration: float, percentiles) -> dict:
    ok = [r for r in records if r.success]
    failed = [r for r in records if not r.success]
    inp = sum(r.prompt_len for r in ok)
    out = sum(r.output_tokens for r in ok)
    fig = dict(completed=len(ok), failed=len(failed), duration_s=duration,
               total_input_tokens=inp, total_output_tokens=out,
               request_throughput=len(ok) / duration, output_throughput=out / duration,
               total_token_throughput=(inp + out) / duration,
               first_error=failed[0].error if failed else None)
    samples = {"ttft": [r.ttft_s for r in ok], "tpot": [r.tpot_s for r in ok if r.tpot_s is not None],
               "itl": [x for r in ok for x in r.itl_s], "e2el": [r.e2el_s for r in ok]}
    for name in METRICS:
        ms = np.asarray(samples[name], dtype=float) * 1e3
        fig[f"mean_{name}_ms"] = float(ms.mean()) if ms.size else None
        for q in percentiles:
            fig[f"p{q:g}_{name}_ms"] = float(np.percentile(ms, q)) if ms.size else None
    return fig


def print_table(fig: dict, percentiles, concurrency) -> None:
    def cell(v):
        return f"{v:10.2f}" if v is not None else f"{'n/a':>10}"

    print(f"requests:   {fig['completed']} completed, {fig['failed']} failed"
          f"{'' if concurrency is None else f' (at most {concurrency} in flight)'}")
    print(f"duration:   {fig['duration_s']:.3f} s")
    print(f"tokens:     {fig['total_input_tokens']} in, {fig['total_output_tokens']} out")
    print(f"throughput: {fig['request_throughput']:.2f} req/s, {fig['output_throughput']:.1f} output tok/s, "
          f"{fig['total_token_throughput']:.1f} total tok/s")
    print(f"{'(ms)':<6}" + f"{'mean':>10}" + "".join(f"{f'p{q:g}':>10}" for q in percentiles))
    for name, label in zip(METRICS, ("TTFT", "TPOT", "ITL", "E2E")):
        row = [fig[f"mean_{name}_ms"]] + [fig[f"p{q:g}_{name}_ms"] for q in percentiles]
        print(f"{label:<6}" + "".join(cell(v) for v in row))
    if fig["first_error"]:
        print(f"first error: {fig['first_error']}")
