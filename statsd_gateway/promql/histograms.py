"""Histograms (values.Histograms) → numbers: `histogram_quantile`, `histogram_count`,
`histogram_sum`, `histogram_avg`, per group and step.

A quantile merges the DDSketches of every row of every series of a group in the step's window
(never an average of quantiles: DDSketch merges exactly), then clamps the estimate into the
exact min and max of those rows, as /v1/metrics/query does; φ = 0 and φ = 1 are the exact min
and max. Each row is counted once in every step whose window holds its cell: the rows are
repeated per step (`_per_step`) and reduced as cells of (group, step), all at once.
"""

from __future__ import annotations

import numpy as np

from statsd_gateway import sketch
from statsd_gateway.promql.cells import (
    F64,
    I64,
    MAX_SAMPLES,
    extrapolated,
    too_many_samples,
    window_any,
    window_reduce,
)
from statsd_gateway.promql.values import Histograms, Vector


def _per_step(h: Histograms) -> tuple[I64, I64]:
    """(row, output cell) pairs: each row with each (group, step) cell whose window holds it;
    output cell = group × steps + step."""
    rows = h.rows
    n_steps = h.lo.size
    # Windows move forward with the steps (lo and hi never decrease), so the steps holding
    # cell k are the contiguous run [first step with hi > k, first step with lo > k).
    first = np.searchsorted(h.hi, rows.cell, side="right")
    end = np.searchsorted(h.lo, rows.cell, side="right")
    if not np.all(np.diff(h.lo) >= 0) or not np.all(np.diff(h.hi) >= 0):
        raise AssertionError("windows must move forward with the steps")
    reps = np.maximum(end - first, 0)
    if int(reps.sum()) > MAX_SAMPLES:
        raise too_many_samples(f"{int(reps.sum())} bucket sketches over the steps")
    row = np.repeat(np.arange(len(rows.cell), dtype=np.int64), reps)
    start_of = np.repeat(first - np.concatenate(([0], np.cumsum(reps)[:-1])), reps)
    step = start_of + np.arange(row.size, dtype=np.int64)
    group = h.group_of[rows.series[row]]
    return row, group * n_steps + step


def _vector(h: Histograms, values: F64, has: np.ndarray) -> Vector:
    n_steps = h.lo.size
    out = np.where(has, values, np.nan).reshape(len(h.groups), n_steps)
    return Vector(list(h.groups), out).present()


def _totals(h: Histograms, column: str) -> tuple[F64, np.ndarray]:
    row, cell = _per_step(h)
    n = len(h.groups) * h.lo.size
    total = np.bincount(cell, h.rows.cols.values[column][row], n).astype(np.float64, copy=False)
    has = np.bincount(cell, minlength=n) > 0
    return total, has


def _scale(h: Histograms, total: F64) -> F64:
    """A rate per second of the window, or an increase over the range asked."""
    covered = np.tile(h.covered, len(h.groups))
    return extrapolated(total, covered, h.width, per_second=h.per_second)


def count(h: Histograms) -> Vector:
    total, has = _totals(h, "count")
    return _vector(h, _scale(h, total), has)


def total(h: Histograms) -> Vector:
    s, has = _totals(h, "sum")
    return _vector(h, _scale(h, s), has)


def average(h: Histograms) -> Vector:
    c, has = _totals(h, "count")
    s, _ = _totals(h, "sum")
    with np.errstate(divide="ignore", invalid="ignore"):
        avg = s / c
    return _vector(h, avg, has & (c != 0))


def quantile(h: Histograms, q: float) -> Vector:
    """φ-quantile per group and step (see the module); φ outside [0, 1] is ±Inf, NaN φ NaN,
    as Prometheus answers them."""
    n_groups, n_cells = len(h.groups), h.rows.grid.size
    rows, cols = h.rows, h.rows.cols
    group = h.group_of[rows.series]
    slot = group * n_cells + rows.cell
    present = (np.bincount(slot, minlength=n_groups * n_cells) > 0).reshape(n_groups, n_cells)
    has = window_any(present, h.lo, h.hi).reshape(-1)
    n = n_groups * h.lo.size
    if np.isnan(q) or q < 0 or q > 1:
        fill = np.nan if np.isnan(q) else (np.inf if q > 1 else -np.inf)
        return _vector(h, np.full(n, fill), has)
    extremes = []
    for op, how in ((np.fmin, "min"), (np.fmax, "max")):
        dense = np.full(n_groups * n_cells, np.nan)
        op.at(dense, slot, cols.values[how])
        extremes.append(
            window_reduce(dense.reshape(n_groups, n_cells), h.lo, h.hi, how).reshape(-1)
        )
    mn, mx = extremes
    if q == 0.0:
        out = mn
    elif q == 1.0:
        out = mx
    else:
        items = cols.sketch_rows
        estimate = sketch.window_quantiles(
            cols.sketches, group[items], rows.cell[items], n_groups, n_cells, h.lo, h.hi, q
        )
        flat_estimate = _expanded_quantiles(h, q) if estimate is None else estimate.reshape(-1)
        out = np.minimum(np.maximum(flat_estimate, mn), mx)
    out[np.isnan(mn) | np.isnan(mx)] = np.nan
    return _vector(h, out, has)


def _expanded_quantiles(h: Histograms, q: float) -> F64:
    """The quantiles with every sketch repeated once per step whose window holds it: the
    exact path where counts are not integral (window_quantiles answers None)."""
    row, cell = _per_step(h)
    cols = h.rows.cols
    n = len(h.groups) * h.lo.size
    # The sketch of row r is item j of cols.sketches where cols.sketch_rows[j] == r.
    item_of = np.full(len(cols), -1, dtype=np.int64)
    item_of[cols.sketch_rows] = np.arange(cols.sketch_rows.size)
    items = item_of[row]
    sketched = items >= 0
    flat = sketch.flat_take(cols.sketches, items[sketched])
    return sketch.cell_quantiles(flat, cell[sketched], n, q)
