"""Sampling: greedy, top-k, top-p and seeds, checked against the model's own top logprobs;
the chosen token's reported rank, checked against the returned alternatives and against HF."""
import math
import random

import pytest
import torch

from tests.backends import backend_params
from tpu_engine import LLM, SamplingParams
from tpu_engine.backends.torch_xla.sampler import uniform_noise

pytestmark = pytest.mark.slow

VOCAB = 512


@pytest.fixture(scope="module", params=backend_params())
def llm(llama_dir, request):
    """Every test here runs on both backends."""
    return LLM(llama_dir, backend=request.param, max_model_len=128, max_num_seqs=4)


def _prompts(n, seed, lengths=(3, 9, 17, 30)):
    rng = random.Random(seed)
    return [[rng.randrange(VOCAB) for _ in range(lengths[i % len(lengths)])] for i in range(n)]


def _generate(llm, prompts, params):
    return llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)


def _steps(outs):
    """(chosen token, its logprob dict) for every generated token of every output."""
    for out in outs:
        comp = out.outputs[0]
        assert len(comp.logprobs) == len(comp.token_ids)
        yield from zip(comp.token_ids, comp.logprobs)


def _ranked(entry):
    """The returned top alternatives of one step, best first: [(token, prob)]."""
    top = sorted((lp.rank, tid, lp.logprob) for tid, lp in entry.items() if lp.rank is not None)
    assert [r for r, _, _ in top] == list(range(1, len(top) + 1)), "ranks must be 1..n"
    return [(tid, math.exp(lp)) for _, tid, lp in top]


def test_greedy_token_is_rank_one_of_top_logprobs(llm):
    outs = _generate(llm, _prompts(4, seed=1),
                     SamplingParams(temperature=0, max_tokens=8, logprobs=5, ignore_eos=True))
    n = 0
    for token, entry in _steps(outs):
        ranked = _ranked(entry)
        assert len(ranked) == 5
        assert entry[token].rank == 1
        assert ranked[0][0] == token
        assert entry[token].logprob == max(lp.logprob for lp in entry.values())
        n += 1
    assert n == 32


def test_top_k_of_the_vocabulary_or_more_is_off(llm):
    """top_k >= vocab keeps every token (the same draws as top_k=-1), however large it is."""
    prompts = _prompts(2, seed=5)
    outs = [_generate(llm, prompts, SamplingParams(temperature=1.0, top_k=k, seed=7, max_tokens=6, ignore_eos=True))
            for k in (-1, VOCAB, 2**63, 10**30)]
    tokens = [[o.outputs[0].token_ids for o in run] for run in outs]
    assert tokens[1] == tokens[2] == tokens[3] == tokens[0]


def test_top_k_samples_only_from_the_k_most_likely(llm):
    prompts = _prompts(8, seed=2)
    ks = [1, 2, 3, 5, 8, 10, 16, 20]
    params = [SamplingParams(temperature=1.0, top_k=k, logprobs=k, seed=100 + i, max_tokens=12,
                             ignore_eos=True) for i, k in enumerate(ks)]
    outs = _generate(llm, prompts, params)
    outside_mass, non_top1 = [], 0
    for k, out in zip(ks, outs):
        assert len(out.outputs[0].token_ids) == 12
        for token, entry in _steps([out]):
            ranked = _ranked(entry)
            assert len(ranked) == k
            top_ids = {tid for tid, _ in ranked}
            assert token in top_ids, f"top_k={k}: sampled token {token} is not among the top {k}"
            assert 1 <= entry[token].rank <= k
            non_top1 += entry[token].rank > 1
            if k >= 5:
                outside_mass.append(1.0 - sum(p for _, p in ranked))
    # The check is not vacuous: the model spreads most of its mass outside the top k, and the
    # sampler is really random (it does not just take the argmax).
    assert min(outside_mass) > 0.5
    assert non_top1 > 10


def test_top_p_samples_only_from_the_nucleus(llm):
    prompts = _prompts(8, seed=3)
    ps = [0.03, 0.05, 0.08, 0.1, 0.03, 0.05, 0.08, 0.1]
    params = [SamplingParams(temperature=1.0, top_p=p, logprobs=20, seed=200 + i, max_tokens=12,
                             ignore_eos=True) for i, p in enumerate(ps)]
    outs = _generate(llm, prompts, params)
    nucleus_sizes, non_top1 = [], 0
    for p, out in zip(ps, outs):
        for token, entry in _steps([out]):
            ranked = _ranked(entry)
            assert len(ranked) == 20
            mass = sum(q for _, q in ranked)
            assert mass >= p, f"the 20 returned alternatives hold {mass:.3f} < top_p {p}; test assumption broken"
            # Smallest set of most-likely tokens whose mass reaches p (1e-5 slack for rounding).
            nucleus, above = [], 0.0
            for tid, q in ranked:
                if above >= p + 1e-5:
                    break
                nucleus.append(tid)
                above += q
            assert token in nucleus, f"top_p={p}: token {token} (rank {entry[token].rank}) outside nucleus {nucleus}"
            nucleus_sizes.append(len(nucleus))
            non_top1 += entry[token].rank != 1
    # Not vacuous: nuclei hold several tokens but far fewer than the 20 returned, and the sampler
    # picks beyond the argmax.
    assert max(nucleus_sizes) < 20 and sum(nucleus_sizes) / len(nucleus_sizes) > 2
    assert non_top1 > 10


