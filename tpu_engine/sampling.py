"""What one sequence asks of the sampler in a step, shared by the engine, the server and every
backend (each backend's sampler turns rows of these into device arrays)."""
from __future__ import annotations

import dataclasses

MAX_LOGPROBS = 20  # largest `SamplingParams.logprobs` served (as vLLM's default max_logprobs)


@dataclasses.dataclass(frozen=True)
class SamplingRow:
    """The per-sequence sampling inputs of one step."""
    temperature: float
    top_k: int          # -1 or 0: off
    top_p: float
    seed: int           # 32-bit
    num_logprobs: int   # top alternatives wanted (0: only the chosen token's)
    presence_penalty: float = 0.0     # vLLM's penalties: 0, 0 and 1 are off
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0


GREEDY = SamplingRow(0.0, 0, 1.0, 0, 0)  # what padded rows sample
