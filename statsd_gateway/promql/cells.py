"""A selector's rows on a grid of cells, and the cells each evaluation step covers.

The time model (docs/PROMETHEUS.md, "Time"): our data are buckets, not samples. A bucket
[b, b + r) counts as a sample at its end, b + r, when it is complete, as a scrape at the flush
would see it. Rows are read on a grid of cells of one tier's resolution `g` (a row of a finer
tier falls inside one cell); a step at time t with a range (or look-back) `width` covers the
cells whose end lies in (t - width, t]: exactly width / g cells when g divides width, for any t.
The grid's `g` is a tier resolution that divides the width where one does, the finest otherwise
(then a window holds ⌊width/g⌋ or ⌈width/g⌉ cells, which the rates divide by: `covered`).

Everything here runs on the evaluation's worker thread, in numpy (no Python object per row).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from statsd_gateway.errors import Unprocessable
from statsd_gateway.store.base import Columns
from statsd_gateway.store.tiers import is_multiple

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Labels = tuple[tuple[str, str], ...]
# Elements one windowed reduction gathers at once (series × steps × cells a window), ~32 MB.
_GATHER_BLOCK = 4_000_000
# What one query may make the evaluation hold or walk (Prometheus' query.max-samples is 50 M):
# cells of one grid, series × cells of one selection, rows repeated over the steps holding
# them. Past it the query is refused (`too_many_samples`), never left to run the host dry.
MAX_GRID_CELLS = 2_000_000
MAX_SAMPLES = 20_000_000


def too_many_samples(what: str) -> Unprocessable:
    return Unprocessable(
        f"query processing would load too many samples into memory in query execution "
        f"({what}); ask for a shorter range, a coarser step or fewer series"
    )


@dataclass(frozen=True, slots=True)
class Tier:
    resolution: float
    retention: float


def grid_resolution(
    tiers: tuple[Tier, ...], width: float, step: float | None, oldest: float, now: float
) -> float:
    """The resolution of the cells a selection is read in: among the tiers whose resolution
    divides `width` (all, if none does), one that still holds `oldest` (the earliest time the
    selection reads), the coarsest no coarser than the step for a range query (a graph's
    points need no finer cells than its steps), the finest for an instant query (the freshest
    answer). Where no tier holds `oldest`, the coarsest (which keeps the longest)."""
    dividing = [t for t in tiers if is_multiple(width, t.resolution)] or list(tiers)
    holding = [t for t in dividing if now - t.retention <= oldest]
    if not holding:
        return dividing[-1].resolution
    if step is None:
        return holding[0].resolution
    fine = [t for t in holding if t.resolution <= step + 1e-9]
    return (fine[-1] if fine else holding[0]).resolution


@dataclass(frozen=True, slots=True)
class Grid:
    """Cells of `g` seconds, cell 0 starting at `k0 * g`, `size` of them."""

    g: float
    k0: int
    size: int

    @staticmethod
    def covering(g: float, times: F64, width: float) -> Grid:
        """The cells the steps at `times` cover with `width` (see the module)."""
        lo = math.floor((float(times.min()) - width) / g)
        hi = math.floor(float(times.max()) / g)
        if hi - lo > MAX_GRID_CELLS:
            raise too_many_samples(f"{hi - lo} buckets of {g:g}s")
        return Grid(g, lo, max(hi - lo, 1))  # one cell at least: a range shorter than g

    @property
    def start(self) -> float:
        return self.k0 * self.g

    @property
    def until(self) -> float:
        return (self.k0 + self.size) * self.g

    def windows(self, times: F64, width: float) -> tuple[I64, I64]:
        """Per step, the cells [lo, hi) it covers, clipped to the grid."""
        lo = np.floor((times - width) / self.g).astype(np.int64) - self.k0
        hi = np.floor(times / self.g).astype(np.int64) - self.k0
        return np.clip(lo, 0, self.size), np.clip(hi, 0, self.size)

    def cell_of(self, ts: F64) -> I64:
        return np.floor(ts / self.g).astype(np.int64) - self.k0


@dataclass(frozen=True, slots=True)
class SeriesRows:
    """The rows of one selection: `labels[s]` is series s's label set (Prometheus names,
    `__name__` included), `series[i]` and `cell[i]` row i's series and cell, `cols` the rows."""

    grid: Grid
    labels: list[Labels]
    series: I64
    cell: I64
    cols: Columns

    @property
    def n_series(self) -> int:
        return len(self.labels)

    def grouped(self, labels: list[Labels], group_of: I64) -> SeriesRows:
        """The same rows with series s in group `group_of[s]`, groups labelled `labels`."""
        series = group_of[self.series] if self.series.size else self.series
        return SeriesRows(self.grid, labels, series, self.cell, self.cols)

    def check_size(self) -> None:
        """Refuses a selection whose series × cells arrays would be too large."""
        if self.n_series * self.grid.size > MAX_SAMPLES:
            raise too_many_samples(f"{self.n_series} series × {self.grid.size} buckets")

    def dense(self, values: F64) -> F64:
        """Each (series, cell)'s rows' values added (rows in order), as series × cells."""
        n = self.n_series * self.grid.size
        flat = np.bincount(self.series * self.grid.size + self.cell, values, n)
        return flat.astype(np.float64, copy=False).reshape(self.n_series, self.grid.size)

    def presence(self) -> npt.NDArray[np.bool_]:
        """Which (series, cell) has a row."""
        n = self.n_series * self.grid.size
        flat = np.bincount(self.series * self.grid.size + self.cell, minlength=n) > 0
        return flat.reshape(self.n_series, self.grid.size)

    def dense_extreme(self, op: np.ufunc, values: F64) -> F64:
        """np.fmin or np.fmax of each (series, cell)'s rows, NaN where none has a value."""
        out = np.full(self.n_series * self.grid.size, np.nan)
        op.at(out, self.series * self.grid.size + self.cell, values)
        return out.reshape(self.n_series, self.grid.size)

    def dense_last(self) -> F64:
        """Each (series, cell)'s `last` of the row with the latest `last_ts` (the later row on
        a tie), NaN where no row has one."""
        last, last_ts = self.cols.values["last"], self.cols.values["last_ts"]
        flat_cell = self.series * self.grid.size + self.cell
        rows = np.flatnonzero(~(np.isnan(last) | np.isnan(last_ts)))
        rows = rows[np.lexsort((rows, last_ts[rows], flat_cell[rows]))]
        cells = flat_cell[rows]
        ends = np.flatnonzero(np.append(cells[1:] != cells[:-1], True)) if rows.size else rows
        out = np.full(self.n_series * self.grid.size, np.nan)
        out[cells[ends]] = last[rows[ends]]
        return out.reshape(self.n_series, self.grid.size)