def test_same_seed_same_tokens_in_any_batch(llm):
    target = _prompts(1, seed=4, lengths=(11,))[0]
    others = _prompts(3, seed=5)
    seeded = SamplingParams(temperature=1.0, seed=1234, max_tokens=12, ignore_eos=True)
    alone = _generate(llm, [target], seeded)[0].outputs[0].token_ids
    assert len(alone) == 12
    # Different neighbours, different slots, different sampling parameters around it.
    mix1 = _generate(llm, [others[0], target, others[1], others[2]],
                     [SamplingParams(temperature=1.0, seed=7, max_tokens=5, ignore_eos=True), seeded,
                      SamplingParams(temperature=0, max_tokens=12, ignore_eos=True),
                      SamplingParams(temperature=0.7, top_k=10, logprobs=3, max_tokens=20, ignore_eos=True)])
    mix2 = _generate(llm, [others[2], others[1], others[0], target],
                     [SamplingParams(temperature=1.3, top_p=0.5, max_tokens=3, ignore_eos=True),
                      SamplingParams(temperature=1.0, seed=1234, max_tokens=12, ignore_eos=True),
                      SamplingParams(temperature=1.0, max_tokens=30, ignore_eos=True), seeded])
    twice = _generate(llm, [target, target], seeded)
    assert mix1[1].outputs[0].token_ids == alone
    assert mix2[3].outputs[0].token_ids == alone
    assert [o.outputs[0].token_ids for o in twice] == [alone, alone]


def test_different_seeds_give_different_sequences(llm):
    target = _prompts(1, seed=4, lengths=(11,))[0]
    seqs = [o.outputs[0].token_ids for o in _generate(
        llm, [target] * 4,
        [SamplingParams(temperature=1.0, seed=s, max_tokens=12, ignore_eos=True) for s in (1, 2, 3, 4)])]
    assert all(len(s) == 12 for s in seqs)
    assert len({tuple(s) for s in seqs}) == 4


def test_uniform_noise_is_uniform_in_open_unit_interval():
    seeds = torch.tensor([0, 1, 2, 3, 12345, 2**31 - 1, 2**31, 2**32 - 1] * 8, dtype=torch.int64)
    counters = torch.arange(seeds.numel(), dtype=torch.int64) * 37
    u = uniform_noise(seeds, counters, 4096)
    assert u.shape == (64, 4096) and u.dtype == torch.float32
    assert u.min().item() > 0.0 and u.max().item() < 1.0
    assert abs(u.mean().item() - 0.5) < 0.005
    assert abs(u.var().item() - 1 / 12) < 0.005
    hist = torch.histc(u, bins=10, min=0.0, max=1.0) / u.numel()
    assert (hist - 0.1).abs().max().item() < 0.01
    # A pure function of its inputs, and different for different seeds or counters.
    assert torch.equal(u, uniform_noise(seeds, counters, 4096))
    assert not torch.equal(u[0], u[8])    # same seed, other counter
    assert not torch.equal(u[0], u[1])    # other seed


# ---- top-k and top-p together --------------------------------------------------------------
def test_top_p_applies_to_renormalised_top_k(llm):
    """top_k then top_p on the top-k distribution renormalised (as vLLM and HF): the token lies
    in the smallest set of the k most likely whose renormalised mass reaches top_p."""
    prompts = _prompts(8, seed=8)
    cases = [(5, 0.5), (8, 0.6), (10, 0.4), (16, 0.5), (20, 0.7), (4, 0.6), (6, 0.3), (12, 0.5)]
    params = [SamplingParams(temperature=1.0, top_k=k, top_p=p, logprobs=k, seed=300 + i,
                             max_tokens=12, ignore_eos=True) for i, (k, p) in enumerate(cases)]
    outs = _generate(llm, prompts, params)
    excluded_mass, nucleus_sizes, non_top1 = 0.0, [], 0
    for (k, p), out in zip(cases, outs):
        assert len(out.outputs[0].token_ids) == 12
        for token, entry in _steps([out]):
            ranked = _ranked(entry)
            assert len(ranked) == k
            total = sum(q for _, q in ranked)
            nucleus, above = [], 0.0
            for tid, q in ranked:
                if above >= p + 1e-5:
                    break
                nucleus.append(tid)
                above += q / total
            assert token in nucleus, (f"top_k={k} top_p={p}: token {token} (rank {entry[token].rank}) "
                                      f"outside the renormalised nucleus {nucleus}")
            nucleus_sizes.append(len(nucleus))
            non_top1 += entry[token].rank != 1
            # top-p on the unrenormalised distribution keeps these too: the mass that a sampler
            # doing so would put outside the nucleus above.
            old, above = [], 0.0
            for tid, q in ranked:
                if above >= p:
                    break
                old.append((tid, q))
                above += q
            excluded_mass += sum(q for tid, q in old if tid not in nucleus) / sum(q for _, q in old)
    # Not vacuous: the nucleus cuts into the top k, top-p on the raw distribution would pick
    # outside it several times over these steps, and the sampler picks beyond the argmax.
    assert sum(nucleus_sizes) / len(nucleus_sizes) < 0.7 * sum(k for k, _ in cases) / len(cases)
    assert excluded_mass > 10, f"expected picks outside the nucleus without renormalising: {excluded_mass:.1f}"
    assert non_top1 > 10


