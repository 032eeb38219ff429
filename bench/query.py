"""Storage and query benchmark for statsd-gateway: flush cost, query latency, bytes on disk.

What it measures (real classes throughout, no mocks; everything in a temporary directory)
    1. Flush. An IntervalAggregator, SqliteStore, TierRollup and Flusher wired as gateway.py
       wires them, driven by a manual clock: every 10 s interval gets ~10 (variant: ~100)
       lognormal timer values for each of 10,000 series through `add_samples`, then the clock
       moves on and `Flusher.flush()` runs. About 60 flushes, so 1 m rollups complete too.
       Per flush it records
         - the flush transaction alone (`SqliteStore.write_flush`, timed by a subclass),
         - the rollup transaction (`SqliteStore.write_rollups`),
         - the whole write of a snapshot (`Flusher._write`: finish_snapshot and the rollup
           fold/complete on the flusher's worker thread + write_flush + release, timed by a
           subclass),
         - `Flusher.flush()` as awaited on the event loop (adds swap and the thread hand-off).
    2. History and queries. 1,000 timer series `bench.multi` tagged `env:prod` and
       `host:h0000`…`host:h0999`, plus one series `bench.single`, written through the store's
       own write paths (`write_rollups` for the 1 h and 1 m tiers, `write_flush` for 10 s):
       1 h tier 30 days (all series); 1 m tier 7 days (single) / 2 h (the 1,000); 10 s tier 6 h
       (single) / 1 h (the 1,000); in time order, as the daemon writes them. Sketches hold
       `--rate` values per 10 s (default 10: 60 per 1 m row, 3,600 per 1 h row). Then the store
       is reopened (as after a restart) and each query runs `--runs` times through
       `parse_query` + the steps of `query_answer` (the plan; `QueryEngine.run`: tier planning,
       reads, the empty live interval, merging; the rendering to JSON), with the clock
       mid-hour so the plan combines tiers as in production.
    3. Bytes on disk: file size (WAL included, after the store is closed, which checkpoints)
       per series per day of history, bytes per row of each tier (`dbstat`), and from those an
       estimate for one timer series in steady state with the default tiers
       (10 s × 6 h, 1 m × 7 d, 1 h × 400 d).
    The last table lists each figure with its target and whether it is met.

How to run (from the repository root; takes a few minutes, --quick about one)
    .venv/bin/python bench/query.py
    .venv/bin/python bench/query.py --quick
    .venv/bin/python bench/query.py --json /tmp/query-run1.json --runs 9
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from statsd_gateway import sketch
from statsd_gateway.aggregator import IntervalAggregator
from statsd_gateway.api.query_params import QuerySpec, parse_query, query_plan
from statsd_gateway.api.v1_query import render_query
from statsd_gateway.flusher import Flusher
from statsd_gateway.gateway import tune_gc
from statsd_gateway.model import BucketRow, MetricType, RowBatch, Sample, SeriesKey
from statsd_gateway.query import QueryEngine, QueryPlan, QueryResult, QueryRows, SeriesResult
from statsd_gateway.series_registry import SeriesRegistry
from statsd_gateway.store import SqliteStore
from statsd_gateway.store.base import FlushWrite
from statsd_gateway.store.rollup import TierRollup
from statsd_gateway.telemetry import Telemetry

TENANT = "default"
RESOLUTIONS = (10.0, 60.0, 3600.0)
DEFAULT_RETENTION = {10.0: 6 * 3600.0, 60.0: 7 * 86400.0, 3600.0: 400 * 86400.0}
HOUR0 = 1_800_000_000 - 1_800_000_000 % 3600  # an hour boundary (2027-01-15)
LOG_MEDIAN, SIGMA = math.log(20.0), 0.8  # timer values: lognormal, median 20 ms
TIMING = MetricType.TIMING
MAX_POINTS = 10_000  # query.max_points default
MAX_SKETCHES = 200_000  # query.max_sketches default
DAY = 86400.0

# Targets (seconds): the issue's.
FLUSH_TARGET = 0.100
ONE_SERIES_TARGET = 0.020
MANY_SERIES_TARGET = 0.250
ANY_QUERY_TARGET = 2.0


class ManualClock:
    """Time moves only when the benchmark says so."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class TimedStore(SqliteStore):
    """The real store; records how long each flush and rollup transaction takes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.flush_seconds: list[float] = []
        self.rollup_seconds: list[float] = []
        self.rollup_rows: list[int] = []

    async def write_flush(self, *args: Any, **kwargs: Any) -> bool:
        t = time.perf_counter()
        stored = await super().write_flush(*args, **kwargs)
        self.flush_seconds.append(time.perf_counter() - t)
        return stored

    async def write_rollups(
        self, rows: Mapping[float, RowBatch], complete_until: Mapping[float, float]
    ) -> None:
        t = time.perf_counter()
        try:
            await super().write_rollups(rows, complete_until)
        finally:  # a failed rollup write is caught, logged and counted by the flusher
            self.rollup_seconds.append(time.perf_counter() - t)
            self.rollup_rows.append(sum(len(r) for r in rows.values()))


class TimedRollup(TierRollup):
    """The real rollups; records the flusher's fold (level 0) and complete calls."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fold_seconds: list[float] = []
        self.complete_seconds: list[float] = []
        self.completed_rows: list[int] = []  # coarse rows each complete() closed

    def fold(self, rows: RowBatch, level: int = 0) -> None:
        t = time.perf_counter()
        super().fold(rows, level)
        if level == 0:
            self.fold_seconds.append(time.perf_counter() - t)

    def complete(self, boundary: float) -> dict[float, RowBatch]:
        t = time.perf_counter()
        completed = super().complete(boundary)
        self.complete_seconds.append(time.perf_counter() - t)
        self.completed_rows.append(sum(len(rows) for rows in completed.values()))
        return completed


