"""The engine's numbers against HF transformers on the same safetensors checkpoints."""
import random

import pytest
import torch

from tests.models import hf_logprobs
from tpu_engine import LLM, SamplingParams
from tpu_engine.backends import registry
from tpu_engine.scheduler import ExpectedRequests

pytestmark = pytest.mark.slow

PROMPT_LENS = [5, 23, 17, 40]  # uneven, none a bucket size
STEPS = 14


@pytest.mark.parametrize("arch, backend, eager", [
    *[(arch, backend, False) for backend in registry.names() for arch in ("llama", "qwen2")],
    ("llama", "torch_xla", True)])  # torch_xla's lazily traced path too
def test_greedy_logprobs_match_hf(arch, backend, eager, request):
    """Both backends, and torch_xla's two step paths (dynamo-captured and lazily traced),
    against HF."""
    path = request.getfixturevalue(f"{arch}_dir")
    rng = random.Random(7)
    prompts = [[rng.randrange(512) for _ in range(n)] for n in PROMPT_LENS]
    # Warm-up compiles just this workload's shapes; strict: nothing else may compile.
    expected = ExpectedRequests(tuple((n, STEPS) for n in PROMPT_LENS))  # logprobs=0: no alternatives
    llm = LLM(path, backend=backend, max_model_len=128, max_num_seqs=4, enforce_eager=eager,
              expected=expected, strict_compiles=True, progress=False)
    steps = []
    off = llm.llm_engine.events.subscribe(lambda e: steps.append(e.record) if e.kind == "end" else None)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        SamplingParams(temperature=0, max_tokens=STEPS, ignore_eos=True, logprobs=0),
                        use_tqdm=False)
    off()
    # The uneven prompts were packed into one prefill step.
    assert [(r.phase, r.batch_size, r.num_tokens) for r in steps[:2]] == \
        [("prefill", 4, sum(PROMPT_LENS)), ("decode", 4, 4)]
    worst = 0.0
    for prompt, out in zip(prompts, outs):
        gen = out.outputs[0].token_ids
        assert len(gen) == STEPS
        ours = torch.tensor([lp[t].logprob for lp, t in zip(out.outputs[0].logprobs, gen)])
        ref, ref_argmax = hf_logprobs(path, prompt, gen)
        assert gen == ref_argmax.tolist()  # greedy picks HF's argmax at every step
        worst = max(worst, (ours - ref).abs().max().item())
    assert worst <= 2e-3, f"max |dlogprob| {worst:.2e}"
