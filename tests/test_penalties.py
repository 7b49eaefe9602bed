"""vLLM's presence, frequency and repetition penalties on device, and prompt logprobs, on both
backends: greedy tokens against HF transformers' own logits with the penalties applied in numpy
step by step (teacher forcing), and prompt logprobs against HF's log-softmax over the prompt;
with strict_compiles, so neither compiles anything after warm-up."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.backends import backend_params
from tpu_engine import LLM, SamplingParams

pytestmark = pytest.mark.slow
PROMPTS = [[1, 17, 23, 17, 99, 23, 17], [5, 5, 5, 401, 8]]


@pytest.fixture(scope="module", params=backend_params())
def llm(llama_dir, request):
    return LLM(llama_dir, backend=request.param, max_model_len=32, max_num_seqs=2, strict_compiles=True,
               enable_prompt_logprobs=True)


@pytest.fixture(scope="module")
def hf(llama_dir):
    import transformers
    return transformers.AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()


def _hf_logits(hf, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0, -1].float().numpy()


def _penalized(logits, prompt, output, presence, frequency, repetition) -> np.ndarray:
    """vLLM's order: repetition on tokens of the prompt or output, then frequency and presence
    on the output's counts."""
    counts = np.bincount(output, minlength=logits.shape[0]) if output else np.zeros(logits.shape[0], int)
    seen = counts > 0
    seen[prompt] = True
    out = np.where(seen, np.where(logits > 0, logits / repetition, logits * repetition), logits)
    return out - frequency * counts - presence * (counts > 0)


def _reference(hf, prompt, n, **penalties) -> list[int]:
    out: list[int] = []
    for _ in range(n):
        out.append(int(np.argmax(_penalized(_hf_logits(hf, prompt + out), prompt, out, **penalties))))
    return out


CASES = [dict(presence=0.0, frequency=0.0, repetition=1.0), dict(presence=1.5, frequency=0.0, repetition=1.0),
         dict(presence=0.0, frequency=1.2, repetition=1.0), dict(presence=0.0, frequency=0.0, repetition=1.8),
         dict(presence=-0.7, frequency=0.4, repetition=0.6)]


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_greedy_tokens_under_penalties_equal_hf_with_the_penalties_applied(llm, hf, case):
    params = [SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, presence_penalty=case["presence"],
                             frequency_penalty=case["frequency"], repetition_penalty=case["repetition"])]
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params * 2, use_tqdm=False)
    for prompt, out in zip(PROMPTS, outs):
        assert out.outputs[0].token_ids == _reference(hf, prompt, 10, **case), (prompt, case)


def test_each_slot_keeps_its_own_counts_and_a_reused_slot_starts_afresh(llm, hf):
    """Two requests at once with different penalties (one slot each), then a third in a freed
    slot: none sees another's tokens."""
    strong = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, frequency_penalty=2.0, repetition_penalty=1.5)
    plain = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    a, b = llm.generate([{"prompt_token_ids": PROMPTS[0]}, {"prompt_token_ids": PROMPTS[1]}], [strong, plain],
                        use_tqdm=False)
    assert a.outputs[0].token_ids == _reference(hf, PROMPTS[0], 8, presence=0.0, frequency=2.0, repetition=1.5)
    assert b.outputs[0].token_ids == _reference(hf, PROMPTS[1], 8, presence=0.0, frequency=0.0, repetition=1.0)
    (c,) = llm.generate([{"prompt_token_ids": PROMPTS[1]}], strong, use_tqdm=False)
    assert c.outputs[0].token_ids == _reference(hf, PROMPTS[1], 8, presence=0.0, frequency=2.0, repetition=1.5)


def test_prompt_logprobs_equal_hfs_and_rank_their_alternatives(llm, hf):
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS],
                        SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=3), use_tqdm=False)
    for prompt, out in zip(PROMPTS, outs):
        with torch.no_grad():
            ref = torch.log_softmax(hf(torch.tensor([prompt])).logits[0].float(), -1).numpy()
        entries = out.prompt_logprobs
        assert entries[0] is None and len(entries) == len(prompt)
        for i, entry in enumerate(entries[1:]):
            token = prompt[i + 1]
            assert abs(entry[token].logprob - ref[i, token]) < 2e-3
            assert abs(entry[token].rank - (int((ref[i] > ref[i, token]).sum()) + 1)) <= 1   # (near ties)
            top = sorted((lp.rank, t, lp.logprob) for t, lp in entry.items() if lp.rank <= 3)
            assert [r for r, _, _ in top][:3] == [1, 2, 3] and top[0][1] == int(np.argmax(ref[i]))
            assert all(abs(lp - ref[i, t]) < 2e-3 for _, t, lp in top)


def test_prompt_logprobs_need_the_engine_flag(llama_dir):
    """Without enable_prompt_logprobs the graphs are not compiled, so the request is refused
    (one sentence) rather than compiling during serving. (The JAX backend: the cheaper warm-up.)"""
    plain = LLM(llama_dir, backend="jax", max_model_len=32, max_num_seqs=1)
    with pytest.raises(ValueError, match=r"^prompt logprobs need the prompt LM-head graphs, .*--enable-prompt-logprobs\)\.$"):
        plain.generate([{"prompt_token_ids": [1, 2, 3]}], SamplingParams(max_tokens=1, prompt_logprobs=0),
                       use_tqdm=False)


@pytest.mark.parametrize("field, value", [("presence_penalty", 2.5), ("frequency_penalty", float("nan")),
                                          ("repetition_penalty", 0), ("prompt_logprobs", 21)])
def test_penalties_and_prompt_logprobs_out_of_range_are_one_sentence(field, value):
    with pytest.raises(ValueError, match=rf"^{field} .* must be "):
        SamplingParams(**{field: value})