class TimedEngine(QueryEngine):
    """The real query engine; records its two halves: collect (read_rows: the store read on a
    reader thread + the in-memory interval) and shape (reduce: grouping, sketch merge,
    quantiles; plus the rendering to JSON, timed by `render`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.collect_seconds: list[float] = []
        self.shape_seconds: list[float] = []
        self.rows: list[int] = []

    async def read_rows(self, *args: Any, **kwargs: Any) -> QueryRows:
        t = time.perf_counter()
        rows = await super().read_rows(*args, **kwargs)
        self.collect_seconds.append(time.perf_counter() - t)
        self.rows.append(len(rows))
        return rows

    def reduce(self, plan: QueryPlan, rows: QueryRows) -> list[SeriesResult]:
        t = time.perf_counter()
        out = super().reduce(plan, rows)
        self.shape_seconds.append(time.perf_counter() - t)
        return out

    def render(self, spec: QuerySpec, result: QueryResult) -> dict[str, Any]:
        """render_query, its time added to the reduction's (both were `_shape` before)."""
        t = time.perf_counter()
        out = render_query(spec, result)
        self.shape_seconds[-1] += time.perf_counter() - t
        return out


class TimedFlusher(Flusher):
    """The real flusher; records the write of each snapshot (finish, fold, write, release)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.write_seconds: list[float] = []

    async def _write(self, *args: Any, **kwargs: Any) -> bool:
        t = time.perf_counter()
        ok = await super()._write(*args, **kwargs)
        self.write_seconds.append(time.perf_counter() - t)
        return ok


def summary(xs: Sequence[float]) -> dict[str, float]:
    """median, p99 (linear interpolation), min, max; in seconds."""
    a = np.asarray(xs, dtype=np.float64)
    return {
        "median": float(np.median(a)),
        "p99": float(np.percentile(a, 99)),
        "min": float(a.min()),
        "max": float(a.max()),
        "n": int(a.size),
    }


def ms(x: float) -> str:
    return f"{x * 1000:,.1f} ms"


# -- 1. flush ----------------------------------------------------------------------------------


def interval_samples(rng: np.random.Generator, names: list[str], per: int) -> list[Sample]:
    """One interval's samples: `per` lognormal values for each series, as the parser gives."""
    tags = (("env", "prod"),)
    values = rng.lognormal(LOG_MEDIAN, SIGMA, (len(names), per)).tolist()
    return [
        Sample(name, tags, TIMING, v, 1.0, None, False)
        for name, row in zip(names, values, strict=True)
        for v in row
    ]


