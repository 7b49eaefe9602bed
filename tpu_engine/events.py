"""What the engine announces: each step's begin and end (a `StepRecord`), and each KV-cache
slot a request takes or gives back. Others listen.

The engine only publishes. Code that wants to act on them (a profiler starting a trace at the
first decode step, a manifest writer, a metrics exporter) subscribes a callback. A
`StepRecord` is also the one record of a step outside the engine: a capture's
`manifest.jsonl` holds one per line (`to_json` / `from_json`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Generic, TypeVar

PHASES = ("prefill", "decode")


@dataclasses.dataclass(frozen=True)
class StepRecord:
    """One engine step: what it ran, and (once it ended) when and whether it compiled."""
    step: int                 # engine step number, counting from 0 after warm-up
    phase: str                # "prefill" or "decode"
    bucket: int               # prefill: padded length; decode: padded batch (slots)
    batch_size: int           # real sequences in the step
    num_tokens: int           # real tokens processed
    padded_tokens: int        # tokens the compiled shape processes
    kv_len_min: int           # shortest / longest context attended, in tokens
    kv_len_max: int
    kv_bucket: int            # decode: attention span compiled; prefill: same as bucket
    request_ids: tuple[str, ...]
    wall_start: float         # time.time() at the step's start
    wall_end: float | None = None          # set once the step ended
    compiles: int | None = None            # XLA compilations during the step, once it ended
    compile_time_s: float | None = None
    pass_index: int = 0       # which pass of a profiling run (a profiler sets it; 0 otherwise)
    # Per request, in the order of `request_ids` (empty in manifests written before them): the
    # tokens it puts through this step (prefill: its prompt; decode: 1), the context it attends
    # after it, and (prefill only: where each request is first scheduled) when it arrived.
    request_tokens: tuple[int, ...] = ()
    request_kv: tuple[int, ...] = ()
    arrivals: tuple[float, ...] = ()
    seq_bucket: int | None = None   # sequences the compiled shape holds (prefill: prompt rows)
    sampling: str = ""              # the sampler program: greedy or random, +logprobs

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for name in _TUPLES:
            out[name] = list(getattr(self, name))
        out["pass"] = out.pop("pass_index")
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "StepRecord":
        """The record of a `to_json` dict; ValueError naming the first field that is missing
        or of the wrong type."""
        if not isinstance(data, dict):
            raise ValueError(f"a step record must be a JSON object, not {type(data).__name__}.")
        values = {k: v for k, v in data.items() if k in _TYPES}
        values["pass_index"] = data.get("pass", data.get("pass_index", 0))
        for name, (kinds, required) in _TYPES.items():
            value = values.get(name)
            if value is None and not required:
                continue
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise ValueError(f"step record field {name!r} is {value!r}; expected "
                                 f"{' or '.join(k.__name__ for k in kinds)}.")
        for name, kinds in _TUPLES.items():
            items = values.get(name, ())
            if not all(isinstance(v, kinds) and not isinstance(v, bool) for v in items):
                raise ValueError(f"step record field {name!r} is {items!r}; expected a list of "
                                 f"{' or '.join(k.__name__ for k in kinds)}.")
            values[name] = tuple(items)
        return cls(**values)


_INT, _NUM = (int,), (int, float)
# field -> (accepted JSON types, required)
_TYPES = {"step": (_INT, True), "phase": ((str,), True), "bucket": (_INT, True),
          "batch_size": (_INT, True), "num_tokens": (_INT, True), "padded_tokens": (_INT, True),
          "kv_len_min": (_INT, True), "kv_len_max": (_INT, True), "kv_bucket": (_INT, True),
          "request_ids": ((list, tuple), True), "wall_start": (_NUM, True), "wall_end": (_NUM, False),
          "compiles": (_INT, False), "compile_time_s": (_NUM, False), "pass_index": (_INT, True),
          "request_tokens": ((list, tuple), False), "request_kv": ((list, tuple), False),
          "arrivals": ((list, tuple), False), "seq_bucket": (_INT, False), "sampling": ((str,), False)}
_TUPLES = {"request_ids": (str,), "request_tokens": _INT, "request_kv": _INT, "arrivals": _NUM}


@dataclasses.dataclass(frozen=True)
class PhaseEvent:
    """A step is about to run ("begin": `record.wall_end` is None) or has run ("end")."""
    kind: str
    record: StepRecord


@dataclasses.dataclass(frozen=True)
class SlotEvent:
    """A request took ("allocate") or gave back ("free") a decode slot: `max_model_len`
    positions of the static KV cache."""
    kind: str
    request_id: str
    slot: int
    tokens: int                  # allocate: prompt tokens; free: tokens its cache held
    slots_used: int              # slots in use after the change
    output_tokens: int = 0       # free: tokens generated
    finish_reason: str | None = None  # free: "length", "stop" or "abort"


E = TypeVar("E")


class EventBus(Generic[E]):
    """Listeners run synchronously in the engine's thread; an exception in one propagates out
    of `step()` (a profiler that fails should not fail silently)."""

    def __init__(self):
        self._listeners: list[Callable[[E], None]] = []

    def subscribe(self, fn: Callable[[E], None]) -> Callable[[], None]:
        """Call `fn` for every event; returns a function that unsubscribes it."""
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn) if fn in self._listeners else None

    def publish(self, event: E) -> None:
        for fn in list(self._listeners):
            fn(event)

    def __bool__(self) -> bool:
        return bool(self._listeners)
