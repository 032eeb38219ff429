"""Queries over many stored and in-memory rows (the columnar query path), against a direct
computation over the rows the test wrote.

- Every aggregation, with and without a window, grouped by a tag or not, filtered or not, equals
  what a plain loop over the written rows gives: counts and sums, min and max ignoring NULLs,
  `last` of the greatest last_ts, distinct members, quantiles of the merged bins clamped into the
  cell's exact [min, max].
- A window bucket may hold rows of a coarse tier, of the finest tier and of memory at once.
- On equal last_ts, the row still in memory (the later one) gives `last`.
- read_columns reads only the columns asked for; NULL is NaN.

Values are multiples of 2^-10 of modest size and sample rates are 1, so sums and merged sketch
counts are exact in any order and compared with ==.
"""

from __future__ import annotations

import base64
import json
import math
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from statsd_gateway import sketch
from statsd_gateway.aggregator import IntervalAggregator
from statsd_gateway.api.query_params import parse_query
from statsd_gateway.api.v1_query import query_answer, sketch_answer
from statsd_gateway.model import BucketRow, MetricType, RowBatch, Sample, Tags
from statsd_gateway.query import QueryEngine
from statsd_gateway.series_registry import SeriesRegistry
from statsd_gateway.store import SqliteStore
from statsd_gateway.store.sqlite_reads import read_columns, read_series
from tests.conftest import T0, ManualClock, run_sync, write_rows

TENANT = "default"
UNTIL = T0 + 1800.0
COMPLETE_1M = T0 + 480.0  # the 1 m tier holds [T0, here); a 5 m bucket straddles the edge
MEMORY_FROM = T0 + 1500.0
TAGSETS: tuple[Tags, ...] = (
    (("env", "prod"), ("host", "a")),
    (("env", "prod"), ("host", "b")),
    (("env", "dev"), ("host", "c")),
    (("host", "d"),),  # no env; its timer rows have no min (NULL)
)
MEMORY_ONLY: Tags = (("env", "prod"), ("host", "e"))
METRICS = {
    "lat": MetricType.TIMING,
    "temp": MetricType.GAUGE,
    "hits": MetricType.COUNTER,
    "users": MetricType.SET,
}
AGGS = {
    MetricType.TIMING: ("count", "sum", "avg", "min", "max", "rate", "p0", "p50", "p99", "p100"),
    MetricType.GAUGE: ("count", "avg", "min", "max", "last", "p90"),
    MetricType.COUNTER: ("count", "sum", "rate", "min", "max"),
    MetricType.SET: ("count", "distinct"),
}


@dataclass
class Obs:
    """What the test wrote into one stored row, or reported as one in-memory point."""

    ts: float  # the row's bucket, or the point's time
    tags: Tags
    count: float
    total: float
    min: float | None
    max: float | None
    last: float | None = None
    last_ts: float | None = None
    values: list[float] = field(default_factory=list)
    members: list[str] = field(default_factory=list)


@dataclass
class World:
    store: SqliteStore
    aggregator: IntervalAggregator
    engine: QueryEngine
    clock: ManualClock
    written: dict[str, list[Obs]]  # per metric, in the order the rows were written/reported


@contextmanager
def opened(path: Path) -> Iterator[tuple[SqliteStore, IntervalAggregator, ManualClock]]:
    """A store on a new file at `path`, an empty aggregator and their clock."""
    clock = ManualClock(UNTIL + 5.0)
    store = SqliteStore(path, clock=clock)
    run_sync(store.open())
    aggregator = IntervalAggregator(
        interval=10.0,
        clock=clock,
        registry=SeriesRegistry(),
        max_series_per_tenant=1000,
        max_backdate=6 * 3600.0,
    )
    try:
        yield store, aggregator, clock
    finally:
        run_sync(store.close())


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[SqliteStore, IntervalAggregator, ManualClock]]:
    with opened(tmp_path / "metrics.db") as p:
        yield p


def values_of(rng: np.random.Generator, n: int) -> list[float]:
    return [float(v) for v in rng.integers(1, 200_000, n) / 1024.0]


def stored_obs(rng: np.random.Generator, mtype: MetricType, ts: float, i: int) -> Obs:
    tags = TAGSETS[i]
    if mtype is MetricType.SET:
        members = [f"u{m}" for m in rng.integers(0, 60, int(rng.integers(1, 6)))]
        return Obs(ts, tags, float(len(members)), 0.0, None, None, members=members)
    values = values_of(rng, int(rng.integers(1, 6)))
    obs = Obs(ts, tags, float(len(values)), sum(values), min(values), max(values), values=values)
    if mtype is MetricType.TIMING:
        if tags[-1] == ("host", "d"):
            obs.min = None
        elif rng.random() < 0.15:
            obs.max = None
    if mtype is MetricType.GAUGE and rng.random() < 0.8:
        # Distinct within any window: the bucket plus a per-series offset.
        obs.last, obs.last_ts = values[-1], ts + 1.0 + i
    return obs


