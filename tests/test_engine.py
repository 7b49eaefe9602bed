"""The step engine: prefill/decode consistency, compile discipline, continuous batching,
phase events and request outputs.

One strict engine (any compile after warm-up raises RecompileError) serves the module, so
every test here also checks that serving never recompiles. Tests of what a backend computes
(numerics, compiles, slots and packing) run on both backends; tests of the engine's own
bookkeeping (events, outputs, EOS, ids), which no backend touches, run on torch_xla only. max_model_len=256 gives two
decode attention spans (128 and 256), so decode crosses a span bucket too. (One module, over 300
lines, so that every test shares that engine's warm-up.)"""
import json
import os
import random
import shutil

import pytest

from tests.backends import backend_params
from tpu_engine import LLM, SamplingParams, StepRecord
from tpu_engine.scheduler import ExpectedRequests

pytestmark = pytest.mark.slow

VOCAB = 512
MAX_LEN = 256
MAX_SEQS = 4
PREFILL_BUCKETS = [16, 32, 64, 128, 256]


ENGINE_ONLY = pytest.mark.parametrize("llm", ["torch_xla"], indirect=True)


@pytest.fixture(scope="module", params=backend_params())
def llm(llama_dir, request):
    """One strict engine per backend: every test here runs on both."""
    return LLM(llama_dir, backend=request.param, max_model_len=MAX_LEN, max_num_seqs=MAX_SEQS,
               strict_compiles=True)


def _prompt(n, seed):
    rng = random.Random(seed)
    return [rng.randrange(VOCAB) for _ in range(n)]


def _greedy(max_tokens, **kw):
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, **kw)


def _generate(llm, prompts, params):
    return llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)


def _drain(engine, max_steps=500):
    """Step until idle; returns {request_id: (engine step index, finished RequestOutput)}."""
    finished, step = {}, 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                assert out.request_id not in finished
                finished[out.request_id] = (step, out)
        step += 1
        assert step < max_steps, "engine does not drain"
    return finished


def _bucket(n):
    return next(b for b in PREFILL_BUCKETS if b >= n)


# ---- prefill + decode == full forward ------------------------------------------------------
def test_prefill_plus_decode_equals_full_forward(llm):
    prompt = _prompt(12, seed=1)  # prompt + k crosses the 16-token prefill bucket
    out = _generate(llm, [prompt], _greedy(8, logprobs=0))[0].outputs[0]
    gen = out.token_ids
    decode_lp = [entry[t].logprob for t, entry in zip(gen, out.logprobs)]
    assert len(gen) == 8
    ks = list(range(1, 8))
    refills = _generate(llm, [prompt + gen[:k] for k in ks], _greedy(1, logprobs=0))
    for k, r in zip(ks, refills):
        c = r.outputs[0]
        assert c.token_ids == [gen[k]], f"prefill of prompt+gen[:{k}] picks {c.token_ids}, decode picked {gen[k]}"
        assert abs(c.logprobs[0][gen[k]].logprob - decode_lp[k]) <= 1e-4


