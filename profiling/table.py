"""A small table type shared by the terminal, CSV and JSON outputs."""
from __future__ import annotations

import csv
import dataclasses
import math
from typing import Any


@dataclasses.dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[dict[str, Any]]

    def to_dict(self) -> dict:
        return {"title": self.title, "columns": self.columns, "rows": self.rows}

    def write_csv(self, path: str) -> None:
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            w.writeheader()
            for r in self.rows:
                w.writerow({k: _plain(r.get(k)) for k in self.columns})

    def render(self, width: int = 100, limit: int | None = None, columns: list[str] | None = None) -> str:
        """Fixed-width text no wider than `width`; the first column is cut to fit."""
        columns = columns or self.columns
        rows = self.rows[:limit] if limit else self.rows
        cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
        widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
        rest = sum(widths[1:]) + 2 * (len(widths) - 1)
        widths[0] = max(8, min(widths[0], width - rest))
        def line(vals):
            first = vals[0] if len(vals[0]) <= widths[0] else vals[0][:widths[0] - 1] + "~"
            parts = [first.ljust(widths[0])] + [v.rjust(w) for v, w in zip(vals[1:], widths[1:])]
            return "  ".join(parts).rstrip()
        out = [self.title[:width], line(columns), line(["-" * w for w in widths])]
        out += [line(c) for c in cells]
        if limit and len(self.rows) > limit:
            out.append(f"... {len(self.rows) - limit} more rows")
        return "\n".join(out)


def _plain(v):
    return repr(v) if isinstance(v, float) else v  # full precision: CSV is for machines


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if v == 0:
            return "0"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        return f"{v:.3f}"
    return str(v)


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no values."""
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def number_ranges(nums) -> str:
    """`1-12, 14, 20-22`: sorted integers as runs of consecutive values."""
    runs: list[list[int]] = []
    for n in sorted(set(nums)):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
