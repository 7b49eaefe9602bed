"""The finite set of static shapes the engine compiles: prompt-length and decode buckets."""
from __future__ import annotations

import bisect


def powers_of_two(start: int, limit: int) -> list[int]:
    """start, 2*start, ... below `limit`, then `limit` itself."""
    out, b = [], start
    while b < limit:
        out.append(b)
        b *= 2
    return out + [limit]


class Buckets:
    """prefill: packed prompt-token counts; batch: request counts (decode slots, and prompts per
    prefill); kv: decode attention spans."""

    def __init__(self, max_model_len: int, max_num_seqs: int, max_prefill: int | None = None,
                 min_prefill: int = 16, min_kv: int = 128):
        max_prefill = max_prefill or max_model_len
        self.prefill = powers_of_two(min(min_prefill, max_prefill), max_prefill)
        self.batch = powers_of_two(1, max_num_seqs)
        self.kv = powers_of_two(min(min_kv, max_model_len), max_model_len)

    @staticmethod
    def fit(buckets: list[int], n: int) -> int:
        """The smallest bucket >= n (n must not exceed the largest)."""
        return buckets[bisect.bisect_left(buckets, n)]

    def prefill_shape(self, prompt_len: int) -> int:
        return self.fit(self.prefill, prompt_len)

    def prefill_batch_shape(self, prompt_lens) -> tuple[int, int]:
        """(token bucket, request bucket) of one packed prefill of these prompts."""
        return self.fit(self.prefill, sum(prompt_lens)), self.fit(self.batch, len(prompt_lens))

    def prefill_batch_shapes(self) -> list[tuple[int, int]]:
        """Every (token bucket, request bucket) a packed prefill can use: a request bucket is
        possible when its smallest count of one-token prompts fits the token bucket."""
        return [(T, b) for T in self.prefill for i, b in enumerate(self.batch)
                if (self.batch[i - 1] if i else 0) + 1 <= T]

    def decode_shape(self, slots, positions) -> tuple[int, int]:
        """(slot count B, KV span) for a decode over `slots` whose new tokens go to `positions`."""
        return self.fit(self.batch, max(slots) + 1), self.fit(self.kv, max(positions) + 1)

    def decode_shapes(self) -> list[tuple[int, int]]:
        return [(b, kv) for b in self.batch for kv in self.kv]
