"""Functions for the service profiler's in-process tests to instrument."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Batch:
    ids: list


class Worker:
    def __init__(self):
        self.calls = 0

    def run(self, batch: Batch, scale: int = 1) -> list:
        self.calls += 1
        return [i * scale for i in batch.ids]

    async def run_async(self, n: int) -> int:
        return n + 1

    async def stream(self, n: int):
        for i in range(n):
            yield i

    def gather(self, *items, sep: str = ",", **opts) -> str:
        return sep.join(map(str, items))

    @staticmethod
    def helper(x: int) -> int:
        return x * 2


def double_handler(original_func, this, *args, **kwargs):
    """A custom handler: calls the function twice and returns the second result."""
    original_func(this, *args, **kwargs)
    return original_func(this, *args, **kwargs)
