"""`LLM`: the vLLM-style offline API over the step engine."""
from __future__ import annotations

from typing import Any, Sequence

from tqdm import tqdm

from .config import DEFAULT_MODEL
from .engine import EngineConfig, LLMEngine
from .outputs import RequestOutput, SamplingParams


class LLM:
    """LLM(model, dtype, max_model_len, tensor_parallel_size, enforce_eager, load_format, seed,
    max_num_seqs, max_num_batched_tokens, compilation_cache_dir, strict_compiles).

    Steps run as XLA graphs captured once per shape with torch.compile (dynamo, `openxla`
    backend). `enforce_eager=True` skips dynamo: every step is traced lazily in Python, which
    costs host time per step but puts the model's module names (`model.layers.3.mlp`) into the
    HLO op metadata, for profiles read with XLA_HLO_DEBUG=1. Both warm up every shape."""

    def __init__(self, model: str = DEFAULT_MODEL, **kwargs: Any):
        self.llm_engine = LLMEngine(EngineConfig(model=model, **kwargs))
        self._counter = 0

    @classmethod
    def from_config(cls, config: EngineConfig) -> "LLM":
        """An LLM over a config made elsewhere (a command's flags), keeping its resolved limits."""
        llm = cls.__new__(cls)
        llm.llm_engine, llm._counter = LLMEngine(config), 0
        return llm

    @staticmethod
    def _as_prompt_list(prompts: Any) -> list:
        """One prompt (a dict, or a flat sequence of ids) or a sequence of prompts -> a list."""
        if isinstance(prompts, dict):
            return [prompts]
        if isinstance(prompts, str) or not hasattr(prompts, "__len__") or not hasattr(prompts, "__getitem__"):
            raise ValueError(f"prompts {prompts!r:.60} must be a prompt or a list of prompts.")
        if getattr(prompts, "ndim", None) == 1 or (len(prompts) and not hasattr(prompts[0], "__len__")):
            return [prompts]  # a flat sequence of token ids (list, tuple, 1-D array)
        return list(prompts)

    def generate(self, prompts: Any, sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 use_tqdm: bool = True) -> list[RequestOutput]:
        """Run prompts ({'prompt_token_ids': [...]} or lists of ids) to completion; one output
        per prompt, in order. Every prompt is checked before any starts."""
        prompts = self._as_prompt_list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        params = list(sampling_params) if isinstance(sampling_params, (list, tuple)) else [sampling_params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"got {len(params)} sampling params for {len(prompts)} prompts; expected one or one each.")
        engine = self.llm_engine
        for prompt, p in zip(prompts, params):
            engine.validate(prompt, p)
        ids: list[str] = []
        done: dict[str, RequestOutput] = {}
        bar = tqdm(total=len(prompts), desc="Processed prompts", disable=not use_tqdm)
        try:
            for prompt, p in zip(prompts, params):
                while engine.has_request(str(self._counter)):
                    self._counter += 1
                ids.append(str(self._counter))
                self._counter += 1
                engine.add_request(ids[-1], prompt, p)
            while engine.has_unfinished_requests():
                for out in engine.step():
                    if out.finished:
                        done[out.request_id] = out
                        bar.update(1)
        except BaseException:
            engine.abort_request(ids)  # leave the engine clean for the next call
            raise
        finally:
            bar.close()
        return [done[i] for i in ids]