def bucket_row(name: str, mtype: MetricType, o: Obs) -> BucketRow:
    row = BucketRow(o.ts, (TENANT, name, o.tags), mtype, o.count, o.total, o.min, o.max)
    row.last, row.last_ts = o.last, o.last_ts
    if mtype is MetricType.SET:
        row.hll = sketch.hll_from_members(o.members)
    elif mtype.has_sketch:
        row.sketch = sketch.bin_values(o.values)
    return row


async def build(
    store: SqliteStore, aggregator: IntervalAggregator, clock: ManualClock, seed: int
) -> World:
    """Random rows of four series per metric: the 1 m tier up to COMPLETE_1M, the 10 s tier
    after it, and points in memory (a snapshot not yet stored and the live interval) in the
    last five minutes, of three of those series and of one not stored at all."""
    rng = np.random.default_rng(seed)
    written: dict[str, list[Obs]] = {name: [] for name in METRICS}
    coarse: list[BucketRow] = []
    fine: list[BucketRow] = []
    for name, mtype in METRICS.items():
        for tags in (*TAGSETS, MEMORY_ONLY):
            aggregator.registry.admit(TENANT, name, tags, mtype, 1000)
        for res, lo, hi, out in ((60.0, T0, COMPLETE_1M, coarse), (10.0, COMPLETE_1M, UNTIL, fine)):
            for ts in np.arange(lo, hi, res).tolist():
                for i in range(len(TAGSETS)):
                    if rng.random() < 0.7:
                        o = stored_obs(rng, mtype, ts, i)
                        written[name].append(o)
                        out.append(bucket_row(name, mtype, o))
    batch = RowBatch.from_rows(coarse)
    await store.write_rollups({60.0: batch}, {60.0: COMPLETE_1M})
    await write_rows(store, fine)
    reported = (*TAGSETS[:3], MEMORY_ONLY)  # not d: its min stays NULL
    for phase in range(2):
        samples: list[Any] = []
        for name, mtype in METRICS.items():
            for _ in range(40):
                tags = reported[int(rng.integers(0, len(reported)))]
                t = float(MEMORY_FROM + rng.integers(0, 300_000) / 1000.0)
                if mtype is MetricType.SET:
                    member = f"u{int(rng.integers(0, 60))}"
                    samples.append(Sample(name, tags, mtype, member, 1.0, t, False))
                    written[name].append(Obs(t, tags, 1.0, 0.0, None, None, members=[member]))
                    continue
                v = values_of(rng, 1)[0]
                samples.append(Sample(name, tags, mtype, v, 1.0, t, False))
                last = (v, t) if mtype is MetricType.GAUGE else (None, None)
                written[name].append(Obs(t, tags, 1.0, v, v, v, *last, values=[v]))
        assert aggregator.add_samples(TENANT, samples) == []
        if phase == 0:
            aggregator.swap()  # a snapshot not yet in the store: queries still see it
    return World(store, aggregator, QueryEngine(store, aggregator), clock, written)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The world of seed 11, built once for the module (the tests that take it only query it,
    and a build costs a few hundred milliseconds: some fifty tests read it)."""
    with opened(tmp_path_factory.mktemp("world") / "metrics.db") as p:
        yield run_sync(build(*p, seed=11))


# -- the direct computation -------------------------------------------------------------------


def cell_value(agg: str, rows: list[Obs], seconds: float) -> float | None:
    mins = [r.min for r in rows if r.min is not None]
    maxs = [r.max for r in rows if r.max is not None]
    count = sum(r.count for r in rows)
    total = sum(r.total for r in rows)
    if agg == "count":
        return count
    if agg == "sum":
        return total
    if agg == "avg":
        return total / count
    if agg == "rate":
        return total / seconds
    if agg == "observations_per_second":  # `rate` of a timing
        return count / seconds
    if agg == "min":
        return min(mins, default=None)
    if agg == "max":
        return max(maxs, default=None)
    if agg == "last":
        best: Obs | None = None
        for r in rows:  # in written order: on equal last_ts the later row wins
            if r.last is None or r.last_ts is None:
                continue
            if best is None or best.last_ts is None or r.last_ts >= best.last_ts:
                best = r
        return None if best is None else best.last
    if agg == "distinct":
        return float(len({m for r in rows for m in r.members}))
    q = float(agg[1:]) / 100.0
    if not mins or not maxs:
        return None
    if q in (0.0, 1.0):
        return min(mins) if q == 0.0 else max(maxs)
    estimate = sketch.quantile(sketch.bin_values([v for r in rows for v in r.values]), q)
    assert estimate is not None
    return min(max(estimate, min(mins)), max(maxs))


def reference_agg(name: str, agg: str) -> str:
    """`rate` of a timing is its observations per second; of a counter, its sum per second."""
    if agg == "rate" and METRICS[name] is MetricType.TIMING:
        return "observations_per_second"
    return agg


def expected(
    rows: list[Obs], agg: str, window: float | None, group_by: tuple[str, ...], want: Tags
) -> dict[str, Any]:
    since = T0
    cells: dict[Tags, dict[float, list[Obs]]] = {}
    for r in rows:
        have = dict(r.tags)
        if not since <= r.ts < UNTIL or any(have.get(k) != v for k, v in want):
            continue
        group = tuple((k, have[k]) for k in group_by if k in have)
        bucket = math.floor(r.ts / window) * window if window else since
        cells.setdefault(group, {}).setdefault(bucket, []).append(r)
    seconds = window or UNTIL - since
    series = []
    for group in sorted(cells):
        points = []
        for bucket in sorted(cells[group]):
            v = cell_value(agg, cells[group][bucket], seconds)
            if v is not None:
                points.append({"timestamp": bucket, "value": v})
        series.append({"tags": dict(group), "points": points})
    if not group_by:
        return {"points": series[0]["points"] if series else []}
    return {"series": series}


async def answer(world: World, **params: str) -> dict[str, Any]:
    spec = parse_query({"since": str(T0), "until": str(UNTIL), **params}, world.clock(), 10_000)
    result = json.loads(await query_answer(world.engine, TENANT, spec))
    return {k: result[k] for k in ("points", "series") if k in result}


# -- tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(METRICS))
@pytest.mark.parametrize("window", [None, "1m", "5m"])
@pytest.mark.parametrize("group_by", ["", "env", "host", "env,host"])
async def test_every_aggregation_equals_a_direct_computation(
    world: World, name: str, window: str | None, group_by: str
) -> None:
    w = {None: None, "1m": 60.0, "5m": 300.0}[window]
    keys = tuple(k for k in group_by.split(",") if k)
    for agg in AGGS[METRICS[name]]:
        for tags, want in (("", ()), ("env:prod", (("env", "prod"),))):
            params = {"name": name, "agg": agg, "group_by": group_by, "tags": tags}
            if window:
                params["window"] = window
            got = await answer(world, **params)
            ref = reference_agg(name, agg)
            assert got == expected(world.written[name], ref, w, keys, want), params


async def test_the_answer_is_not_empty_where_it_should_not_be(world: World) -> None:
    """The data above exercise what they claim: NULL extremes, memory rows, straddled tiers."""
    got = await answer(world, name="lat", agg="min", window="5m", group_by="host")
    by_host = {s["tags"]["host"]: s["points"] for s in got["series"]}
    assert by_host["d"] == []  # every row of d has a NULL min: listed, without points
    assert by_host["e"] and all(p["timestamp"] >= MEMORY_FROM for p in by_host["e"])
    counts = await answer(world, name="lat", agg="count", window="5m")
    straddled = T0 + 300.0  # rows of the 1 m tier before COMPLETE_1M, of the 10 s tier after
    assert any(p["timestamp"] == straddled for p in counts["points"])


async def test_other_seeds_agree_too(
    parts: tuple[SqliteStore, IntervalAggregator, ManualClock],
) -> None:
    world = await build(*parts, seed=12)
    for name, mtype in METRICS.items():
        for agg in AGGS[mtype]:
            got = await answer(world, name=name, agg=agg, window="1m", group_by="env")
            ref = reference_agg(name, agg)
            assert got == expected(world.written[name], ref, 60.0, ("env",), ()), (name, agg)


async def test_last_on_equal_timestamps_is_the_row_still_in_memory(
    parts: tuple[SqliteStore, IntervalAggregator, ManualClock],
) -> None:
    store, aggregator, clock = parts
    key = (TENANT, "temp", (("host", "a"),))
    aggregator.registry.admit(TENANT, "temp", key[2], MetricType.GAUGE, 1000)
    t = T0 + 600.0
    stored = BucketRow(t, key, MetricType.GAUGE, 1.0, 1.0, 1.0, 1.0, 1.0, t + 5.0)
    await write_rows(store, [stored])
    aggregator.add_samples(
        TENANT, [Sample("temp", key[2], MetricType.GAUGE, 2.0, 1.0, t + 5.0, False)]
    )
    engine = QueryEngine(store, aggregator)
    spec = parse_query(
        {"name": "temp", "agg": "last", "since": str(T0), "until": str(UNTIL), "window": "5m"},
        clock(),
        10_000,
    )
    assert json.loads(await query_answer(engine, TENANT, spec))["points"] == [
        {"timestamp": t, "value": 2}
    ]


async def test_sketch_export_merges_stored_and_memory_rows(world: World) -> None:
    params = {"name": "lat", "agg": "count", "since": str(T0), "until": str(UNTIL)}
    spec = parse_query(params, world.clock(), 10_000)  # as GET /v1/metrics/sketch builds it
    got = await sketch_answer(world.engine, TENANT, spec)
    rows = [r for r in world.written["lat"] if T0 <= r.ts < UNTIL]
    merged = sketch.bin_values([v for r in rows for v in r.values])
    assert got["count"] == sum(r.count for r in rows)
    assert got["sum"] == sum(r.total for r in rows)
    assert got["min"] == min(r.min for r in rows if r.min is not None)
    assert got["max"] == max(r.max for r in rows if r.max is not None)
    assert base64.b64decode(got["sketch"]) == sketch.to_proto(merged)


async def test_read_columns_reads_only_the_columns_asked_for(
    parts: tuple[SqliteStore, IntervalAggregator, ManualClock],
) -> None:
    store, _, _ = parts
    a: Tags = (("host", "a"),)
    b: Tags = (("host", "b"),)
    bins = sketch.bin_values([1.0, 2.0])
    rows = [
        BucketRow(T0, (TENANT, "lat", a), MetricType.TIMING, 2.0, 3.0, 1.0, 2.0, sketch=bins),
        BucketRow(T0 + 10, (TENANT, "lat", a), MetricType.TIMING, 1.0, 5.0, None, 5.0),
        BucketRow(T0 + 10, (TENANT, "lat", b), MetricType.TIMING, 1.0, 4.0, 4.0, None, sketch=bins),
        BucketRow(T0 + 20, (TENANT, "lat", b), MetricType.TIMING, 1.0, 9.0, 9.0, 9.0),  # later
    ]
    await write_rows(store, rows)
    conn = sqlite3.connect(f"file:{store.path}?mode=ro", uri=True)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        series = read_series(conn, TENANT, "lat")
        cols = read_columns(conn, series, T0, T0 + 20, values=("count", "min"))
        with_sketches = read_columns(conn, series, T0, T0 + 20, values=(), sketches=True)
        no_series = read_columns(conn, series, T0, T0 + 20, values=("max",), by_series=False)
        with pytest.raises(ValueError, match="not a numeric column"):
            read_columns(conn, series, T0, T0 + 20, values=("sketch",))
    finally:
        conn.close()
    selected = [s.split(" FROM ")[0] for s in statements if s.startswith("SELECT ts")]
    assert selected == [
        "SELECT ts, series_id, count, min",
        "SELECT ts, series_id, sketch",
        "SELECT ts, max",
    ]
    tags = [s.tags for s in series]
    got = sorted(
        (t, tags[i], c, m)
        for t, i, c, m in zip(
            cols.ts.tolist(),
            cols.series.tolist() if cols.series is not None else [],
            cols.values["count"].tolist(),
            cols.values["min"].tolist(),
            strict=True,
        )
    )
    assert got[0] == (T0, a, 2.0, 1.0)
    assert got[1][:3] == (T0 + 10, a, 1.0) and math.isnan(got[1][3])  # NULL min
    assert got[2] == (T0 + 10, b, 1.0, 4.0)
    assert len(got) == 3 and set(cols.values) == {"count", "min"}
    assert len(cols.sketches) == 0 and cols.hlls == []
    # The two rows with a sketch, by row number; the row without one has no blob.
    assert len(with_sketches.sketches) == 2
    assert sorted(with_sketches.ts[with_sketches.sketch_rows].tolist()) == [T0, T0 + 10]
    assert all(with_sketches.sketches.bins(i) == bins for i in range(2))
    assert no_series.series is None
    assert sorted(no_series.values["max"].tolist(), key=math.isnan)[:2] == [2.0, 5.0]
