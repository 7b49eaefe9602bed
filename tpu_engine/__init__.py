"""tpu_engine: an XLA-compiled Llama/Qwen2 inference engine on torch_xla (TPU, or CPU)."""
from .config import DEFAULT_MODEL, REGISTRY, ModelConfig
from .engine import EngineConfig, LLMEngine
from .events import PhaseEvent
from .llm import LLM
from .outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput, SamplingParams

__all__ = ["LLM", "LLMEngine", "EngineConfig", "SamplingParams", "RequestOutput", "CompletionOutput",
           "Logprob", "RequestMetrics", "PhaseEvent", "ModelConfig", "REGISTRY", "DEFAULT_MODEL"]
__version__ = "0.1.0"
