"""QueryEngine: a plan → the store's rows + the interval still in memory → typed arrays.

Semantics (DESIGN.md §2, §4; cells as plan.py defines them):
- Rows are read from the tiers the store picks for the window (store.base.RowRead), plus what
  memory holds that the store does not: memory is copied before the store is read, and of it
  only the snapshots above the flushed seq the store answered (from the same read transaction)
  are taken, so nothing is counted twice and nothing flushed in between is missed.
- Quantiles merge the DDSketch bins of every matching bucket and series, then clamp the estimate
  into the exact [min, max]; p0 and p100 are the exact min and max.
- A window must be a multiple of the finest tier (a finest-tier bucket cannot be split across
  cells), and a read that would merge more than `max_sketches` bucket sketches is refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TypeVar

import numpy as np

from statsd_gateway import sketch
from statsd_gateway.accumulator import MemoryRows
from statsd_gateway.aggregator import IntervalAggregator
from statsd_gateway.errors import InvalidArgument, MetricNotFound, QueryTooLarge
from statsd_gateway.model import MetricType, RowBatch, Tags, matches_all
from statsd_gateway.query.plan import QueryPlan, Selector
from statsd_gateway.query.reduce import QueryRows, merge_sketches, reduce_rows
from statsd_gateway.query.result import MergedSketch, QueryResult, SeriesResult
from statsd_gateway.store.base import Columns, RowRead, Store, StoredRows, concat_columns
from statsd_gateway.store.tiers import is_multiple

T = TypeVar("T")
# The columns a sketch export reads besides the sketches.
_SKETCH_VALUES = ("count", "sum", "min", "max")


class QueryEngine:
    """Runs plans against a Store and an IntervalAggregator. `run` and `merged_sketch` are
    coroutines for the event loop: the store reads on its own threads, and the reductions run
    on the thread that read; only the copy of what memory holds of the metric runs on the
    loop."""

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

    async def run(self, plan: QueryPlan) -> QueryResult:
        """The plan's groups and cells (see QueryResult)."""
        return await self.run_then(plan, lambda result: result)

    async def run_then(self, plan: QueryPlan, then: Callable[[QueryResult], T]) -> T:
        """then(the plan's result), run on the same worker thread as the reduction (a caller
        that renders the result saves a thread hop)."""
        selector, agg = plan.selector, plan.aggregation
        mtype = self.metric_type(selector.tenant, selector.name)
        if not agg.applies_to(mtype):
            raise InvalidArgument(f"{agg.op.value} does not apply to a {mtype.value} metric", "agg")
        self._check_window(plan.window)
        return await self.read_rows_then(
            selector,
            plan.read_from,
            plan.until,
            plan.window,
            lambda rows: then(QueryResult(mtype, self.reduce(plan, rows))),
            values=agg.columns,
            sketches=agg.sketches,
            hll=agg.hll,
            by_series=not plan.grouping.is_total,
            span=plan.until - plan.start,
        )

    def reduce(self, plan: QueryPlan, rows: QueryRows) -> list[SeriesResult]:
        """Worker thread: the rows reduced per (group, cell)."""
        return reduce_rows(plan, rows)

    async def merged_sketch(self, selector: Selector, start: float, until: float) -> MergedSketch:
        """The DDSketch of every matching row in [start, until) merged into one, with the exact
        count, sum, min and max."""
        mtype = self.metric_type(selector.tenant, selector.name)
        if not mtype.has_sketch:
            raise InvalidArgument(
                f"a {mtype.value} metric has no sketch; only gauges, timings, histograms and "
                "distributions do",
                "name",
            )
        bins, count, total, lo, hi = await self.read_rows_then(
            selector,
            start,
            until,
            None,
            lambda rows: merge_sketches(rows.cols),
            values=_SKETCH_VALUES,
            sketches=True,
        )
        return MergedSketch(mtype, bins, count, total, lo, hi)

    def _check_window(self, window: float | None) -> None:
        finest = self.store.resolutions[0]
        if window is not None and not is_multiple(window, finest):
            # A finest-tier bucket cannot be split across windows: sums and rates would be wrong.
            up = max(1, math.ceil(window / finest)) * finest
            raise InvalidArgument(
                f"window must be a multiple of the finest storage tier ({finest:g}s); "
                f"window={up:g}s would do",
                "window",
            )

    async def read_rows(
        self,
        selector: Selector,
        start: float,
        until: float,
        window: float | None,
        *,
        values: Sequence[str],
        sketches: bool = False,
        hll: bool = False,
        by_series: bool = False,
        span: float | None = None,
    ) -> QueryRows:
        """Every bucket row of the selected series in [start, until), as columns: from the
        tiers the store picks for `window`, plus what is still in memory and not yet in the
        store. `values`, `sketches` and `hll` say which columns to read (as RowRead's); the
        rows' series are read only `by_series`, to group by tags. `span` is the range the
        query asked for (default: until - start), which a refusal to merge too many sketches
        suggests shortening."""
        return await self.read_rows_then(
            selector, start, until, window, lambda rows: rows, values=values,
            sketches=sketches, hll=hll, by_series=by_series, span=span,
        )  # fmt: skip

    async def read_rows_then(
        self,
        selector: Selector,
        start: float,
        until: float,
        window: float | None,
        then: Callable[[QueryRows], T],
        *,
        values: Sequence[str],
        sketches: bool = False,
        hll: bool = False,
        by_series: bool = False,
        span: float | None = None,
    ) -> T:
        """then(read_rows(...)), called off the loop on the thread that read the store: the
        memory's rows are added and `then` reduces them there, one thread hop in all (each
        costs a wake-up, a good part of a small query's latency)."""
        memory = self._copy_memory(selector)  # before the store read: see the module docstring
        budget = None
        if sketches:

            def budget(n: int) -> None:
                if n > self.max_sketches:
                    asked = until - start if span is None else span
                    raise _sketch_budget_error(n, self.max_sketches, window, asked)

        def with_memory(stored: StoredRows) -> T:
            tags = [s.tags for s in stored.series]
            parts = [(0, stored.cols)]
            if memory:

                def keep(t: Tags) -> bool:
                    return matches_all(t, selector.matchers)

                rows = memory.rows(stored.flushed_seq, start, until, keep)
                memory_tags, in_memory = _memory_columns(rows, values, sketches, hll, by_series)
                parts.append((len(tags), in_memory))
                tags += memory_tags
            return then(QueryRows(tags, _concat(parts, values)))

        request = RowRead(
            selector.tenant,
            selector.name,
            selector.matchers,
            start,
            until,
            window,
            values=tuple(values),
            sketches=sketches,
            hll=hll,
            by_series=by_series,
            sketch_budget=budget,
        )
        return await self.store.read_rows_then(request, with_memory)

    def _copy_memory(self, selector: Selector) -> MemoryRows:
        """The one place the engine reads the aggregator (on the loop): a copy of what memory
        holds of the metric."""
        return self.aggregator.metric_in_memory(selector.tenant, selector.name)