# ---- zero compiles after warm-up -----------------------------------------------------------
def test_no_compiles_after_warmup(llm):
    guard = llm.llm_engine.runner.guard
    assert guard.strict and guard.armed
    lengths = [1, 15, 16, 17, 31, 33, 64, 65, 100, 120, 127, 129, 200, 250]
    assert {_bucket(n) for n in lengths} == set(PREFILL_BUCKETS)
    variants = [
        SamplingParams(temperature=0, max_tokens=6, ignore_eos=True),
        SamplingParams(temperature=0, max_tokens=5, logprobs=0, ignore_eos=True),
        SamplingParams(temperature=0.8, max_tokens=4, logprobs=5, seed=3, ignore_eos=True),
        SamplingParams(temperature=1.0, top_k=7, max_tokens=6, ignore_eos=True),
        SamplingParams(temperature=1.2, top_p=0.3, max_tokens=3, logprobs=20, ignore_eos=True),
        SamplingParams(temperature=0.5, top_k=3, top_p=0.9, max_tokens=5, seed=11),
        SamplingParams(temperature=1.0, max_tokens=2, logprobs=0, seed=99, ignore_eos=True),
    ]
    prompts = [_prompt(n, seed=n) for n in lengths]
    params = [variants[i % len(variants)] for i in range(len(lengths))]
    # The longest prompts: keep prompt + max_tokens within max_model_len.
    params = [p if len(q) + p.max_tokens <= MAX_LEN else
              SamplingParams(temperature=p.temperature, top_k=p.top_k, top_p=p.top_p,
                             logprobs=p.logprobs, seed=p.seed, ignore_eos=True,
                             max_tokens=MAX_LEN - len(q))
              for q, p in zip(prompts, params)]
    # Everything mixed in one call (batches of every size as slots fill and drain) ...
    outs = _generate(llm, prompts, params)
    for o, p in zip(outs, params):  # one variant honours EOS, so it may stop early
        n = len(o.outputs[0].token_ids)
        assert n == p.max_tokens or (n < p.max_tokens and o.outputs[0].finish_reason == "stop")
    # ... then calls of each batch size, each with one sampling variant for all or mixed ones.
    for b in range(1, MAX_SEQS + 1):
        for v in variants[:3]:
            _generate(llm, prompts[b:2 * b], v)
        _generate(llm, prompts[-b:], [variants[(b + i) % len(variants)] for i in range(b)])
    # Decode beyond the first 128-token attention span, with random sampling and logprobs.
    long = [_prompt(120, seed=5), _prompt(30, seed=6)]
    _generate(llm, long, [SamplingParams(temperature=1.0, max_tokens=20, logprobs=5, ignore_eos=True),
                          SamplingParams(temperature=1.0, top_k=4, max_tokens=110, ignore_eos=True)])
    assert guard.since_armed().compiles == 0


# ---- step API / continuous batching --------------------------------------------------------
@ENGINE_ONLY
def test_requests_with_different_max_tokens_finish_at_different_steps(llm):
    engine = llm.llm_engine
    budgets = {"len-a": 2, "len-b": 5, "len-c": 9}
    for i, (rid, n) in enumerate(budgets.items()):
        engine.add_request(rid, _prompt(6 + 5 * i, seed=20 + i), _greedy(n))
    finished = _drain(engine)
    assert set(finished) == set(budgets)
    steps = {rid: s for rid, (s, _) in finished.items()}
    assert steps["len-a"] < steps["len-b"] < steps["len-c"]
    for rid, (_, out) in finished.items():
        assert len(out.outputs[0].token_ids) == budgets[rid]
        assert out.outputs[0].finish_reason == "length"


def test_request_added_mid_decode_joins_and_matches_running_alone(llm):
    engine = llm.llm_engine
    prompts = {"join-a": _prompt(5, seed=30), "join-b": _prompt(20, seed=31), "join-c": _prompt(40, seed=32)}
    budgets = {"join-a": 10, "join-b": 9, "join-c": 6}
    engine.add_request("join-a", prompts["join-a"], _greedy(budgets["join-a"]))
    engine.add_request("join-b", prompts["join-b"], _greedy(budgets["join-b"]))
    progress = {}
    for _ in range(3):  # one prefill of a and b packed together, then two decode steps of both
        for out in engine.step():
            progress[out.request_id] = out
    assert {rid: len(o.outputs[0].token_ids) for rid, o in progress.items()} == {"join-a": 3, "join-b": 3}
    assert not any(o.finished for o in progress.values())
    engine.add_request("join-c", prompts["join-c"], _greedy(budgets["join-c"]))
    # The next step prefills the newcomer while a and b are mid-decode ...
    outs = engine.step()
    assert [(o.request_id, len(o.outputs[0].token_ids)) for o in outs] == [("join-c", 1)]
    # ... and the step after decodes all three together.
    outs = engine.step()
    assert sorted(o.request_id for o in outs) == ["join-a", "join-b", "join-c"]
    finished = _drain(engine)
    assert set(finished) == set(prompts)
    for rid, prompt in prompts.items():
        alone = _generate(llm, [prompt], _greedy(budgets[rid]))[0].outputs[0].token_ids
        assert finished[rid][1].outputs[0].token_ids == alone, rid


