"""Captures made by other JAX inference libraries, used as their users use them (their own
generate/sample API and scope names, tiny random-weight configs, nothing added by us), under
`jax.profiler`. Run as `python -m tests.foreign_captures <kind> <out dir>`; each kind warms up
once (compiling), then traces two calls into <out dir>.

  tunix     google-tunix's `Sampler` over its NNX Llama-3 (prefill and decode programs; NNX
            names no layer, so layers must be inferred)
  hf_flax   HF transformers' FlaxLlamaForCausalLM.generate over a checkpoint dir (argv[3]),
            jitted whole (one program: a prefill, then a `while` loop of decode steps; Flax
            linen scopes every module)
  scanned   a Flax linen decoder whose layers run under `nn.scan` (MaxText's scan_layers)
  no_xla    a trace of Python work that runs no XLA program
  tagged    steps annotated as tpu-inference's runner annotates them (`execute_model: N reqs, T
            toks`, with `request_id1`... arguments: its format, reproduced, since tpu-inference
            runs only on TPU), around a small jitted model step
"""
from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

TOKENIZER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tpu_engine", "assets",
                         "tokenizer.json")
LAYERS = 3


def _traced(out: str, call, times: int = 2) -> None:
    jax.block_until_ready(call())  # warm-up: compile outside the trace
    jax.profiler.start_trace(out)
    for _ in range(times):
        jax.block_until_ready(call())
    jax.profiler.stop_trace()


def tunix(out: str) -> None:
    from flax import nnx
    from transformers import PreTrainedTokenizerFast
    from tunix.generate import sampler as sampler_lib
    from tunix.models.llama3 import model as llama3
    tok = PreTrainedTokenizerFast(tokenizer_file=TOKENIZER, bos_token="<s>", eos_token="</s>", pad_token="<unk>")
    cfg = llama3.ModelConfig(num_layers=LAYERS, vocab_size=32000, embed_dim=64, hidden_dim=128, num_heads=4,
                             head_dim=16, num_kv_heads=2, rope_theta=10000, norm_eps=1e-5)
    model = llama3.Llama3(cfg, rngs=nnx.Rngs(params=0))
    sampler = sampler_lib.Sampler(model, tok, sampler_lib.CacheConfig(cache_size=64, num_layers=LAYERS,
                                                                       num_kv_heads=2, head_dim=16))
    prompts = ["hello world", "the quick brown fox jumps"]
    _traced(out, lambda: sampler(prompts, max_generation_steps=6).tokens)


def hf_flax(out: str, model_dir: str) -> None:
    """The HF checkpoint in `model_dir` (the tests' small Llama, safetensors), loaded as HF's
    Flax model."""
    from transformers import FlaxLlamaForCausalLM
    model = FlaxLlamaForCausalLM.from_pretrained(model_dir, from_pt=True)
    ids = jnp.asarray(np.random.RandomState(0).randint(3, 250, size=(2, 12)), dtype=jnp.int32)
    generate = jax.jit(lambda ids: model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0).sequences)
    _traced(out, lambda: generate(ids))


def scanned(out: str) -> None:
    import flax.linen as nn

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x, _):
            h = nn.RMSNorm(name="input_norm")(x)
            q, k, v = (nn.Dense(64, name=n)(h) for n in ("q_proj", "k_proj", "v_proj"))
            w = jax.nn.softmax(jnp.einsum("btd,bsd->bts", q, k) / 8.0, axis=-1)
            x = x + nn.Dense(64, name="o_proj")(jnp.einsum("bts,bsd->btd", w, v))
            h = nn.RMSNorm(name="post_norm")(x)
            return x + nn.Dense(64, name="down_proj")(nn.silu(nn.Dense(128, name="up_proj")(h))), None

    class Decoder(nn.Module):
        @nn.compact
        def __call__(self, ids):
            x = nn.Embed(256, 64, name="embed")(ids)
            layers = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=4)
            x, _ = layers(name="layers")(x, None)
            return nn.Dense(256, name="lm_head")(nn.RMSNorm(name="norm")(x))

    ids = jnp.ones((2, 16), jnp.int32)
    params = Decoder().init(jax.random.PRNGKey(0), ids)
    forward = jax.jit(Decoder().apply)
    _traced(out, lambda: forward(params, ids))


def no_xla(out: str) -> None:
    jax.profiler.start_trace(out)
    total = sum(i * i for i in range(200_000))  # Python work only: no XLA program runs
    jax.profiler.stop_trace()
    assert total > 0


# (request ids, tokens) of each tagged step: a prefill of two, decodes of two, then of one
TAGGED_STEPS = [(("a", "b"), 24), (("a", "b"), 2), (("a", "b"), 2), (("b",), 1)]


def tagged(out: str) -> None:
    w = jnp.asarray(np.random.RandomState(0).randn(64, 64), jnp.float32)
    step = jax.jit(lambda x: jnp.tanh(x @ w) @ w)
    x = jnp.ones((32, 64), jnp.float32)
    jax.block_until_ready(step(x))
    jax.profiler.start_trace(out)
    for ids, toks in TAGGED_STEPS:
        tags = {f"request_id{i + 1}": r for i, r in enumerate(ids)}
        with jax.profiler.TraceAnnotation(f"execute_model: {len(ids)} reqs, {toks} toks", **tags):
            jax.block_until_ready(step(x))
    jax.profiler.stop_trace()


if __name__ == "__main__":
    kinds = {"tunix": tunix, "hf_flax": hf_flax, "scanned": scanned, "no_xla": no_xla, "tagged": tagged}
    for kind in sys.argv[1].split(","):
        kinds[kind](os.path.join(sys.argv[2], kind), *sys.argv[3:4] if kind == "hf_flax" else ())