async def build_pipeline(
    path: Path, clock: ManualClock
) -> tuple[TimedStore, TimedRollup, TimedFlusher]:
    """Store, aggregator, rollups and flusher, as Gateway.start() builds them."""
    store = TimedStore(path, resolutions=RESOLUTIONS, clock=clock)
    registry = SeriesRegistry()
    stored = await store.open()
    for info in stored.series:
        registry.seed(info.id, (info.tenant, info.name, info.tags), info.type)
    aggregator = IntervalAggregator(
        interval=RESOLUTIONS[0],
        clock=clock,
        registry=registry,
        max_series_per_tenant=1_000_000,
        max_backdate=DEFAULT_RETENTION[RESOLUTIONS[0]],
    )
    rollup = TimedRollup(RESOLUTIONS, stored.complete_until)
    flusher = TimedFlusher(aggregator, store, Telemetry(), clock=clock, rollup=rollup)
    return store, rollup, flusher


async def prefill_minutes(path: Path, names: list[str], per: int, minutes: int) -> float:
    """`minutes` of 1 m history for every series before HOUR0, so that the minute flushes write
    into a series-major tier that already holds pages of every series (one dirty leaf page per
    series, as in steady state) rather than into an empty one. Returns the seconds it took."""
    started = time.perf_counter()
    store = SqliteStore(path, resolutions=RESOLUTIONS, clock=ManualClock(HOUR0))
    await store.open()
    pool = make_pool(np.random.default_rng(60), 6 * per, 64)
    rng = np.random.default_rng(61)
    tags = (("env", "prod"),)
    stamps = [HOUR0 - 60.0 * (minutes - i) for i in range(minutes)]
    try:
        step = max(1, 25_000 // max(1, minutes))
        for i in range(0, len(names), step):  # series order: sequential inserts, a quick fill
            keys = [(TENANT, n, tags) for n in names[i : i + step]]
            rows = [r for k in keys for t in stamps for r in rows_at(t, [k], pool, rng)]
            batch = RowBatch.from_rows(rows)
            await store.write_rollups({60.0: batch}, {60.0: HOUR0})
    finally:
        await store.close()
    return time.perf_counter() - started


async def bench_flush(
    tmp: Path, series: int, per: int, flushes: int, prefill: int = 0
) -> dict[str, Any]:
    """`flushes` intervals of `series` timer series × `per` values each, flushed one by one."""
    rng = np.random.default_rng(per)
    clock = ManualClock(HOUR0 + 1.0)
    path = tmp / f"flush-{series}x{per}.db"
    names = [f"bench.flush.s{i:05d}" for i in range(series)]
    if prefill:
        seconds = await prefill_minutes(path, names, per, prefill)
        print(f"  (prefilled {prefill} min of 1 m history, {series:,} series, in {seconds:.1f} s)")
    store, rollup, flusher = await build_pipeline(path, clock)
    batches = [interval_samples(rng, names, per) for _ in range(2)]
    ingest, awaited = [], []
    try:
        for i in range(flushes):
            t = time.perf_counter()
            rejects = flusher.aggregator.add_samples(TENANT, batches[i % 2])
            ingest.append(time.perf_counter() - t)
            assert not rejects, rejects[:3]
            clock.advance(RESOLUTIONS[0])
            t = time.perf_counter()
            if not await flusher.flush():
                raise RuntimeError(f"flush failed: {flusher.last_error}")
            awaited.append(time.perf_counter() - t)
    finally:
        await store.close()
    return flush_result(store, rollup, flusher, awaited, ingest)


def flush_result(
    store: TimedStore,
    rollup: TimedRollup,
    flusher: TimedFlusher,
    awaited: list[float],
    ingest: list[float],
) -> dict[str, Any]:
    whole = np.asarray(flusher.write_seconds)
    # Flushers that write completed rollups inside write_flush never call write_rollups.
    separate = len(store.rollup_seconds) == len(whole)
    rollup_write = np.asarray(store.rollup_seconds) if separate else np.zeros(len(whole))
    parts = (store.flush_seconds, rollup_write, rollup.fold_seconds, rollup.complete_seconds)
    finish = whole - np.sum([np.asarray(p) for p in parts], axis=0)
    boundary = np.asarray(rollup.completed_rows) > 0  # flushes that completed 1 m buckets
    return {
        "flushes": len(whole),
        "rollup_flushes": int(boundary.sum()),
        "rollups_in_write_flush": not separate,
        "rollup_errors": getattr(flusher.telemetry, "rollup_errors", 0),
        "flush_errors": flusher.telemetry.flush_errors,
        "write_flush": summary(store.flush_seconds),
        "finish_snapshot": summary(finish.tolist()),
        "rollup_fold": summary(rollup.fold_seconds),
        "rollup_complete": summary(rollup.complete_seconds),
        "write_rollups": summary(rollup_write.tolist()),
        "whole_flush": summary(whole.tolist()),
        "whole_flush_plain": summary(whole[~boundary].tolist()),
        "whole_flush_minute": summary(whole[boundary].tolist()),
        "flush_awaited": summary(awaited),
        "add_samples": summary(ingest),
    }


FLUSH_LABELS = (
    ("finish_snapshot", "finish_snapshot and the rest (remainder)"),
    ("write_flush", "flush transaction (write_flush)"),
    ("rollup_fold", "TierRollup.fold"),
    ("rollup_complete", "TierRollup.complete (merge 1 m buckets)"),
    ("write_rollups", "rollup transaction (write_rollups)"),
    ("whole_flush", "whole write of a snapshot (_write)"),
    ("whole_flush_plain", "  … flushes completing no 1 m bucket"),
    ("whole_flush_minute", "  … flushes completing 1 m buckets"),
    ("flush_awaited", "Flusher.flush() awaited on the loop"),
    ("add_samples", "add_samples of one interval (ingest)"),
)


def print_flush(r: dict[str, Any]) -> None:
    print(
        f"\nFlush: {r['series']:,} timer series × {r['values_per_series']} values per 10 s, "
        f"{r['flushes']} flushes, {r['rollup_flushes']} of them complete 1 m buckets"
    )
    if r["rollups_in_write_flush"]:
        print("  (this flusher writes completed rollups inside the write_flush transaction)")
    if r["rollup_errors"] or r["flush_errors"]:
        print(f"  ERRORS: {r['flush_errors']} flush, {r['rollup_errors']} rollup writes failed")
    print(f"  {'':<42} {'median':>11} {'p99':>11} {'max':>11}")
    for key, label in FLUSH_LABELS:
        s = r[key]
        print(f"  {label:<42} {ms(s['median']):>11} {ms(s['p99']):>11} {ms(s['max']):>11}")


# -- 2. history ----------------------------------------------------------------------------


Pool = list[tuple[sketch.Bins, float, float, float, float]]  # bins, count, sum, min, max


def make_pool(rng: np.random.Generator, n_values: int, size: int) -> Pool:
    """`size` distinct bucket sketches of `n_values` lognormal values each, with exact stats."""
    vals = rng.lognormal(LOG_MEDIAN, SIGMA, (size, n_values))
    offsets = np.arange(size + 1, dtype=np.int64) * n_values
    bins = sketch.bin_groups(vals.reshape(-1), None, offsets)
    stats = zip(vals.sum(1).tolist(), vals.min(1).tolist(), vals.max(1).tolist(), strict=True)
    return [(b, float(n_values), s, lo, hi) for b, (s, lo, hi) in zip(bins, stats, strict=True)]


def rows_at(
    ts: float, keys: Sequence[SeriesKey], pool: Pool, rng: np.random.Generator
) -> list[BucketRow]:
    picks = rng.integers(0, len(pool), len(keys)).tolist()
    out = []
    for key, i in zip(keys, picks, strict=True):
        b, count, total, lo, hi = pool[i]
        out.append(BucketRow(ts, key, TIMING, count, total, lo, hi, sketch=b))
    return out


async def write_tier(
    store: SqliteStore,
    res: float,
    timeline: list[tuple[float, Sequence[SeriesKey]]],
    pool: Pool,
    batch_rows: int = 25_000,
) -> tuple[int, float]:
    """Writes (ts, series) buckets in time order through the store's own write path: the
    finest tier via write_flush, coarse tiers via write_rollups (which also advances
    complete_until). Returns (rows, seconds)."""
    rng = np.random.default_rng(int(res))
    rows: list[BucketRow] = []
    total, started = 0, time.perf_counter()

    async def put(end: float) -> None:
        batch = RowBatch.from_rows(rows)
        if res == RESOLUTIONS[0]:
            await store.write_flush(FlushWrite(None, batch))
        else:
            await store.write_rollups({res: batch}, {res: end})

    for ts, keys in timeline:
        rows.extend(rows_at(ts, keys, pool, rng))
        if len(rows) >= batch_rows:
            await put(ts + res)
            total, rows = total + len(rows), []
    if rows:
        await put(timeline[-1][0] + res)
        total += len(rows)
    return total, time.perf_counter() - started


def history_plan(
    now: float, days: int, single: SeriesKey, multi: list[SeriesKey]
) -> dict[float, list[tuple[float, Sequence[SeriesKey]]]]:
    """Per tier, the buckets to write (time order) and the series each holds."""
    both = [single, *multi]
    hour_end = math.floor(now / 3600) * 3600
    minute_end = math.floor(now / 60) * 60
    tens_end = math.floor(now / 10) * 10

    def span(res: float, end: float, seconds: float) -> list[float]:
        n = int(seconds // res)
        return [end - (n - i) * res for i in range(n)]

    return {
        3600.0: [(t, both) for t in span(3600.0, hour_end, days * DAY)],
        60.0: [
            (t, both if t >= minute_end - 7200 else [single])
            for t in span(60.0, minute_end, 7 * DAY)
        ],
        10.0: [
            (t, both if t >= tens_end - 3600 else [single])
            for t in span(10.0, tens_end, 6 * 3600.0)
        ],
    }


async def write_history(path: Path, now: float, days: int, rate: int) -> dict[str, Any]:
    """Writes the synthetic history; closes the store (which checkpoints the WAL)."""
    rng = np.random.default_rng(7)
    single: SeriesKey = (TENANT, "bench.single", ())
    multi: list[SeriesKey] = [
        (TENANT, "bench.multi", (("env", "prod"), ("host", f"h{i:04d}"))) for i in range(1000)
    ]
    store = SqliteStore(path, resolutions=RESOLUTIONS, clock=ManualClock(now))
    await store.open()
    out: dict[str, Any] = {"days": days, "rate_per_10s": rate, "tiers": {}}
    try:
        # Coarse tiers first, as if written over time by rollups; then the finest tier.
        for res, timeline in sorted(history_plan(now, days, single, multi).items(), reverse=True):
            pool = make_pool(rng, rate * int(res // 10), 256)
            rows, seconds = await write_tier(store, res, timeline, pool)
            out["tiers"][str(int(res))] = {"rows": rows, "write_seconds": seconds}
            print(f"  wrote {rows:>9,} rows into the {res:g} s tier in {seconds:6.1f} s")
        # As the daemon's sealing task does: every complete window into its chunk.
        began = time.perf_counter()
        sealed = await store.seal_chunks()
        out["seal"] = {"buckets": sealed, "seconds": time.perf_counter() - began}
        print(f"  sealed {sealed:,} buckets into chunks in {out['seal']['seconds']:.1f} s")
    finally:
        await store.close()
    return out


def disk_usage(path: Path, days: int, series: int) -> dict[str, Any]:
    """File sizes, and bytes per row of each tier from dbstat (pages incl. B-tree interior)."""
    wal = path.with_name(path.name + "-wal")
    size = path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        pages = dict(conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"))
        tiers = {}
        for res in RESOLUTIONS:
            # A tier's buckets: its head rows and its chunks' buckets, with their indexes.
            head, chunks = f"points_{int(res)}s", f"chunks_{int(res)}s"
            n_head = conn.execute(f"SELECT count(*) FROM {head}").fetchone()[0]
            n_sealed = conn.execute(f"SELECT coalesce(sum(rows), 0) FROM {chunks}").fetchone()[0]
            n = n_head + n_sealed
            used = sum(v for k, v in pages.items() if k.startswith((head, chunks)) or
                       k in (f"sqlite_autoindex_{chunks}_1",))  # fmt: skip
            tiers[str(int(res))] = {
                "rows": n,
                "head_rows": n_head,
                "bytes": used,
                "bytes_per_row": used / max(n, 1),
            }
    finally:
        conn.close()
    return {
        "file_bytes": size,
        "bytes_per_series_per_day": size / (series * days),
        "tiers": tiers,
        "steady_state": steady_state(tiers),
    }


def steady_state(tiers: dict[str, dict[str, Any]]) -> dict[str, float]:
    """One timer series written every 10 s, default retention, at the measured bytes/row."""
    kept = daily = 0.0
    for res, retention in DEFAULT_RETENTION.items():
        per_row = tiers[str(int(res))]["bytes_per_row"]
        kept += retention / res * per_row
        daily += DAY / res * per_row
    return {"bytes_kept_per_series": kept, "bytes_written_per_series_per_day": daily}


# -- 2b. queries ---------------------------------------------------------------------------

QUERIES: list[tuple[str, dict[str, str], float]] = [
    (
        "p99 1 series, 1 h, window=5m",
        {"name": "bench.single", "agg": "p99", "since": "-1h", "window": "5m"},
        ONE_SERIES_TARGET,
    ),
    (
        "p99 env:prod (1,000 series), 1 h, window=5m",
        {"name": "bench.multi", "agg": "p99", "tags": "env:prod", "since": "-1h", "window": "5m"},
        MANY_SERIES_TARGET,
    ),
    (
        "count env:prod (1,000 series), 1 h, window=5m",
        {"name": "bench.multi", "agg": "count", "tags": "env:prod", "since": "-1h", "window": "5m"},
        MANY_SERIES_TARGET,
    ),
    (
        "p99 1 series, 30 d, window=1h",
        {"name": "bench.single", "agg": "p99", "since": "-30d", "window": "1h"},
        ONE_SERIES_TARGET,
    ),
    (
        "p99 1 series, 7 d, window=1h",
        {"name": "bench.single", "agg": "p99", "since": "-7d", "window": "1h"},
        ONE_SERIES_TARGET,
    ),
]


async def bench_queries(path: Path, now: float, runs: int) -> list[dict[str, Any]]:
    """Reopens the store as after a restart (empty live interval) and times each query."""
    clock = ManualClock(now)
    store = SqliteStore(path, resolutions=RESOLUTIONS, clock=clock)
    registry = SeriesRegistry()
    for info in (await store.open()).series:
        registry.seed(info.id, (info.tenant, info.name, info.tags), info.type)
    aggregator = IntervalAggregator(
        interval=RESOLUTIONS[0], clock=clock, registry=registry,
        max_series_per_tenant=1_000_000, max_backdate=DEFAULT_RETENTION[RESOLUTIONS[0]],
    )  # fmt: skip
    out = []
    try:
        for label, params, target in QUERIES:
            engine = TimedEngine(store, aggregator, max_sketches=MAX_SKETCHES)
            r = await time_query(engine, clock, params, runs)
            out.append({"query": label, "params": params, "target": target, **r})
            print(
                f"  {label:<46} {ms(r['median']):>11} {ms(r['first']):>11} {ms(r['max']):>11}"
                f" {ms(r['collect_median']):>11} {ms(r['shape_median']):>11}"
                f" {r['rows']:>7,} {r['points']:>6}"
            )
    finally:
        await store.close()
    return out


async def time_query(
    engine: TimedEngine, clock: ManualClock, params: dict[str, str], runs: int
) -> dict[str, Any]:
    """`runs` runs of parse_query + the steps of query_answer, timed end to end and by half."""
    times, points = [], 0
    for _ in range(runs):
        t = time.perf_counter()
        spec = parse_query(params, clock(), MAX_POINTS)
        plan = query_plan(TENANT, spec, engine.metric_type(TENANT, spec.name))
        typed = await engine.run(plan)
        result = await asyncio.to_thread(engine.render, spec, typed)
        times.append(time.perf_counter() - t)
        points = len(result["points"])
    return {
        "points": points,
        "rows": engine.rows[-1],
        "first": times[0],
        "collect_median": statistics.median(engine.collect_seconds),
        "shape_median": statistics.median(engine.shape_seconds),
        **summary(times),
    }


# -- report ----------------------------------------------------------------------------------


def verdict_rows(report: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    rows: list[tuple[str, str, str, bool | None]] = []
    for f in report["flush"]:
        name = f"flush {f['series']:,} × {f['values_per_series']}"
        whole, txn = f["whole_flush"], f["write_flush"]
        rows.append((f"{name}: whole flush, median", ms(whole["median"]), "< 100 ms",
                     whole["median"] < FLUSH_TARGET))  # fmt: skip
        rows.append((f"{name}: whole flush, p99", ms(whole["p99"]), "—", None))
        rows.append((f"{name}: write_flush txn, median", ms(txn["median"]), "—", None))
        rows.append((f"{name}: write_flush txn, p99", ms(txn["p99"]), "—", None))
    for q in report["queries"]:
        rows.append((q["query"] + ", median", ms(q["median"]), f"< {q['target'] * 1000:g} ms",
                     q["median"] < q["target"]))  # fmt: skip
    worst = max(q["max"] for q in report["queries"])
    rows.append(("slowest single query run", ms(worst), "< 2 s", worst < ANY_QUERY_TARGET))
    disk = report["disk"]
    rows.append(("DB bytes / series / day (this history)",
                 f"{disk['bytes_per_series_per_day']:,.0f} B", "—", None))  # fmt: skip
    ss = disk["steady_state"]
    rows.append(("timer series, default tiers, steady state",
                 f"{ss['bytes_kept_per_series'] / 1e6:.2f} MB", "—", None))  # fmt: skip
    rows.append(("  … written per series per day",
                 f"{ss['bytes_written_per_series_per_day'] / 1e6:.2f} MB", "—", None))  # fmt: skip
    return rows


def print_report(report: dict[str, Any]) -> None:
    disk = report["disk"]
    print("\nBytes per row on disk (dbstat, incl. B-tree pages):")
    for res, t in disk["tiers"].items():
        print(f"  {res:>5} s tier: {t['rows']:>9,} buckets ({t['head_rows']:,} in the head), "
              f"{t['bytes_per_row']:6.1f} B/bucket")  # fmt: skip
    print(f"  file incl. WAL: {disk['file_bytes'] / 1e6:,.1f} MB")
    print(f"\n{'figure':<52} {'measured':>12} {'target':>9}  met?")
    for name, value, target, met in verdict_rows(report):
        mark = "" if met is None else ("met" if met else "NOT met")
        print(f"{name:<52} {value:>12} {target:>9}  {mark}")


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"args": vars(args), "flush": []}
    with tempfile.TemporaryDirectory(prefix="sgw-bench-query-") as d:
        tmp = Path(d)
        for per, flushes in ((10, args.flushes), (100, args.flushes_100)):
            if not flushes:
                continue
            r = {"series": args.series, "values_per_series": per}
            r |= await bench_flush(tmp, args.series, per, flushes, args.prefill_minutes)
            report["flush"].append(r)
            print_flush(r)
        now = HOUR0 + 1835.0  # mid-hour, mid-minute: queries combine tiers
        path = tmp / "history.db"
        print(f"\nHistory: 1,001 timer series, {args.days} days, {args.rate} values per 10 s")
        report["history"] = await write_history(path, now, args.days, args.rate)
        report["disk"] = disk_usage(path, args.days, 1001)
        print(f"\nQueries ({args.runs} runs each, through QueryEngine.run and render_query):")
        print(f"  {'':<46} {'median':>11} {'first':>11} {'max':>11} {'collect':>11}"
              f" {'shape':>11} {'rows':>7} {'points':>6}")  # fmt: skip
        report["queries"] = await bench_queries(path, now, args.runs)
    print_report(report)
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer flushes, 7 days, 5 runs")
    p.add_argument("--series", type=int, default=10_000, help="series per flush")
    p.add_argument("--flushes", type=int, default=60, help="flushes with 10 values/series")
    p.add_argument("--flushes-100", type=int, default=60, help="flushes with 100 values/series")
    p.add_argument(
        "--prefill-minutes",
        type=int,
        default=60,
        help="minutes of 1 m history written before the flushes (steady-state minute writes)",
    )
    p.add_argument("--days", type=int, default=30, help="days of 1 h history")
    p.add_argument("--rate", type=int, default=10, help="values per series per 10 s (history)")
    p.add_argument("--runs", type=int, default=7, help="runs per query (median reported)")
    p.add_argument("--json", type=Path, help="also write the results as JSON")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.quick:
        args.flushes, args.flushes_100, args.days, args.runs = 12, 6, 7, 5
    tune_gc()  # as the daemon does at start (statsd_gateway.cli)
    report = asyncio.run(main_async(args))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
        print(f"\nwrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