@ENGINE_ONLY
def test_abort_removes_request_and_engine_drains(llm):
    engine = llm.llm_engine
    prompts = {rid: _prompt(8 + i, seed=40 + i) for i, rid in enumerate(["ab-a", "ab-b", "ab-c"])}
    for rid, p in prompts.items():
        engine.add_request(rid, p, _greedy(8))
    for _ in range(2):  # one prefill of all three, packed, and one decode
        engine.step()
    assert engine.num_running() == 3
    engine.abort_request("ab-b")              # running, mid-decode
    engine.add_request("ab-d", _prompt(9, seed=49), _greedy(8))
    engine.abort_request(["ab-d", "no-such-id"])  # still waiting; unknown ids are ignored
    assert engine.num_running() == 2
    seen = set()
    finished, steps = {}, 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            seen.add(out.request_id)
            if out.finished:
                finished[out.request_id] = out
        steps += 1
        assert steps < 100
    assert seen == {"ab-a", "ab-c"}
    assert set(finished) == {"ab-a", "ab-c"}
    assert engine.num_running() == 0 and engine.step() == []
    for rid in ("ab-a", "ab-c"):
        alone = _generate(llm, [prompts[rid]], _greedy(8))[0].outputs[0].token_ids
        assert finished[rid].outputs[0].token_ids == alone


def test_packed_prefill_queues_what_does_not_fit_and_matches_running_alone(llm):
    """Six prompts, four slots, 256 tokens per prefill step: the first step packs the prompts
    that fit in arrival order, the rest wait for tokens or slots; every output is the one the
    prompt gets alone."""
    engine = llm.llm_engine
    lens = [100, 100, 100, 3, 7, 9]
    prompts = {f"pk-{i}": _prompt(n, seed=60 + i) for i, n in enumerate(lens)}
    budgets = {rid: 3 + i for i, rid in enumerate(prompts)}
    begins = []
    off = engine.events.subscribe(lambda e: begins.append(e.record) if e.kind == "begin" else None)
    try:
        for rid, p in prompts.items():
            engine.add_request(rid, p, _greedy(budgets[rid]))
        finished = _drain(engine)
    finally:
        off()
    prefills = [b.request_ids for b in begins if b.phase == "prefill"]
    assert prefills[:2] == [("pk-0", "pk-1"), ("pk-2", "pk-3")]  # 200 tokens, then 103 + a 4th slot
    assert sorted(r for ids in prefills for r in ids) == sorted(prompts)
    assert all(len(ids) <= MAX_SEQS for ids in prefills)
    for rid, prompt in prompts.items():
        alone = _generate(llm, [prompt], _greedy(budgets[rid]))[0].outputs[0].token_ids
        assert finished[rid][1].outputs[0].token_ids == alone, rid


