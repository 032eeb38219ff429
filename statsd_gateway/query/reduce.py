"""The reductions: a query's bucket rows (as columns) → one value per (group, cell), in numpy.

Pure functions, no I/O; the engine runs them off the event loop. Each row is assigned a cell
(its window bucket, or the one cell of the range) and, when the plan groups, the group of its
series; cells are then numbered in (group, time) order and each aggregation reduces the rows
of every cell at once (np.bincount, ufunc.at, one flat pass over the sketches), never with a
Python loop over rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from statsd_gateway import sketch
from statsd_gateway.model import Tags
from statsd_gateway.query.plan import AggOp, Aggregation, QueryPlan
from statsd_gateway.query.result import SeriesResult
from statsd_gateway.store.base import Columns

_F64 = npt.NDArray[np.float64]
_I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class QueryRows:
    """The bucket rows a query reads, as columns: the stored rows (segment by segment, each in
    store order), then the rows still in memory. `cols.series` (read only to group by tags)
    indexes `tags`; a series both stored and in memory has two entries."""

    tags: list[Tags]
    cols: Columns

    def __len__(self) -> int:
        return len(self.cols)


def reduce_rows(plan: QueryPlan, rows: QueryRows) -> list[SeriesResult]:
    """The plan's aggregation per (group, cell) over `rows`: the groups with at least one
    cell, ordered by their tags, each with its cells in time order."""
    cols = rows.cols
    w = plan.window
    if w:
        index, cell = unique_codes(np.floor(cols.ts / w).astype(np.int64))
        buckets = index.astype(np.float64) * w  # = np.floor(ts / w) * w, the same floats
    else:
        buckets = np.full(min(len(cols), 1), plan.start)
        cell = np.zeros(len(cols), dtype=np.int64)
    cell_ts: _F64 = buckets
    cell_group: _I64 = np.zeros(buckets.size, dtype=np.int64)
    groups: list[Tags] = [()]
    if not plan.grouping.is_total:
        assert cols.series is not None  # the engine reads the rows' series to group them
        # The group of each series, once per series (not per row), by rank in sorted order.
        group_of = [plan.grouping.group_of(t) for t in rows.tags]
        groups = sorted(set(group_of))
        rank = {g: i for i, g in enumerate(groups)}
        series_group = np.array([rank[g] for g in group_of], dtype=np.int64)
        n_b = max(buckets.size, 1)
        # Cells sorted by (group, bucket), as the answer lists them.
        codes, cell = unique_codes(series_group[cols.series] * n_b + cell)
        cell_group = codes // n_b
        cell_ts = buckets[codes % n_b]
    values = reduce_cells(plan.aggregation, cols, cell, cell_ts.size, plan.cell_seconds)
    # Each group's cells are contiguous (cells are in group order): split at the changes.
    ends = np.flatnonzero(np.append(cell_group[1:] != cell_group[:-1], True)) + 1
    out = []
    begin = 0
    for end in ends.tolist() if cell_ts.size else []:
        g = int(cell_group[begin])
        out.append(SeriesResult(groups[g], cell_ts[begin:end], values[begin:end]))
        begin = end
    return out


def unique_codes(codes: _I64) -> tuple[_I64, _I64]:
    """np.unique(codes, return_inverse=True) for integer codes, without sorting when their
    range is small (time buckets of a query, (group, bucket) pairs): a presence table."""
    if not codes.size:
        return codes, codes
    lo, hi = int(codes.min()), int(codes.max())
    if hi - lo > 4 * codes.size + (1 << 16):
        uniq, inverse = np.unique(codes, return_inverse=True)
        return uniq, inverse.reshape(-1)
    offset = codes - lo
    present = np.zeros(hi - lo + 1, dtype=np.bool_)
    present[offset] = True
    rank = np.cumsum(present) - 1
    return np.flatnonzero(present) + lo, rank[offset]


def reduce_cells(agg: Aggregation, cols: Columns, cell: _I64, n: int, seconds: float) -> _F64:
    """`agg` over the rows of each of `n` cells (`cell` is each row's), NaN where a cell has
    no value; `seconds` is a cell's length, for the rates. Sums add the rows one by one in row
    order (np.bincount does), as Python 3.11's sum() over the rows does: the same float, where
    a pairwise or compensated sum could differ."""
    v = cols.values
    op = agg.op
    if op is AggOp.COUNT:
        return _overflowed(_cell_sum(v["count"], cell, n))
    if op in (AggOp.SUM, AggOp.RATE):
        total = _cell_sum(v["sum"], cell, n)
        return _overflowed(total / seconds if op is AggOp.RATE else total)
    if op is AggOp.COUNT_RATE:
        return _overflowed(_cell_sum(v["count"], cell, n) / seconds)
    if op is AggOp.AVG:
        count = _cell_sum(v["count"], cell, n)
        total = _cell_sum(v["sum"], cell, n)
        some = count != 0
        out = np.full(n, np.nan)
        out[some] = _overflowed(total[some] / count[some])
        return out
    if op is AggOp.MIN:
        return cell_extreme(np.fmin, v["min"], cell, n)
    if op is AggOp.MAX:
        return cell_extreme(np.fmax, v["max"], cell, n)
    if op is AggOp.LAST:
        return cell_last(v["last"], v["last_ts"], cell, n)
    if op is AggOp.DISTINCT:
        return cell_distinct(cols, cell, n)
    assert agg.q is not None
    return cell_quantiles(cols, cell, n, agg.q)


def _cell_sum(x: _F64, cell: _I64, n: int) -> _F64:
    """Each cell's rows added in row order (np.bincount adds them one by one)."""
    return np.bincount(cell, x, n).astype(np.float64, copy=False)


def _overflowed(x: _F64) -> _F64:
    """Cells of an additive aggregation always have a value; where it overflowed both ways
    (inf - inf is NaN) it is reported as +inf, an overflow like any other, not as no value."""
    nan = np.isnan(x)
    if nan.any():
        x = x.copy()
        x[nan] = math.inf
    return x


def cell_extreme(op: np.ufunc, x: _F64, cell: _I64, n: int) -> _F64:
    """np.fmin or np.fmax over each cell's rows: NULLs (NaN) ignored, NaN where a cell has
    none."""
    out = np.full(n, np.nan)
    op.at(out, cell, x)
    return out


def cell_last(last: _F64, last_ts: _F64, cell: _I64, n: int) -> _F64:
    """Each cell's `last` of the row with the greatest last_ts; on equal timestamps the later
    row (rows come oldest first: disk, then pending snapshots, then live). Rows without a last
    value are ignored; NaN where a cell has none."""
    rows = np.flatnonzero(~(np.isnan(last) | np.isnan(last_ts)))
    rows = rows[np.lexsort((rows, last_ts[rows], cell[rows]))]
    cells = cell[rows]
    ends = np.flatnonzero(np.append(cells[1:] != cells[:-1], True)) if rows.size else rows
    out = np.full(n, np.nan)
    out[cells[ends]] = last[rows[ends]]
    return out


def cell_distinct(cols: Columns, cell: _I64, n: int) -> _F64:
    """The estimated distinct members of each cell: its HyperLogLogs merged (0 without one)."""
    per_cell: list[list[bytes]] = [[] for _ in range(n)]
    for c, blob in zip(cell[cols.hll_rows].tolist(), cols.hlls, strict=True):
        per_cell[c].append(blob)
    return np.array(
        [
            float(round(sketch.hll_estimate(sketch.hll_merge(blobs)))) if blobs else 0.0
            for blobs in per_cell
        ],
        dtype=np.float64,
    )


def cell_quantiles(cols: Columns, cell: _I64, n: int, q: float) -> _F64:
    """One quantile per cell, over the sketches of all cells at once (no object per row),
    each estimate clamped into the cell's exact [min, max]; p0 and p100 are the exact extremes.
    NaN where a cell has no min or max."""
    mn = cell_extreme(np.fmin, cols.values["min"], cell, n)
    mx = cell_extreme(np.fmax, cols.values["max"], cell, n)
    if q == 0.0:
        out = mn
    elif q == 1.0:
        out = mx
    else:
        estimate = sketch.cell_quantiles(cols.sketches, cell[cols.sketch_rows], n, q)
        out = np.minimum(np.maximum(estimate, mn), mx)  # NaN (no estimate) stays NaN
    out[np.isnan(mn) | np.isnan(mx)] = np.nan
    return out


def merge_sketches(cols: Columns) -> tuple[sketch.Bins, float, float, float, float]:
    """Every row's sketch merged into one, with the exact count, sum, min and max (NaN when no
    row has one) of the rows."""
    # Sums add row by row, as the query's bincount does (numpy's sum is pairwise and
    # Python 3.12's sum() compensated: other roundings).
    n = np.zeros(len(cols), dtype=np.int64)
    count, total = (float(np.bincount(n, cols.values[v], 1)[0]) for v in ("count", "sum"))
    mins = [v for v in cols.values["min"].tolist() if not math.isnan(v)]
    maxs = [v for v in cols.values["max"].tolist() if not math.isnan(v)]
    merged = sketch.Bins.empty()
    flat = cols.sketches
    if len(flat):  # merged in one pass, no Bins per row
        merged = sketch.merge_flat(flat, np.zeros(len(flat), dtype=np.int64), 1).bins(0)
    return merged, count, total, min(mins, default=math.nan), max(maxs, default=math.nan)
