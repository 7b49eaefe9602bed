"""Sampling: greedy, top-k, top-p and seeds, checked against the model's own top logprobs."""
import math
import random

import pytest
import torch

from tpu_engine import LLM, SamplingParams
from tpu_engine.sampler import uniform_noise

VOCAB = 512


@pytest.fixture(scope="module")
def llm(llama_dir):
    return LLM(llama_dir, max_model_len=128, max_num_seqs=4)


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