# ---- phase events --------------------------------------------------------------------------
@ENGINE_ONLY
def test_phase_events(llm):
    engine = llm.llm_engine
    prompts = [_prompt(5, seed=50), _prompt(20, seed=51), _prompt(40, seed=52)]
    budgets = [2, 4, 6]
    events = []
    unsubscribe = engine.events.subscribe(events.append)
    try:
        outs = _generate(llm, prompts, [_greedy(n) for n in budgets])
    finally:
        unsubscribe()
    ids = [o.request_id for o in outs]
    assert len(events) % 2 == 0
    begins, ends = events[0::2], events[1::2]
    for begin, end in zip(begins, ends):
        assert (begin.kind, end.kind) == ("begin", "end")
        b, e = begin.record, end.record
        assert (b.phase, b.step, b.bucket, b.request_ids, b.batch_size, b.num_tokens) == \
               (e.phase, e.step, e.bucket, e.request_ids, e.batch_size, e.num_tokens)
        assert b.wall_end is None and b.compiles is None
        assert e.wall_end >= e.wall_start == b.wall_start
        assert e.compiles == 0
        assert StepRecord.from_json(json.loads(json.dumps(e.to_json()))) == e  # manifest.jsonl round trip
    begins = [b.record for b in begins]
    steps = [b.step for b in begins]
    assert all(x < y for x, y in zip(steps, steps[1:]))

    # Replay the schedule: who is running, with how many tokens, at each step.
    prefills = [b for b in begins if b.phase == "prefill"]
    assert len(prefills) == 1 and begins[0] == prefills[0]  # all three packed into the first step
    p, total = prefills[0], sum(map(len, prompts))
    assert p.request_ids == tuple(ids)
    assert (p.batch_size, p.num_tokens, p.bucket) == (3, total, _bucket(total))
    assert p.padded_tokens == p.kv_bucket == p.bucket
    assert (p.kv_len_min, p.kv_len_max) == (5, 40)
    # per request, in the order of request_ids: its tokens, its context, its arrival
    assert p.request_tokens == p.request_kv == (5, 20, 40) and p.sampling == "greedy"
    assert [round(t, 6) for t in p.arrivals] == [round(o.metrics.arrival_time, 6) for o in outs]
    assert p.seq_bucket >= 3
    generated, running = {}, []
    prompt_of = dict(zip(ids, prompts))
    budget_of = dict(zip(ids, budgets))
    for b in begins:
        if b.phase == "prefill":
            for rid in b.request_ids:
                running.append(rid)
                generated[rid] = 1
        else:
            assert b.phase == "decode"
            assert sorted(b.request_ids) == sorted(running)
            assert b.batch_size == b.num_tokens == len(running)
            assert b.bucket >= len(running) and b.padded_tokens == b.bucket
            ctx = [len(prompt_of[r]) + generated[r] for r in running]
            assert (b.kv_len_min, b.kv_len_max) == (min(ctx), max(ctx))
            kv = dict(zip(b.request_ids, b.request_kv))
            assert b.request_tokens == (1,) * len(running) and [kv[r] for r in running] == ctx and not b.arrivals
            for r in running:
                generated[r] += 1
        running = [r for r in running if generated[r] < budget_of[r]]
    assert running == []
    assert generated == budget_of
    assert sum(b.phase == "decode" for b in begins) == max(budgets) - 1


@ENGINE_ONLY
def test_slot_events_follow_each_request_from_slot_to_release(llm):
    engine = llm.llm_engine
    events = []
    unsubscribe = engine.slot_events.subscribe(events.append)
    try:
        outs = _generate(llm, [_prompt(5, seed=60), _prompt(9, seed=61)], [_greedy(2), _greedy(4)])
        engine.add_request("gone", _prompt(4, seed=62), _greedy(8))
        engine.step()                                   # prefilled into a slot, then aborted
        engine.abort_request("gone")
    finally:
        unsubscribe()
    ids = [o.request_id for o in outs] + ["gone"]
    allocs = [e for e in events if e.kind == "allocate"]
    frees = {e.request_id: e for e in events if e.kind == "free"}
    assert [(e.request_id, e.tokens) for e in allocs] == list(zip(ids, [5, 9, 4]))
    assert set(frees) == set(ids) and len(events) == 6
    # tokens held at release: the prompt plus every output token but the last (never written)
    assert [(frees[i].finish_reason, frees[i].output_tokens, frees[i].tokens) for i in ids] == \
        [("length", 2, 6), ("length", 4, 12), ("abort", 1, 4)]
    assert [e.slots_used for e in events if e.kind == "allocate"][:2] == [1, 2]
    assert events[-1].slots_used == 0 and engine.num_running() == 0


# ---- outputs -------------------------------------------------------------------------------
@ENGINE_ONLY
def test_outputs_metrics_and_length_finish(llm):
    prompts = [_prompt(7, seed=60), _prompt(19, seed=61), _prompt(3, seed=62)]
    outs = _generate(llm, prompts, _greedy(5, logprobs=0))
    assert len({o.request_id for o in outs}) == 3
    for prompt, out in zip(prompts, outs):
        m = out.metrics
        c = out.outputs[0]
        assert out.finished and out.prompt_token_ids == prompt
        assert c.finish_reason == "length" and len(c.token_ids) == 5
        assert m.arrival_time <= m.first_scheduled_time <= m.first_token_time
        assert m.first_token_time <= m.last_token_time <= m.finished_time
        assert abs(c.cumulative_logprob - sum(e[t].logprob for t, e in zip(c.token_ids, c.logprobs))) < 1e-4