def window_reduce(dense: F64, lo: I64, hi: I64, how: str) -> F64:
    """Per series and step, `how` ("sum", "min", "max") over the cells [lo, hi) of the step, of
    a series × cells array; NaN where a window is empty (or, for min and max, all NaN).
    Sums add a window's cells pairwise: exact for integers, and no running total whose
    rounding a long range would carry into every window."""
    n_series, n_steps = dense.shape[0], lo.size
    out = np.full((n_series, n_steps), np.nan)
    span = int((hi - lo).max(initial=0))
    if span <= 0 or n_series == 0:
        return out
    if n_steps * span > MAX_SAMPLES:
        if how != "sum":
            raise too_many_samples(f"{n_steps} steps × windows of {span} buckets")
        # Long windows: one running total per series, each window a difference.
        prefix = np.zeros((n_series, dense.shape[1] + 1))
        np.cumsum(dense, axis=1, out=prefix[:, 1:])
        got: F64 = prefix[:, hi] - prefix[:, lo]
        got[:, hi <= lo] = np.nan
        return got
    at = lo[:, None] + np.arange(span)  # steps × span
    inside = at < hi[:, None]
    at = np.minimum(at, max(dense.shape[1] - 1, 0))
    empty = ~inside.any(axis=1)
    block = max(1, _GATHER_BLOCK // max(n_steps * span, 1))
    for first in range(0, n_series, block):
        part = dense[first : first + block][:, at]  # block × steps × span
        if how == "sum":
            got = np.where(inside, part, 0.0).sum(axis=2)
        else:
            op = np.fmin if how == "min" else np.fmax
            got = op.reduce(np.where(inside, part, np.nan), axis=2)
        got[:, empty] = np.nan
        out[first : first + block] = got
    return out


def window_any(present: npt.NDArray[np.bool_], lo: I64, hi: I64) -> npt.NDArray[np.bool_]:
    """Per series and step, whether any cell of the window has a row."""
    counts = np.concatenate(
        [np.zeros((present.shape[0], 1), dtype=np.int64), np.cumsum(present, axis=1)], axis=1
    )
    some: npt.NDArray[np.bool_] = (counts[:, hi] - counts[:, lo]) > 0
    return some


def window_latest(present: npt.NDArray[np.bool_], lo: I64, hi: I64) -> I64:
    """Per series and step, the latest cell of the window with a row, or -1."""
    n_cells = present.shape[1]
    latest = np.where(present, np.arange(n_cells), -1)
    latest = np.maximum.accumulate(latest, axis=1) if n_cells else latest
    out = np.full((present.shape[0], lo.size), -1, dtype=np.int64)
    some = hi > 0
    if some.any():
        got = latest[:, hi[some] - 1]
        got[got < lo[some]] = -1
        out[:, some] = got
    return out


def extrapolated(total: F64, covered: F64, width: float, *, per_second: bool) -> F64:
    """A window's sum as a rate (per second of the cells it holds) or as an increase over the
    range asked: the sum itself where the cells cover the range exactly (no rounding through
    a rate), else that rate times the range."""
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = total / covered
        if per_second:
            return rate
        exact = np.isclose(covered, width, rtol=0.0, atol=1e-9)
        return np.where(exact, total, rate * width)
