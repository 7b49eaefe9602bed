"""The table type shared by the analysis, service and capture sides, and its terminal, CSV and
JSON forms. A table's rows are instances of one dataclass (its row type): the fields are the
columns, in order, so code reads `row.total_ms`, never `row["total_ms"]`. A field made with
`hidden()` travels in JSON but is not a column of the text and CSV forms."""
from __future__ import annotations

import csv
import dataclasses
import math
from typing import Any, Callable, Generic, Iterable, TypeVar

R = TypeVar("R")


def hidden(default: Any = dataclasses.MISSING) -> Any:
    """A row field carried in JSON (and by code) that is not a column of the text and CSV tables."""
    return dataclasses.field(default=default, metadata={"column": False})


@dataclasses.dataclass
class Table(Generic[R]):
    title: str
    row_type: type[R]
    rows: list[R]

    @property
    def columns(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.row_type) if f.metadata.get("column", True)]

    def with_rows(self, rows: Iterable[R]) -> "Table[R]":
        return Table(self.title, self.row_type, list(rows))

    def values(self, row: R) -> list[Any]:
        return [getattr(row, c) for c in self.columns]

    def to_dict(self) -> dict:
        return {"title": self.title, "columns": self.columns, "rows": [dataclasses.asdict(r) for r in self.rows]}

    def write_csv(self, path: str) -> None:
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(self.columns)
            for r in self.rows:
                w.writerow([_plain(v) for v in self.values(r)])

    def render(self, width: int = 100, limit: int | None = None, columns: list[str] | None = None,
               cell: Callable[[R, str, Any], Any] | None = None) -> str:
        """Fixed-width text no wider than `width`; the first column is cut to fit. `cell(row,
        column, value)` may replace what a cell shows (a marker, "absent")."""
        columns = columns or self.columns
        rows = self.rows[:limit] if limit else self.rows
        show = cell or (lambda r, c, v: v)
        cells = [[_fmt(show(r, c, getattr(r, c))) for c in columns] for r in rows]
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