# ---- seeds of any size ---------------------------------------------------------------------
def test_seeds_differing_beyond_32_bits_give_different_sequences(llm):
    target = _prompts(1, seed=9, lengths=(11,))[0]
    seeds = [5, 5 + 2**32, 5 + 2**64, 5 - 2**32, -5, 2**32, 0]
    params = [SamplingParams(temperature=1.0, seed=s, max_tokens=12, ignore_eos=True) for s in seeds]
    seqs = [o.outputs[0].token_ids for o in _generate(llm, [target] * len(seeds), params)]
    assert all(len(s) == 12 for s in seqs)
    assert len({tuple(s) for s in seqs}) == len(seeds), dict(zip(seeds, seqs))
    # Each large seed still reproduces its tokens, alone or in another batch position.
    again = _generate(llm, [target, target], [params[2], params[1]])
    assert [o.outputs[0].token_ids for o in again] == [seqs[2], seqs[1]]


# ---- the chosen token's rank ---------------------------------------------------------------
def _hf_full_logprobs(model, prompt, generated):
    """Teacher-forced HF log-softmax over the vocabulary at each generated position: (T, V)."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + generated[:-1]])).logits[0, len(prompt) - 1:]
    return torch.log_softmax(logits.float(), dim=-1)


def test_rank_of_sampled_token_with_one_logprob(llm, llama_dir):
    """logprobs=1: the entry holds the top-1 alternative, and the chosen token if it differs,
    with its true rank among the whole vocabulary (checked against HF's distribution)."""
    prompts = _prompts(4, seed=10)
    outs = _generate(llm, prompts, [SamplingParams(temperature=1.0, logprobs=1, seed=400 + i, max_tokens=12,
                                                   ignore_eos=True) for i in range(4)])
    import transformers
    hf = transformers.AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
    eps = 5e-5  # on CPU the engine's logprobs agree with HF's to ~1e-6
    not_top1, exact, beyond = 0, 0, 0
    for prompt, out in zip(prompts, outs):
        comp = out.outputs[0]
        ref = _hf_full_logprobs(hf, prompt, comp.token_ids)
        for t, (token, entry) in enumerate(_steps([out])):
            rank = entry[token].rank
            top1 = [tid for tid, lp in entry.items() if lp.rank == 1]
            assert len(top1) == 1
            if top1[0] == token:
                assert len(entry) == 1 and rank == 1
            else:
                assert len(entry) == 2 and rank >= 2
                assert entry[token].logprob <= entry[top1[0]].logprob
                not_top1 += 1
            # Rank = 1 + tokens strictly more likely, up to logprobs within eps of the chosen's.
            c = ref[t, token].item()
            assert abs(entry[token].logprob - c) <= eps
            lo = 1 + int((ref[t] > c + eps).sum())
            hi = int((ref[t] > c - eps).sum())
            assert lo <= rank <= hi, f"step {t}: rank {rank}, HF says {lo}..{hi}"
            exact += lo == hi
            beyond += rank > 20
    assert not_top1 > 10 and beyond > 5  # ranks far beyond the returned top-N are exercised
    assert exact >= 40


def test_rank_of_sampled_token_among_twenty_logprobs(llm):
    """logprobs=20: a chosen token inside the top 20 has the rank of its place among them; one
    outside comes as a 21st entry with a rank above 20 and a logprob below all 20."""
    prompts = _prompts(8, seed=11)
    # Ranks are of the model's own distribution whatever the temperature; a cooler one picks
    # inside the top 20 more often.
    outs = _generate(llm, prompts, [SamplingParams(temperature=(1.0, 0.5)[i % 2], logprobs=20, seed=500 + i,
                                                   max_tokens=12, ignore_eos=True) for i in range(8)])
    inside_not_top1, outside = 0, 0
    for token, entry in _steps(outs):
        rank = entry[token].rank
        others = {lp.rank: tid for tid, lp in entry.items() if tid != token}
        if len(entry) == 20:  # the chosen token is one of the top 20
            assert 1 <= rank <= 20
            assert sorted(others) == [r for r in range(1, 21) if r != rank]
            ordered = sorted(entry.items(), key=lambda kv: -kv[1].logprob)
            assert [tid for tid, _ in ordered].index(token) + 1 == rank
            inside_not_top1 += rank > 1
        else:
            assert len(entry) == 21 and rank > 20
            assert sorted(others) == list(range(1, 21))
            assert entry[token].logprob <= min(entry[tid].logprob for tid in others.values())
            outside += 1
    assert inside_not_top1 > 10 and outside > 10
