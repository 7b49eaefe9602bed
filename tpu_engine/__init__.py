"""tpu_engine: an XLA-compiled Llama/Qwen2 inference engine on torch_xla or JAX (TPU, or CPU).

Names are imported on first use, so that light modules (`tpu_engine.events`,
`tpu_engine.config`) can be used without loading torch."""
import importlib

_EXPORTS = {
    "DEFAULT_MODEL": "config", "REGISTRY": "config", "ModelConfig": "config",
    "EngineConfig": "engine", "LLMEngine": "engine", "PhaseEvent": "events", "SlotEvent": "events",
    "StepRecord": "events", "EngineInfo": "info", "LLM": "llm",
    "CompletionOutput": "outputs", "Logprob": "outputs", "RequestMetrics": "outputs",
    "RequestOutput": "outputs", "SamplingParams": "outputs",
}
__all__ = list(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
