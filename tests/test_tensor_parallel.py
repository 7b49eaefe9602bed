"""Tensor parallelism over torch_xla SPMD on virtual CPU devices gives the TP=1 results.

SPMD mode and the CPU device count are fixed per process, so each run is a subprocess."""
import json
import os
import subprocess
import sys

import pytest

from tests.models import make_hf_model

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = """
import json, sys
from tpu_engine import LLM, SamplingParams
from tpu_engine.scheduler import ExpectedRequests
prompts = [{"prompt_token_ids": [1, 2, 3, 4, 5, 6, 7]}, {"prompt_token_ids": list(range(3, 33))}]
# Warm-up of just this workload's shapes; strict: nothing else may compile.
llm = LLM(sys.argv[1], max_model_len=64, max_num_seqs=2, tensor_parallel_size=int(sys.argv[2]), progress=False,
          expected=ExpectedRequests(((7, 6), (30, 6))), strict_compiles=True)
outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=0),
                    use_tqdm=False)
print(json.dumps([[o.outputs[0].token_ids, [d[t].logprob for d, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)]]
                  for o in outs]))
"""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    # 4 query and 4 key/value heads, intermediate 128: divisible by 2 and 4.
    return make_hf_model(str(tmp_path_factory.mktemp("tp_llama")), "llama", num_key_value_heads=4)


def run(model_dir: str, tp: int) -> list:
    env = {**os.environ, "PJRT_DEVICE": "CPU", "CPU_NUM_DEVICES": str(max(tp, 1)), "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, "-c", RUN, model_dir, str(tp)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tp1(model_dir):
    return run(model_dir, 1)


@pytest.mark.parametrize("tp", [2, 4])
def test_tp_matches_single_device(model_dir, tp1, tp):
    got = run(model_dir, tp)
    for (ref_ids, ref_lp), (ids, lp) in zip(tp1, got):
        assert ids == ref_ids
        assert max(abs(a - b) for a, b in zip(lp, ref_lp)) < 1e-4