def _sketch_budget_error(n: int, limit: int, window: float | None, span: float) -> QueryTooLarge:
    hint = "a coarser window (a multiple of 1m or 1h reads the rollup tiers)"
    if window is None:
        hint = "a window that is a multiple of 1h, which reads the hourly tier"
    return QueryTooLarge(
        f"this query would merge about {n} bucket sketches, more than query.max_sketches "
        f"({limit}); use {hint}, a range shorter than {span:g}s, or a narrower tag filter",
        "window",
    )


def _memory_columns(
    rows: RowBatch, values: Sequence[str], sketches: bool, hll: bool, by_series: bool
) -> tuple[list[Tags], Columns]:
    """The rows still in memory as Columns, with the tag sets their `series` index. Their
    sketch bins stay flat arrays, as the stored rows' are."""
    index: dict[Tags, int] = {}
    series = [index.setdefault(key[2], len(index)) for key in rows.keys]
    empty = np.empty(0, dtype=np.int64)
    sketch_rows = np.flatnonzero(rows.has_sketch) if sketches else empty
    with_hll = [(i, h) for i, h in enumerate(rows.hll) if h is not None] if hll else []
    return list(index), Columns(
        ts=rows.ts,
        series=np.array(series, dtype=np.int64) if by_series else None,
        values={v: getattr(rows, v) for v in values},
        sketches=sketch.flat_take(rows.sketches, sketch_rows),
        sketch_rows=sketch_rows,
        hlls=[h for _, h in with_hll],
        hll_rows=np.array([i for i, _ in with_hll], dtype=np.int64),
    )


def _concat(parts: Sequence[tuple[int, Columns]], values: Sequence[str]) -> Columns:
    """The rows of the parts (at least one) in order, each part's series indices shifted by
    its offset."""
    shifted = [
        c if offset == 0 or c.series is None else replace(c, series=c.series + offset)
        for offset, c in parts
    ]
    return concat_columns(shifted, values)
