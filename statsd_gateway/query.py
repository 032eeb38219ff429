"""Query: a validated QuerySpec → store reads + the interval still in memory → a time series.

Semantics (DESIGN.md §2, §4):
- Window buckets are aligned to multiples of the window since the epoch; rows are read from the
  start of the window bucket holding `since`, so every reported bucket is whole. Empty buckets are
  left out. Without a window there is one point, stamped `since`, for the whole range.
- Quantiles merge the DDSketch bins of every matching bucket and series, then clamp the estimate
  into the exact [min, max]; p0 and p100 are the exact min and max.
- The in-memory interval is merged in, minus any snapshot the store already holds (by flush
  sequence number, read in the same read transaction), so nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import base64
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from statsd_gateway import sketch
from statsd_gateway.aggregator import IntervalAggregator
from statsd_gateway.errors import InvalidArgument, MetricNotFound, QueryTooLarge
from statsd_gateway.model import MetricType, RowBatch, Tags, matches_all
from statsd_gateway.query_params import QuerySpec
from statsd_gateway.store.base import Columns, RowRead, Store
from statsd_gateway.store.tiers import is_multiple


def _check_agg(spec: QuerySpec, mtype: MetricType) -> None:
    allowed = mtype.aggregations
    wanted = "pNN" if spec.quantile is not None else spec.agg
    if wanted not in allowed:
        raise InvalidArgument(
            f"{spec.agg} is not available for {mtype.value} metrics; "
            f"a {mtype.value} has: {', '.join(allowed)}",
            "agg",
        )


def _json_number(v: float) -> float | int | None:
    """JSON has no Infinity or NaN (a sum can overflow): those become null."""
    v = float(v)
    if not math.isfinite(v):
        return None
    if v.is_integer() and abs(v) < 2**53:
        return int(v)
    return v


def _sketch_budget_error(n: int, limit: int, spec: QuerySpec) -> QueryTooLarge:
    span = spec.until - spec.since
    hint = "a coarser window (a multiple of 1m or 1h reads the rollup tiers)"
    if spec.window is None:
        hint = "a window that is a multiple of 1h, which reads the hourly tier"
    return QueryTooLarge(
        f"this query would merge about {n} bucket sketches, more than query.max_sketches "
        f"({limit}); use {hint}, a range shorter than {span:g}s, or a narrower tag filter",
        "window",
    )


_F64 = npt.NDArray[np.float64]
_I64 = npt.NDArray[np.int64]
# The numeric columns each aggregation but a quantile reads.
_AGG_VALUES: dict[str, tuple[str, ...]] = {
    "count": ("count",),
    "sum": ("sum",),
    "avg": ("count", "sum"),
    "rate": ("sum",),
    "count_rate": ("count",),
    "min": ("min",),
    "max": ("max",),
    "last": ("last", "last_ts"),
    "distinct": (),
}


@dataclass(frozen=True, slots=True)
class QueryRows:
    """The bucket rows a query reads, as columns: the stored rows (segment by segment, each in
    store order), then the rows still in memory. `cols.series` (read only to group by tags)
    indexes `tags`; a series both stored and in memory has two entries."""

    tags: list[Tags]
    cols: Columns

    def __len__(self) -> int:
        return len(self.cols)


class QueryEngine:
    def __init__(
        self,
        store: Store,
        aggregator: IntervalAggregator,
        *,
        max_sketches: int = 200_000,
    ) -> None:
        self.store = store
        self.aggregator = aggregator
        self.max_sketches = max_sketches

    def metric_type(self, tenant: str, name: str) -> MetricType:
        mtype = self.aggregator.registry.types.get((tenant, name))
        if mtype is None:
            raise MetricNotFound(f"no metric named {name!r}", "name")
        return mtype

    async def collect(
        self,
        tenant: str,
        spec: QuerySpec,
        start: float,
        *,
        values: Sequence[str],
        sketches: bool = False,
        hll: bool = False,
    ) -> QueryRows:
        """Every bucket row of the matching series in [start, until), as columns: from the
        tiers the plan picks, plus what is still in memory and not yet in the store. `values`,
        `sketches` and `hll` say which columns to read, as for read_columns; the rows' series
        are read only to group by tags."""
        memory = self.aggregator.metric_in_memory(tenant, spec.name)
        by_series = bool(spec.group_by)
        budget = None
        if sketches:

            def budget(n: int) -> None:
                if n > self.max_sketches:
                    raise _sketch_budget_error(n, self.max_sketches, spec)

        stored = await self.store.read_rows(
            RowRead(
                tenant,
                spec.name,
                spec.matchers,
                start,
                spec.until,
                spec.window,
                values=tuple(values),
                sketches=sketches,
                hll=hll,
                by_series=by_series,
                sketch_budget=budget,
            )
        )
        seq, series = stored.flushed_seq, stored.series
        tags = [s.tags for s in series]
        parts = [(0, stored.cols)]
        if memory:

            def convert() -> tuple[list[Tags], Columns]:
                fresh = memory.rows(seq, start, spec.until, lambda t: matches_all(t, spec.matchers))
                return _memory_columns(fresh, values, sketches, hll, by_series)

            memory_tags, in_memory = await asyncio.to_thread(convert)
            parts.append((len(tags), in_memory))
            tags += memory_tags
        return QueryRows(tags, _concat(parts, values))

    async def run(self, tenant: str, spec: QuerySpec) -> dict[str, Any]:
        mtype = self.metric_type(tenant, spec.name)
        _check_agg(spec, mtype)
        finest = self.store.resolutions[0]
        if spec.window is not None and not is_multiple(spec.window, finest):
            # A finest-tier bucket cannot be split across windows: sums and rates would be wrong.
            up = max(1, math.ceil(spec.window / finest)) * finest
            raise InvalidArgument(
                f"window must be a multiple of the finest storage tier ({finest:g}s); "
                f"window={up:g}s would do",
                "window",
            )
        start = math.floor(spec.since / spec.window) * spec.window if spec.window else spec.since
        agg = _internal_agg(spec.agg, mtype)
        if spec.quantile is None:
            rows = await self.collect(
                tenant, spec, start, values=_AGG_VALUES[agg], hll=agg == "distinct"
            )
        else:
            rows = await self.collect(tenant, spec, start, values=("min", "max"), sketches=True)
        result = await asyncio.to_thread(self._shape, spec, agg, rows)
        return {
            "ok": True,
            "name": spec.name,
            "type": mtype.value,
            "agg": spec.agg,
            "tags": dict(spec.tags),
            "window": spec.window_text,
            "since": _json_number(spec.since),
            "until": _json_number(spec.until),
            **result,
        }

    async def export_sketch(self, tenant: str, spec: QuerySpec) -> dict[str, Any]:
        """The merged DDSketch of the range, as DDSketch protobuf (base64), with the exact
        count, sum, min and max."""
        mtype = self.metric_type(tenant, spec.name)
        if not mtype.has_sketch:
            raise InvalidArgument(
                f"a {mtype.value} metric has no sketch; only gauges, timings, histograms and "
                "distributions do",
                "name",
            )
        rows = await self.collect(
            tenant, spec, spec.since, values=("count", "sum", "min", "max"), sketches=True
        )
        cols = rows.cols
        # Sums add row by row, as the query's bincount does (numpy's sum is pairwise and
        # Python 3.12's sum() compensated: other roundings).
        n = np.zeros(len(cols), dtype=np.int64)
        count, total = (np.bincount(n, cols.values[v], 1)[0] for v in ("count", "sum"))
        mins = [v for v in cols.values["min"].tolist() if not math.isnan(v)]
        maxs = [v for v in cols.values["max"].tolist() if not math.isnan(v)]
        merged = sketch.Bins.empty()
        if cols.sketches:  # parsed flat and merged in one pass, no Bins per blob
            flat = sketch.decode_flat(cols.sketches)
            merged = sketch.merge_flat(flat, np.zeros(len(flat), dtype=np.int64), 1).bins(0)
        return {
            "ok": True,
            "name": spec.name,
            "type": mtype.value,
            "tags": dict(spec.tags),
            "since": _json_number(spec.since),
            "until": _json_number(spec.until),
            "count": _json_number(count),
            "sum": _json_number(total),
            "min": min(mins, default=None),
            "max": max(maxs, default=None),
            "format": "ddsketch-proto",
            "relative_accuracy": sketch.RELATIVE_ACCURACY,
            "sketch": base64.b64encode(sketch.to_proto(merged)).decode("ascii"),
        }

    def _shape(self, spec: QuerySpec, agg: str, rows: QueryRows) -> dict[str, Any]:
        cols = rows.cols
        w = spec.window
        bucket = np.floor(cols.ts / w) * w if w else np.full(len(cols), spec.since)
        buckets, cell = np.unique(bucket, return_inverse=True)
        cell_ts: list[float] = buckets.tolist()
        cell_group = [0] * len(cell_ts)
        groups: list[Tags] = [()]
        if spec.group_by:
            assert cols.series is not None  # collect reads the rows' series to group them
            # The group of each series, once per series (not per row), by rank in sorted order.
            group_of = [_group(t, spec.group_by) for t in rows.tags]
            groups = sorted(set(group_of))
            rank = {g: i for i, g in enumerate(groups)}
            series_group = np.array([rank[g] for g in group_of], dtype=np.int64)
            n_b = max(buckets.size, 1)
            # Cells sorted by (group, bucket), as the answer lists them.
            codes, cell = np.unique(series_group[cols.series] * n_b + cell, return_inverse=True)
            cell_group = (codes // n_b).tolist()
            cell_ts = buckets[codes % n_b].tolist()
        n = len(cell_ts)
        if spec.quantile is not None:
            values = _quantiles(cols, cell, n, spec.quantile)
        else:
            values = _aggregate(agg, cols, cell, n, w if w else spec.until - spec.since)
        by_group: dict[int, list[dict[str, Any]]] = {}
        for g, ts, v in zip(cell_group, cell_ts, values, strict=True):
            points = by_group.setdefault(g, [])
            if v is not None:
                points.append({"timestamp": _json_number(ts), "value": _json_number(v)})
        if not spec.group_by:
            return {"points": by_group.get(0, [])}
        return {"series": [{"tags": dict(groups[g]), "points": p} for g, p in by_group.items()]}


def _group(tags: Tags, keys: tuple[str, ...]) -> Tags:
    have = dict(tags)
    return tuple((k, have[k]) for k in keys if k in have)


def _memory_columns(
    rows: RowBatch, values: Sequence[str], sketches: bool, hll: bool, by_series: bool
) -> tuple[list[Tags], Columns]:
    """The rows still in memory as Columns, with the tag sets their `series` index. Their
    sketch bins are encoded to DDV1, to merge with the stored blobs."""
    index: dict[Tags, int] = {}
    series = [index.setdefault(key[2], len(index)) for key in rows.keys]
    empty = np.empty(0, dtype=np.int64)
    sketch_rows = np.flatnonzero(rows.has_sketch) if sketches else empty
    with_hll = [(i, h) for i, h in enumerate(rows.hll) if h is not None] if hll else []
    return list(index), Columns(
        ts=rows.ts,
        series=np.array(series, dtype=np.int64) if by_series else None,
        values={v: getattr(rows, v) for v in values},
        sketches=sketch.encode_flat(sketch.flat_take(rows.sketches, sketch_rows)),
        sketch_rows=sketch_rows,
        hlls=[h for _, h in with_hll],
        hll_rows=np.array([i for i, _ in with_hll], dtype=np.int64),
    )


def _concat(parts: Sequence[tuple[int, Columns]], values: Sequence[str]) -> Columns:
    """The rows of the parts (at least one) in order, each part's series indices shifted by
    its offset."""
    parts = [p for p in parts if len(p[1])] or parts[:1]
    if len(parts) == 1 and parts[0][0] == 0:
        return parts[0][1]
    starts = np.cumsum([0, *(len(c) for _, c in parts[:-1])]).tolist()
    series = [c.series + offset for offset, c in parts if c.series is not None]
    shifted = list(zip(starts, (c for _, c in parts), strict=True))
    return Columns(
        ts=np.concatenate([c.ts for _, c in parts]),
        series=np.concatenate(series) if len(series) == len(parts) else None,
        values={v: np.concatenate([c.values[v] for _, c in parts]) for v in values},
        sketches=[b for _, c in parts for b in c.sketches],
        sketch_rows=np.concatenate([c.sketch_rows + start for start, c in shifted]),
        hlls=[h for _, c in parts for h in c.hlls],
        hll_rows=np.concatenate([c.hll_rows + start for start, c in shifted]),
    )


_OBSERVATIONS = frozenset({MetricType.TIMING, MetricType.HISTOGRAM, MetricType.DISTRIBUTION})


def _internal_agg(agg: str, mtype: MetricType) -> str:
    """`rate` is what StatsD users expect of the type: a counter's sum per second, and for a
    timing, histogram or distribution its observations per second (Etsy's `count_ps`)."""
    if agg == "rate" and mtype in _OBSERVATIONS:
        return "count_rate"
    return agg


def _aggregate(agg: str, cols: Columns, cell: _I64, n: int, seconds: float) -> list[float | None]:
    """One aggregation other than a quantile (see _quantiles) per cell; `cell` is each row's.
    Sums add the rows one by one in row order (np.bincount does), as Python 3.11's sum() over
    the rows does: the same float, where a pairwise or compensated sum could differ."""
    v = cols.values
    if agg == "count":
        out: list[float | None] = np.bincount(cell, v["count"], n).tolist()
        return out
    if agg in ("sum", "rate"):
        total = np.bincount(cell, v["sum"], n)
        out = (total / seconds if agg == "rate" else total).tolist()
        return out
    if agg == "count_rate":
        out = (np.bincount(cell, v["count"], n) / seconds).tolist()
        return out
    if agg == "avg":
        c = np.bincount(cell, v["count"], n).tolist()
        t = np.bincount(cell, v["sum"], n).tolist()
        return [s / k if k else None for s, k in zip(t, c, strict=True)]
    if agg == "min":
        return _or_none(_cell_extreme(np.fmin, v["min"], cell, n))
    if agg == "max":
        return _or_none(_cell_extreme(np.fmax, v["max"], cell, n))
    if agg == "last":
        return _or_none(_cell_last(v["last"], v["last_ts"], cell, n))
    if agg == "distinct":
        return _cell_distinct(cols, cell, n)
    raise AssertionError(agg)


def _cell_extreme(op: np.ufunc, x: _F64, cell: _I64, n: int) -> _F64:
    """np.fmin or np.fmax over each cell's rows: NULLs (NaN) ignored, NaN where a cell has
    none."""
    out = np.full(n, np.nan)
    op.at(out, cell, x)
    return out


def _cell_last(last: _F64, last_ts: _F64, cell: _I64, n: int) -> _F64:
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


def _cell_distinct(cols: Columns, cell: _I64, n: int) -> list[float | None]:
    """The estimated distinct members of each cell: its HyperLogLogs merged."""
    per_cell: list[list[bytes]] = [[] for _ in range(n)]
    for c, blob in zip(cell[cols.hll_rows].tolist(), cols.hlls, strict=True):
        per_cell[c].append(blob)
    return [
        float(round(sketch.hll_estimate(sketch.hll_merge(blobs)))) if blobs else 0.0
        for blobs in per_cell
    ]


def _quantiles(cols: Columns, cell: _I64, n: int, q: float) -> list[float | None]:
    """One quantile per cell, over the DDV1 blobs of all cells at once (no object per row),
    each estimate clamped into the cell's exact [min, max]; p0 and p100 are the exact extremes.
    None where a cell has no min or max."""
    mn = _cell_extreme(np.fmin, cols.values["min"], cell, n)
    mx = _cell_extreme(np.fmax, cols.values["max"], cell, n)
    if q == 0.0:
        out = mn
    elif q == 1.0:
        out = mx
    else:
        estimate = sketch.cell_quantiles(cols.sketches, cell[cols.sketch_rows], n, q)
        out = np.minimum(np.maximum(estimate, mn), mx)  # NaN (no estimate) stays NaN
    out[np.isnan(mn) | np.isnan(mx)] = np.nan
    return _or_none(out)


def _or_none(x: _F64) -> list[float | None]:
    return [None if math.isnan(v) else v for v in x.tolist()]