@ENGINE_ONLY
def test_eos_stops_request_unless_ignored(llm, llama_dir, tmp_path):
    prompt = _prompt(10, seed=70)
    gen = _generate(llm, [prompt], _greedy(8))[0].outputs[0].token_ids
    # The first step >= 2 whose token was not emitted before: EOS there must stop generation.
    stop_at = next(s for s in range(2, 8) if gen[s] not in gen[:s])
    eos_dir = str(tmp_path / "eos_model")
    shutil.copytree(llama_dir, eos_dir)
    with open(os.path.join(eos_dir, "config.json")) as f:
        cfg = json.load(f)
    cfg["eos_token_id"] = gen[stop_at]
    with open(os.path.join(eos_dir, "config.json"), "w") as f:
        json.dump(cfg, f)
    # Warm-up of just these two requests' shapes: EOS handling is the engine's, not a shape's.
    eos_llm = LLM(eos_dir, max_model_len=MAX_LEN, max_num_seqs=MAX_SEQS, progress=False,
                  expected=ExpectedRequests(((len(prompt), 8),) * 2))
    stopped, ignored = _generate(eos_llm, [prompt, prompt], [
        SamplingParams(temperature=0, max_tokens=8, ignore_eos=False),
        SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)])
    assert stopped.finished and stopped.outputs[0].finish_reason == "stop"
    assert stopped.outputs[0].token_ids == gen[:stop_at + 1]
    assert ignored.outputs[0].finish_reason == "length"
    assert ignored.outputs[0].token_ids == gen


# ---- generate() next to requests added through the step API --------------------------------
@ENGINE_ONLY
def test_generate_skips_request_ids_in_use(llm):
    engine = llm.llm_engine
    prompts = [_prompt(6, seed=80), _prompt(13, seed=81)]
    alone = [o.outputs[0].token_ids for o in _generate(llm, prompts, _greedy(4))]
    last = int(_generate(llm, [prompts[0]], _greedy(1))[0].request_id)
    # Take the ids that generate() would hand out next.
    taken = [str(last + 1), str(last + 2)]
    for i, rid in enumerate(taken):
        engine.add_request(rid, _prompt(9, seed=82 + i), _greedy(3))
    outs = _generate(llm, prompts, _greedy(4))
    assert len({o.request_id for o in outs}) == 2 and not {o.request_id for o in outs} & set(taken)
    assert [o.prompt_token_ids for o in outs] == prompts
    assert [o.outputs[0].token_ids for o in outs] == alone
    assert not engine.has_unfinished_requests() and engine.num_running() == 0


@ENGINE_ONLY
def test_generate_failing_mid_run_aborts_only_its_own_requests(llm):
    engine = llm.llm_engine
    foreign = _prompt(10, seed=90)
    expected = _generate(llm, [foreign], _greedy(6))[0].outputs[0].token_ids
    engine.add_request("foreign", foreign, _greedy(6))

    class Stop(Exception):
        pass

    def stop_at_first_decode(event):
        if event.record.phase == "decode":
            raise Stop()

    unsubscribe = engine.events.subscribe(stop_at_first_decode)
    try:
        with pytest.raises(Stop):
            _generate(llm, [_prompt(7, seed=91), _prompt(12, seed=92)], _greedy(5))
    finally:
        unsubscribe()
    # generate()'s two requests were prefilled then aborted; the foreign one is left running.
    assert engine.has_request("foreign") and engine.num_running() == 1
    finished = _drain(engine)
    assert set(finished) == {"foreign"}
    assert finished["foreign"][1].outputs[0].token_ids == expected
    outs = _generate(llm, [_prompt(7, seed=91)], _greedy(3))  # and the engine still serves
    assert len(outs[0].outputs[0].token_ids) == 3
