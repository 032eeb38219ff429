"""Storage tiers as a user of the metrics store sees them (DESIGN.md §2, §4, §5).

- Rollups are exact: the 1 m and 1 h tiers hold the merge of the 10 s buckets they cover, so
  counts, sums, extremes and quantiles read from them equal those of the raw values, bit for bit.
- A restart (clean or kill -9) in the middle of a minute and of an hour neither loses nor doubles
  anything; a late point is merged into a coarse bucket already written.
- Queries pick the coarsest tier that divides the window and combine finer tiers at the edges;
  a quantile query that would merge too many sketches is refused with a hint.
- Retention deletes per tier, forgets series without data, and keeps the file from growing.
- The merged sketch of a range exports as DDSketch protobuf.

Values are multiples of 2^-10 of modest size, so every sum is exact in any order: sums are
compared with ==, not approximately.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import math
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import ClientSession
from ddsketch.pb import ddsketch_pb2
from ddsketch.pb.proto import DDSketchProto

from statsd_gateway import sketch
from statsd_gateway.config import Config
from statsd_gateway.gateway import Gateway
from statsd_gateway.model import BucketRow, MetricType, RowBatch, Sample
from statsd_gateway.store.tiers import Segment
from statsd_gateway.store.tiers import plan_segments as plan
from tests.conftest import T0, Api, ManualClock, make_config, sqlite_only, stored_rows

# Every test making a config runs on both backends (tests/conftest.py).
STORE_BACKENDS = ("sqlite", "postgresql")

HOUR = 3600.0
DAY = 86400.0
TAGSETS: tuple[dict[str, str], ...] = ({"host": "a"}, {"host": "b"}, {"env": "x", "host": "c"})
QUANTILES = ("p50", "p99")


# -- reference --------------------------------------------------------------------------------


class Raw:
    """Every point a test reported and got a 200 for: the reference for every answer."""

    def __init__(self) -> None:
        self._ts: list[np.ndarray] = []
        self._series: list[np.ndarray] = []
        self._values: list[np.ndarray] = []

    def add(self, ts: np.ndarray, series: np.ndarray, values: np.ndarray) -> None:
        self._ts.append(ts)
        self._series.append(series)
        self._values.append(values)

    def select(self, lo: float, hi: float, series: int | None = None) -> np.ndarray:
        ts = np.concatenate(self._ts)
        values = np.concatenate(self._values)
        mask = (ts >= lo) & (ts < hi)
        if series is not None:
            mask &= np.concatenate(self._series) == series
        return values[mask]


def values_of(rng: np.random.Generator, n: int) -> np.ndarray:
    """Lognormal latencies rounded to multiples of 2^-10: sums of them are exact."""
    return np.round(rng.lognormal(3.0, 1.0, n) * 1024.0) / 1024.0


def q_ref(values: np.ndarray, agg: str) -> float:
    """What a pNN answer must be: the quantile of the sketch of exactly these values, clamped
    into their [min, max]."""
    q = float(agg[1:]) / 100.0
    est = sketch.quantile(sketch.bin_values(values), q)
    assert est is not None
    return min(max(est, float(values.min())), float(values.max()))


def expected(values: np.ndarray, agg: str) -> float:
    if agg == "count":
        return float(values.size)
    if agg == "sum":
        return float(values.sum())  # exact: multiples of 2^-10
    if agg == "min":
        return float(values.min())
    if agg == "max":
        return float(values.max())
    return q_ref(values, agg)


# -- driving a gateway ------------------------------------------------------------------------


class Driver:
    """A gateway on a manual clock, an HTTP client, and the record of what was reported."""

    def __init__(self, config: Config, clock: ManualClock, seed: int = 1) -> None:
        self.config = config
        self.clock = clock
        self.rng = np.random.default_rng(seed)
        self.raw: dict[str, Raw] = {}
        self.gw: Gateway | None = None
        self.session: ClientSession | None = None
        self.api: Api | None = None

    async def start(self) -> Driver:
        gw = Gateway(self.config, clock=self.clock, flush_on_ticks=False)
        await gw.start()
        assert gw.http_address is not None
        self.gw = gw
        self.session = ClientSession()
        self.api = Api(self.session, "http://{}:{}".format(*gw.http_address))
        return self

    async def stop(self) -> None:
        assert self.gw is not None and self.session is not None
        await self.session.close()
        await self.gw.stop()
        self.gw = None

    async def crash(self) -> None:
        """What kill -9 leaves: no final flush; listeners, log and store are just dropped."""
        gw = self.gw
        assert gw is not None and self.session is not None and gw._runner is not None
        assert gw.wal is not None
        await self.session.close()
        if gw.udp is not None:
            gw.udp.close()
        await gw._runner.cleanup()
        gw._runner = None
        await gw.flusher.stop()
        await asyncio.to_thread(gw.wal.stop)
        await gw.store.close()
        self.gw = None

    async def flush(self) -> None:
        assert self.gw is not None
        assert await self.gw.flusher.flush(), self.gw.flusher.last_error

    async def report(
        self,
        lo: float,
        hi: float,
        n: int,
        name: str = "api.latency",
        tagsets: tuple[dict[str, str], ...] = TAGSETS,
        mtype: str = "timing",
        even: bool = False,
    ) -> None:
        """`n` points of `name` with timestamps in [lo, hi), spread over the tag sets."""
        assert self.api is not None
        if even:  # deterministic: every 10 s bucket of the range gets points
            ts = lo + (np.arange(n) + 0.5) * (hi - lo) / n
        else:
            ts = np.floor((lo + self.rng.uniform(0.0, hi - lo, n)) * 1000.0) / 1000.0
            ts = np.minimum(ts, hi - 0.001)
        series = np.arange(n) % len(tagsets)
        values = values_of(self.rng, n)
        points = [
            {
                "name": name,
                "type": mtype,
                "value": float(v),
                "tags": tagsets[int(s)],
                "timestamp": float(t),
            }
            for t, s, v in zip(ts, series, values, strict=True)
        ]
        status, body = await self.api.batch(points)
        assert (status, body["rejected"]) == (200, 0), body
        self.raw.setdefault(name, Raw()).add(ts, series, values)

    async def step(self, seconds: float, n: int, **kw: Any) -> None:
        """Time passes; the points of that time arrive; the flush runs."""
        lo = self.clock.t
        self.clock.advance(seconds)
        await self.report(lo, self.clock.t, n, **kw)
        await self.flush()

    async def query(self, **params: Any) -> dict[float, float]:
        assert self.api is not None
        params.setdefault("name", "api.latency")
        params = {k: json.dumps(v) if isinstance(v, dict) else str(v) for k, v in params.items()}
        status, body = await self.api.query(**params)
        assert status == 200, body
        return {float(p["timestamp"]): p["value"] for p in body["points"]}


@contextlib.contextmanager
def readonly(path: str) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        yield conn
    finally:
        conn.close()


def tier_rows(config: Config, table: str, name: str) -> list[tuple[int, float, float, float, Any]]:
    """(tag set index, ts, count, sum, sketch blob) of every row of `name` in a tier table."""
    out = []
    for tags, ts, count, total, blob in stored_rows(
        config,
        f"SELECT s.tags, p.ts, p.count, p.sum, p.sketch FROM {table} p "
        "JOIN series s ON s.id = p.series_id WHERE s.name = ?",
        name,
    ):
        out.append((TAGSETS.index(json.loads(tags)), ts, count, total, bytes(blob)))
    return out


def assert_windows(
    answer: dict[float, float], raw: Raw, lo: float, hi: float, width: float, agg: str
) -> None:
    """Every window bucket of [lo, hi) that holds data is answered with the exact value."""
    want = {}
    for b in np.arange(lo, hi, width):
        vals = raw.select(float(b), float(b) + width)
        if vals.size:
            want[float(b)] = expected(vals, agg)
    assert answer.keys() == want.keys(), agg
    bad = {ts: (answer[ts], want[ts]) for ts in want if answer[ts] != want[ts]}
    assert not bad, f"{agg}: (answer, expected) differ at {sorted(bad.items())[:5]}"


# -- 1. rollups are exact ---------------------------------------------------------------------


async def test_rollups_are_exact(tmp_path: Path) -> None:
    """2.5 h of timings, one batch a minute: the 1 h and 1 m tiers lose nothing."""
    config = make_config(tmp_path)
    d = await Driver(config, ManualClock(T0), seed=11).start()
    try:
        for _ in range(150):
            await d.step(60, 24)
        end = T0 + 150 * 60
        raw = d.raw["api.latency"]

        # window=1h: two complete hours from the 1 h tier, the open one from finer tiers.
        for agg in ("count", "sum", "min", "max", *QUANTILES):
            answer = await d.query(agg=agg, window="1h", since=int(T0), until=int(end))
            assert_windows(answer, raw, T0, end, HOUR, agg)
        # An `until` beyond now gives the same answer: the open hour comes from finer tiers.
        for agg in ("count", "p99"):
            now_answer = await d.query(agg=agg, window="1h", since=int(T0), until=int(end))
            later = await d.query(agg=agg, window="1h", since=int(T0), until=int(end + HOUR))
            assert later == now_answer, agg
        # Per series (tag filter) too.
        for i, tags in enumerate(TAGSETS):
            answer = await d.query(
                agg="p99", window="1h", since=int(T0), until=int(T0 + 2 * HOUR), tags=tags
            )
            assert answer == {
                T0: q_ref(raw.select(T0, T0 + HOUR, i), "p99"),
                T0 + HOUR: q_ref(raw.select(T0 + HOUR, T0 + 2 * HOUR, i), "p99"),
            }
        # window=1m: every minute exact; the minutes of an hour add up to the hour.
        for agg in ("count", "sum", "p99"):
            answer = await d.query(agg=agg, window="1m", since=int(T0), until=int(end))
            assert len(answer) == 150
            assert_windows(answer, raw, T0, end, 60, agg)
        minutes = await d.query(agg="count", window="1m", since=int(T0), until=int(end))
        hours = await d.query(agg="count", window="1h", since=int(T0), until=int(end))
        for h, c in hours.items():
            assert sum(v for ts, v in minutes.items() if h <= ts < h + HOUR) == c
        # No window, edges not aligned to any tier but the finest: 1 h, 1 m and 10 s combined.
        lo, hi = T0 + 1230, end - 10
        vals = raw.select(lo, hi)
        for agg in ("count", "sum", "min", "max", "p50", "p99"):
            answer = await d.query(agg=agg, since=int(lo), until=int(hi))
            assert answer == {lo: expected(vals, agg)}, agg

        # The tables: one 1 h row per series per complete hour, holding the exact bins.
        hour_rows = tier_rows(config, "points_3600s", "api.latency")
        assert sorted((i, ts) for i, ts, *_ in hour_rows) == [
            (i, T0 + h * HOUR) for i in range(len(TAGSETS)) for h in (0, 1)
        ]
        for i, ts, count, total, blob in hour_rows:
            vals = raw.select(ts, ts + HOUR, i)
            assert (count, total) == (vals.size, vals.sum())
            assert sketch.decode(blob) == sketch.bin_values(vals)
        for table in ("points_10s", "points_60s", "points_3600s"):
            rows = tier_rows(config, table, "api.latency")
            assert (
                sum(c for _, ts, c, *_ in rows if ts < T0 + 2 * HOUR)
                == raw.select(T0, T0 + 2 * HOUR).size
            ), table
        assert sum(c for _, _, c, *_ in tier_rows(config, "points_60s", "api.latency")) == len(
            raw.select(T0, end)
        )

        # The hourly answers come from the 1 h tier alone: without the finer rows of those
        # hours they do not change.
        before = {
            agg: await d.query(agg=agg, window="1h", since=int(T0), until=int(T0 + 2 * HOUR))
            for agg in ("count", "p99")
        }
        for table in ("points_10s", "points_60s"):
            stored_rows(config, f"DELETE FROM {table} WHERE ts < ?", T0 + 2 * HOUR, write=True)
        for agg, answer in before.items():
            assert (
                await d.query(agg=agg, window="1h", since=int(T0), until=int(T0 + 2 * HOUR))
                == answer
            )
    finally:
        await d.stop()


# -- 2. restart in the middle of a minute and of an hour ------------------------------------


@pytest.mark.parametrize(
    ("how", "downtime"),
    [("stop", 0.0), ("crash", 0.0), ("crash", 2 * HOUR)],
    ids=["clean-stop", "kill-9", "kill-9-down-2h"],
)
async def test_restart_mid_minute_and_mid_hour_loses_and_doubles_nothing(
    tmp_path: Path, how: str, downtime: float
) -> None:
    config = make_config(tmp_path)
    clock = ManualClock(T0)
    d = await Driver(config, clock, seed=22).start()
    try:
        for _ in range(90):
            await d.step(60, 12)
        # Inside the minute T0+90m and the hour T0+1h: one flush of part of it, then more.
        await d.step(20, 12)
        clock.advance(10)
        await d.report(clock.t - 10, clock.t, 6)  # acknowledged, not yet flushed
    finally:
        if how == "stop":
            await d.stop()
        else:
            await d.crash()
    clock.advance(downtime)
    await d.start()
    try:
        # The rest of the interrupted minute, back-dated after a downtime; then 39 more minutes.
        await d.report(T0 + 5430, T0 + 5460, 12)
        if downtime == 0:
            clock.advance(30)
        await d.flush()
        for _ in range(39):
            await d.step(60, 12)
        raw = d.raw["api.latency"]
        end = clock.t
        for agg in ("count", "sum", "p99"):
            answer = await d.query(agg=agg, window="1h", since=int(T0), until=int(end))
            assert_windows(answer, raw, T0, end, HOUR, agg)
            answer = await d.query(agg=agg, window="1m", since=int(T0), until=int(end))
            assert_windows(answer, raw, T0, end, 60, agg)
        hour_rows = tier_rows(config, "points_3600s", "api.latency")
        for i, ts, count, total, blob in hour_rows:
            vals = raw.select(ts, ts + HOUR, i)
            assert (count, total) == (vals.size, vals.sum()), (i, ts - T0)
            assert sketch.decode(blob) == sketch.bin_values(vals)
        complete = math.floor(end / HOUR) * HOUR
        with_data = {
            float(h) for h in np.arange(T0, complete, HOUR) if raw.select(h, h + HOUR).size
        }
        assert {ts for _, ts, *_ in hour_rows} == with_data
        assert len(hour_rows) == len(TAGSETS) * len(with_data)  # one row per series and hour
        minute_rows = tier_rows(config, "points_60s", "api.latency")
        assert len({(i, ts) for i, ts, *_ in minute_rows}) == len(minute_rows)
        complete = math.floor(end / 60) * 60  # the open minute is not in the 1 m tier yet
        assert sum(c for _, _, c, *_ in minute_rows) == raw.select(0, complete).size
        ten_s_rows = tier_rows(config, "points_10s", "api.latency")
        assert sum(c for _, _, c, *_ in ten_s_rows) == raw.select(0, math.inf).size
    finally:
        await d.stop()


# -- 3. late points -----------------------------------------------------------------------------


async def test_late_point_is_merged_into_an_hour_already_written(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    clock = ManualClock(T0)
    d = await Driver(config, clock, seed=33).start()
    try:
        for _ in range(7):
            await d.step(600, 60)
        raw = d.raw["api.latency"]
        assert {ts for _, ts, *_ in tier_rows(config, "points_3600s", "api.latency")} == {T0}

        async def check(unflushed: float | None = None) -> None:
            for agg in ("count", "sum", "max", "p99"):
                answer = await d.query(agg=agg, window="1h", since=int(T0), until=int(T0 + HOUR))
                assert answer == {T0: expected(raw.select(T0, T0 + HOUR), agg)}, agg
                answer = await d.query(
                    agg=agg, window="1m", since=int(T0 + 1200), until=int(T0 + 1260)
                )
                assert answer == {T0 + 1200: expected(raw.select(T0 + 1200, T0 + 1260), agg)}
            # One bucket per series: SQLite merges the late point into its row, PostgreSQL
            # appends a row for it (readers merge them); either way the sum of what is stored.
            buckets: dict[tuple[int, float], list[tuple[float, float, bytes]]] = {}
            for i, ts, count, total, blob in tier_rows(config, "points_3600s", "api.latency"):
                buckets.setdefault((i, ts), []).append((count, total, blob))
            assert len(buckets) == len(TAGSETS)
            if config.storage.backend == "sqlite":
                assert all(len(parts) == 1 for parts in buckets.values())
            for (i, ts), parts in buckets.items():
                vals = raw.select(ts, ts + HOUR, i)
                if unflushed is not None and i == 0:  # not on disk yet: only in memory
                    vals = np.delete(vals, np.flatnonzero(vals == unflushed))
                assert (sum(p[0] for p in parts), sum(p[1] for p in parts)) == (
                    vals.size, vals.sum(),
                )  # fmt: skip
                merged = sketch.merge(sketch.decode(p[2]) for p in parts)
                assert merged == sketch.bin_values(vals)

        count_before = raw.select(T0, T0 + HOUR).size
        # A new maximum, back-dated 50 minutes into the written hour: seen at once (memory) ...
        assert d.api is not None
        point = {"name": "api.latency", "type": "timing", "value": 99999.5, "tags": TAGSETS[0]}
        status, _ = await d.api.report({**point, "timestamp": T0 + 1234.5})
        assert status == 200
        d.raw["api.latency"].add(np.array([T0 + 1234.5]), np.array([0]), np.array([99999.5]))
        assert raw.select(T0, T0 + HOUR).size == count_before + 1
        await check(unflushed=99999.5)  # the row on disk is unchanged: memory adds it
        await d.flush()  # ... and merged into the 1 m and 1 h rows already written
        await check()
        # The same after a restart (the rollups' state is rebuilt from disk).
        await d.stop()
        await d.start()
        status, _ = await d.api.report({**point, "value": 0.25, "timestamp": T0 + 1200.0})
        assert status == 200
        d.raw["api.latency"].add(np.array([T0 + 1200.0]), np.array([0]), np.array([0.25]))
        await d.flush()
        await check()
    finally:
        await d.stop()


# -- 4. tier choice and combination ----------------------------------------------------------

RES = (10.0, 60.0, 3600.0)


def test_plan_window_1h_over_30_days_reads_complete_hours_from_the_hourly_tier() -> None:
    since, until = T0 - 30 * DAY, T0 + 1805
    done = {60.0: T0 + 1800, 3600.0: T0}
    assert plan(RES, done, 3600.0, since, until) == [
        Segment(3600.0, since, T0),
        Segment(60.0, T0, T0 + 1800),
        Segment(10.0, T0 + 1800, until),
    ]


def test_plan_without_window_uses_the_coarsest_tier_and_finer_ones_at_the_edges() -> None:
    since, until = T0 - 30 * DAY + 25, T0 + 1805
    done = {60.0: T0 + 1800, 3600.0: T0}
    assert plan(RES, done, None, since, until) == [
        Segment(10.0, since, T0 - 30 * DAY + 60),
        Segment(60.0, T0 - 30 * DAY + 60, T0 - 30 * DAY + HOUR),
        Segment(3600.0, T0 - 30 * DAY + HOUR, T0),
        Segment(60.0, T0, T0 + 1800),
        Segment(10.0, T0 + 1800, until),
    ]


def test_plan_window_5m_never_reads_the_hourly_tier() -> None:
    done = {60.0: T0, 3600.0: T0}
    assert plan(RES, done, 300.0, T0 - 7 * DAY, T0 + 600) == [
        Segment(60.0, T0 - 7 * DAY, T0),
        Segment(10.0, T0, T0 + 600),
    ]
    # A window no coarse tier divides reads the finest tier only.
    assert plan(RES, done, 90.0, T0 - DAY, T0) == [Segment(10.0, T0 - DAY, T0)]
    assert plan(RES, done, 10.0, T0 - DAY, T0) == [Segment(10.0, T0 - DAY, T0)]


def test_plan_is_limited_by_what_each_coarse_tier_has_completed() -> None:
    # The 1 h tier is complete up to a day ago, the 1 m tier up to now.
    done = {60.0: T0, 3600.0: T0 - DAY}
    assert plan(RES, done, 3600.0, T0 - 2 * DAY, T0 + 600) == [
        Segment(3600.0, T0 - 2 * DAY, T0 - DAY),
        Segment(60.0, T0 - DAY, T0),
        Segment(10.0, T0, T0 + 600),
    ]
    # Nothing completed yet (a new database): everything from the finest tier.
    assert plan(RES, {60.0: 0.0, 3600.0: 0.0}, 3600.0, T0 - DAY, T0) == [
        Segment(10.0, T0 - DAY, T0)
    ]


def test_plan_covers_the_range_exactly_with_eligible_complete_tiers() -> None:
    """Properties over random ranges: the segments tile [start, until) in order, each coarse
    segment is whole buckets of a tier whose resolution divides the window, and lies before
    that tier's complete_until."""
    rng = np.random.default_rng(44)
    windows = [None, 10.0, 60.0, 300.0, 600.0, 3600.0, 7200.0, 86400.0, 90.0]
    for _ in range(500):
        start = T0 - 10.0 * float(rng.integers(0, 4 * 8640)) + float(rng.choice([0.0, 5.0]))
        until = start + float(rng.integers(1, 10 * 86400))
        done = {
            60.0: math.floor((start + rng.uniform(-DAY, 11 * DAY)) / 60) * 60.0,
            3600.0: math.floor((start + rng.uniform(-DAY, 11 * DAY)) / HOUR) * HOUR,
        }
        window = windows[int(rng.integers(len(windows)))]
        segs = plan(RES, done, window, start, until)
        assert segs[0].lo == start and segs[-1].hi == until
        for a, b in itertools.pairwise(segs):
            assert a.hi == b.lo
        for g in segs:
            assert g.lo < g.hi
            if g.resolution == RES[0]:
                continue
            r = g.resolution
            assert g.lo % r == 0 and g.hi % r == 0
            assert g.hi <= done[r]
            assert window is None or window % r == 0
        # The coarsest eligible tier serves whatever whole buckets it has completed.
        eligible = [r for r in RES[1:] if window is None or window % r == 0]
        if eligible:
            top = max(eligible)
            lo = math.ceil(start / top) * top
            hi = min(math.floor(until / top) * top, done[top])
            served = sum(g.hi - g.lo for g in segs if g.resolution == top)
            assert served == max(0.0, hi - lo)


async def test_a_30_day_query_with_window_1h_reads_the_hourly_tier(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    clock = ManualClock(T0 + 5)
    d = await Driver(config, clock, seed=55).start()
    try:
        tagsets = ({"svc": "x"},)
        # The series exists once a point of it is flushed; this one falls in the current hour.
        await d.report(T0, T0 + 5, 1, name="hist.latency", tagsets=tagsets)
        await d.flush()
        gw = d.gw
        assert gw is not None
        # 30 days of history straight into the 1 h tier, as an older store would hold it.
        rng = np.random.default_rng(56)
        history: dict[float, np.ndarray] = {}
        rows = []
        for h in range(720):
            ts = T0 - 30 * DAY + h * HOUR
            vals = values_of(rng, int(rng.integers(1, 40)))
            history[ts] = vals
            rows.append(
                BucketRow(
                    ts=ts,
                    key=("default", "hist.latency", (("svc", "x"),)),
                    type=MetricType.TIMING,
                    count=float(vals.size),
                    sum=float(vals.sum()),
                    min=float(vals.min()),
                    max=float(vals.max()),
                    sketch=sketch.bin_values(vals),
                )
            )
        batch = RowBatch.from_rows(rows)
        await gw.store.write_rollups({3600.0: batch}, {3600.0: T0})
        raw = d.raw["hist.latency"]
        for ts, vals in history.items():
            raw.add(np.full(vals.size, ts + 1.0), np.zeros(vals.size, dtype=np.int64), vals)

        since, until = T0 - 30 * DAY, T0 + HOUR
        for agg in ("count", "sum", "min", "max", "p99"):
            answer = await d.query(
                name="hist.latency", agg=agg, window="1h", since=int(since), until=int(until)
            )
            assert len(answer) == 721
            assert_windows(answer, raw, since, until, HOUR, agg)
        # Coarser windows merge the hourly rows: one point per day, exact.
        for agg in ("count", "p50"):
            answer = await d.query(
                name="hist.latency", agg=agg, window="1d", since=int(since), until=int(until)
            )
            first = math.floor(since / DAY) * DAY
            assert_windows(answer, raw, first, until, DAY, agg)
        # No window: one point for the whole range.
        everything = raw.select(since, until)
        for agg in ("count", "sum", "p50", "p99"):
            answer = await d.query(name="hist.latency", agg=agg, since=int(since), until=int(until))
            assert answer == {since: expected(everything, agg)}, agg
    finally:
        await d.stop()


# -- 5. sketch budget ---------------------------------------------------------------------------


async def test_quantile_query_over_too_many_sketches_is_refused_with_a_hint(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, query={"max_sketches": 100})
    clock = ManualClock(T0)
    d = await Driver(config, clock, seed=66).start()
    try:
        for _ in range(6):
            await d.step(600, 60, even=True)  # one point in every 10 s bucket
        assert d.api is not None
        params = {"name": "api.latency", "since": str(int(T0)), "until": str(int(T0 + HOUR))}
        # 3 series x 360 ten-second buckets: over the budget.
        status, body = await d.api.query(**params, agg="p99", window="10s")
        assert status == 400, body
        assert body["error"]["code"] == "INVALID_ARGUMENT"
        message = body["error"]["message"]
        assert "max_sketches" in message and "100" in message, message
        # Counts need no sketches: the same range and window are fine.
        status, body = await d.api.query(**params, agg="count", window="10s")
        assert status == 200 and len(body["points"]) == 360
        # What the message suggests fits: a window that reads a rollup tier ...
        status, body = await d.api.query(**params, agg="p99", window="1h")
        assert status == 200, body
        assert body["points"] == [
            {
                "timestamp": int(T0),
                "value": q_ref(d.raw["api.latency"].select(T0, T0 + HOUR), "p99"),
            }
        ]
        # ... or a narrower tag filter: 1 series x 60 one-minute buckets fits, 3 x 60 do not.
        status, body = await d.api.query(**params, agg="p99", window="1m")
        assert status == 400, body
        status, body = await d.api.query(**params, agg="p99", window="1m", tags="host:a")
        assert status == 200 and len(body["points"]) == 60, body
    finally:
        await d.stop()


# -- 6. retention ----------------------------------------------------------------------------

SHORT_TIERS = {
    "tiers": [
        {"resolution": "10s", "retention": "2m"},
        {"resolution": "1m", "retention": "1h"},
        {"resolution": "1h", "retention": "3h"},
    ]
}


KEPT = "ret.kept"


def row_times(config: Config, table: str, name: str) -> list[float]:
    return sorted(ts for _, ts, *_ in tier_rows(config, table, name))


def tier_counts(config: Config) -> dict[str, int]:
    return {
        t: stored_rows(config, f"SELECT count(*) FROM {t}")[0][0]
        for t in ("points_10s", "points_60s", "points_3600s")
    }


async def test_retention_deletes_old_rows_per_tier_and_forgets_dead_series(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, storage=SHORT_TIERS)
    clock = ManualClock(T0)
    d = await Driver(config, clock, seed=77).start()
    gw = d.gw
    assert gw is not None and gw.retention is not None and d.api is not None
    try:
        kept = ({"host": "a"},)
        await d.report(T0, T0 + 60, 12, name="ret.gone", tagsets=kept, even=True)
        for _ in range(70):
            await d.step(60, 12, name="ret.kept", tagsets=kept, even=True)
        now = clock.t
        assert now == T0 + 4200
        old = {
            "points_10s": sum(ts < now - 120 for ts in row_times(config, "points_10s", "ret.kept")),
            "points_60s": sum(
                ts < now - HOUR for ts in row_times(config, "points_60s", "ret.kept")
            ),
        }
        total_before = tier_counts(config)
        assert old["points_10s"] > 400 and old["points_60s"] == 10

        deleted_before = gw.telemetry.retention_deleted_rows
        n = await gw.retention.run_once(force=True)
        after = tier_counts(config)
        assert n == sum(total_before.values()) - sum(after.values())
        assert gw.telemetry.retention_deleted_rows - deleted_before == n
        # Per tier: what is older than its retention is gone, the rest kept.
        assert row_times(config, "points_10s", "ret.kept") == [
            now - 120 + 10 * i for i in range(12)
        ]
        assert row_times(config, "points_10s", "ret.gone") == []
        assert row_times(config, "points_60s", "ret.kept") == [
            now - HOUR + 60 * i for i in range(60)
        ]
        assert row_times(config, "points_60s", "ret.gone") == []
        assert row_times(config, "points_3600s", "ret.kept") == [T0]
        assert row_times(config, "points_3600s", "ret.gone") == [T0]  # 1 h tier keeps 3 h
        # The hourly row of the dead series still answers; it is not forgotten yet.
        status, body = await d.api.query(
            name="ret.gone", agg="count", window="1h", since=str(int(T0)), until=str(int(now))
        )
        assert (status, body["points"]) == (200, [{"timestamp": int(T0), "value": 12}])

        # Five hours later: every row of ret.gone has expired, and it is older than the longest
        # retention; ret.kept goes on reporting.
        clock.advance(5 * HOUR)
        await d.step(60, 12, name="ret.kept", tagsets=kept, even=True)
        now = clock.t
        n = await gw.retention.run_once(force=True)
        assert n > 0
        assert row_times(config, "points_3600s", "ret.kept") == []  # T0, T0+1h: both past 3 h
        assert row_times(config, "points_60s", "ret.kept") == [now - 60]
        status, body = await d.api.request("GET", "/v1/metrics")
        assert status == 200
        assert [m["name"] for m in body["metrics"]] == ["ret.kept"]
        status, body = await d.api.query(name="ret.gone", agg="count")
        assert (status, body["error"]["code"]) == (404, "METRIC_NOT_FOUND")
        names = [r[0] for r in stored_rows(config, "SELECT name FROM series")]
        assert names == ["ret.kept"]
        # The name can be used again; only the new point is counted.
        await d.report(now - 30, now - 20, 1, name="ret.gone", tagsets=kept)
        await d.flush()
        status, body = await d.api.query(name="ret.gone", agg="count", since=str(int(now - HOUR)))
        assert (status, body["points"][0]["value"]) == (200, 1)
        status, body = await d.api.query(name="ret.kept", agg="count", since=str(int(now - 60)))
        assert (status, body["points"][0]["value"]) == (200, 12)
    finally:
        await d.stop()


async def test_database_stops_growing_in_steady_state(tmp_path: Path) -> None:
    tiers = {
        "tiers": [
            {"resolution": "10s", "retention": "2m"},
            {"resolution": "1m", "retention": "10m"},
            {"resolution": "10m", "retention": "30m"},
        ]
    }
    config = make_config(tmp_path, storage=tiers)
    clock = ManualClock(T0)
    sqlite_only(config, "the file's pages and free list")
    path = config.storage.path
    many = tuple({"host": f"h{i:02d}", "pad": "x" * 40} for i in range(40))
    d = await Driver(config, clock, seed=88).start()
    gw = d.gw
    assert gw is not None and gw.retention is not None
    pages: list[int] = []
    free: list[int] = []
    try:
        with readonly(path) as conn:
            assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
            # The empty schema: a page per table and index (what no retention can give back).
            floor = conn.execute("PRAGMA page_count").fetchone()[0]
        for _ in range(90):
            await d.step(60, 480, name="disk.latency", tagsets=many)
            await gw.retention.run_once(force=True)
            with readonly(path) as conn:
                pages.append(conn.execute("PRAGMA page_count").fetchone()[0])
                free.append(conn.execute("PRAGMA freelist_count").fetchone()[0])
        # Steady state from about 40 minutes on (the longest retention is 30 minutes).
        plateau = max(pages[40:50])
        assert max(pages[50:]) <= plateau * 1.1 + 4, pages
        assert pages[-1] < 0.6 * 90 / 40 * pages[39], pages  # far below linear growth
        assert max(free[50:]) <= 8, free
        # Most series stop reporting: once their rows expire, the file gives the space back.
        for _ in range(40):
            await d.step(60, 12, name="disk.latency", tagsets=many[:1])
            await gw.retention.run_once(force=True)
        with readonly(path) as conn:
            small = conn.execute("PRAGMA page_count").fetchone()[0]
            assert conn.execute("PRAGMA freelist_count").fetchone()[0] <= 8
        assert small - floor < 0.1 * (plateau - floor), (small, floor, plateau)
    finally:
        await d.stop()


# -- 7. export -------------------------------------------------------------------------------


async def test_sketch_export_is_ddsketch_protobuf_of_the_merged_range(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    clock = ManualClock(T0)
    d = await Driver(config, clock, seed=99).start()
    try:
        for _ in range(30):
            await d.step(300, 60)
            await d.report(clock.t - 300, clock.t, 3, name="hits", mtype="counter")
        await d.report(clock.t - 10, clock.t, 30)  # in memory, not yet flushed
        raw = d.raw["api.latency"]
        assert d.api is not None

        async def export(**params: Any) -> tuple[int, Any]:
            assert d.api is not None
            return await d.api.request("GET", "/v1/metrics/sketch", params=params)

        # Unaligned edges: the 1 h tier in the middle, 1 m and 10 s tiers and memory around it.
        for lo, hi, tags, series in (
            (T0 + 1230, clock.t, None, None),
            (T0, clock.t + 60, "host:b", 1),
            (T0 + HOUR, T0 + 2 * HOUR, None, None),
        ):
            params = {"name": "api.latency", "since": str(int(lo)), "until": str(int(hi))}
            if tags:
                params["tags"] = tags
            status, body = await export(**params)
            assert status == 200, body
            vals = raw.select(lo, hi, series)
            assert (body["count"], body["sum"]) == (vals.size, vals.sum())
            assert (body["min"], body["max"]) == (vals.min(), vals.max())
            msg = ddsketch_pb2.DDSketch()
            msg.ParseFromString(base64.b64decode(body["sketch"]))
            exported = DDSketchProto.from_proto(msg)
            assert exported.count == vals.size
            ref = sketch.bin_values(vals)
            for q in (0.0, 0.01, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0):
                want = sketch.quantile(ref, q)
                assert want is not None
                assert exported.get_quantile_value(q) == pytest.approx(want, rel=1e-9), q

        status, body = await export(name="hits", since=str(int(T0)))
        assert (status, body["error"]["code"]) == (400, "INVALID_ARGUMENT")
        assert "counter" in body["error"]["message"]
        status, body = await export(name="no.such.metric", since=str(int(T0)))
        assert (status, body["error"]["code"]) == (404, "METRIC_NOT_FOUND")
    finally:
        await d.stop()


async def test_export_of_a_range_without_data(tmp_path: Path) -> None:
    """A known timing with nothing in the range: an empty sketch, not an internal error."""
    config = make_config(tmp_path)
    clock = ManualClock(T0)
    d = await Driver(config, clock, seed=100).start()
    try:
        await d.step(60, 5)
        assert d.api is not None
        params = {"name": "api.latency", "since": str(int(T0 - 2 * HOUR)), "until": str(int(T0))}
        status, body = await d.api.request("GET", "/v1/metrics/sketch", params=params)
        assert status == 200, body
        assert (body["count"], body["sum"], body["min"], body["max"]) == (0, 0, None, None)
        msg = ddsketch_pb2.DDSketch()
        msg.ParseFromString(base64.b64decode(body["sketch"]))
        assert DDSketchProto.from_proto(msg).count == 0
    finally:
        await d.stop()


# -- more of what a user relies on -------------------------------------------------------------


async def test_counters_gauges_and_sets_roll_up_exactly(tmp_path: Path) -> None:
    """Every type through the tiers: counter count/sum, gauge last/min/max/quantiles, set
    distinct members, per complete hour from the 1 h tier equal to the raw points."""
    config = make_config(tmp_path)
    clock = ManualClock(T0)
    d = await Driver(config, clock, seed=101).start()
    members: list[tuple[float, str]] = []
    try:
        assert d.api is not None
        for _ in range(26):  # 2 h 10 min in 5-minute steps
            lo = clock.t
            clock.advance(300)
            await d.report(lo, clock.t, 20, name="jobs", mtype="counter", tagsets=({},))
            await d.report(lo, clock.t, 20, name="queue.depth", mtype="gauge", tagsets=({},))
            ts = lo + np.sort(d.rng.choice(300_000, 15, replace=False)) / 1000.0
            who = [f"user{int(k)}" for k in d.rng.integers(0, 60, 15)]
            status, body = await d.api.batch(
                [
                    {"name": "visitors", "type": "set", "value": m, "timestamp": float(t)}
                    for t, m in zip(ts, who, strict=True)
                ]
            )
            assert (status, body["rejected"]) == (200, 0), body
            members.extend(zip(ts.tolist(), who, strict=True))
            await d.flush()
        since, until = int(T0), int(T0 + 2 * HOUR)
        jobs = d.raw["jobs"]
        for agg in ("count", "sum"):
            answer = await d.query(name="jobs", agg=agg, window="1h", since=since, until=until)
            assert_windows(answer, jobs, T0, T0 + 2 * HOUR, HOUR, agg)
        depth = d.raw["queue.depth"]
        for agg in ("min", "max", "p50", "p99"):
            answer = await d.query(
                name="queue.depth", agg=agg, window="1h", since=since, until=until
            )
            assert_windows(answer, depth, T0, T0 + 2 * HOUR, HOUR, agg)
        ts_all = np.concatenate(depth._ts)
        values_all = np.concatenate(depth._values)
        answer = await d.query(
            name="queue.depth", agg="last", window="1h", since=since, until=until
        )
        want = {}
        for h in (T0, T0 + HOUR):
            inside = np.flatnonzero((ts_all >= h) & (ts_all < h + HOUR))
            latest = inside[ts_all[inside] == ts_all[inside].max()][-1]
            want[h] = float(values_all[latest])
        assert answer == want
        answer = await d.query(
            name="visitors", agg="distinct", window="1h", since=since, until=until
        )
        assert answer == {
            h: len({m for t, m in members if h <= t < h + HOUR}) for h in (T0, T0 + HOUR)
        }
        answer = await d.query(name="visitors", agg="count", window="1h", since=since, until=until)
        assert answer == {h: sum(h <= t < h + HOUR for t, _ in members) for h in (T0, T0 + HOUR)}
        # And these answers did come from the 1 h tier: one row per hour per metric.
        rows = stored_rows(
            config,
            "SELECT s.name, count(*) FROM points_3600s p JOIN series s ON s.id = p.series_id "
            "GROUP BY s.name ORDER BY s.name",
        )
        assert rows == [("jobs", 2), ("queue.depth", 2), ("visitors", 2)]
    finally:
        await d.stop()


async def test_a_late_point_stays_visible_while_its_flush_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DESIGN §4: an accepted point shows in answers at once, and (by implication) keeps
    showing while its flush is written: before the flush's transaction commits (the point is
    still in memory) and after it (the finest tier and the hour's rollup hold it, together)."""
    config = make_config(tmp_path)
    clock = ManualClock(T0)
    d = await Driver(config, clock, seed=102).start()
    try:
        for _ in range(7):
            await d.step(600, 30)
        assert d.gw is not None
        store = d.gw.store
        await d.report(T0 + 100, T0 + 101, 1)  # late: hour T0 is written
        want = {T0: float(d.raw["api.latency"].select(T0, T0 + HOUR).size)}
        q = {"agg": "count", "window": "1h", "since": int(T0), "until": int(T0 + HOUR)}
        assert await d.query(**q) == want
        between, go_on = threading.Event(), threading.Event()
        write_flush = store.write_flush

        async def paused(*args: Any, **kwargs: Any) -> bool:
            between.set()
            await asyncio.to_thread(go_on.wait, 10)
            return await write_flush(*args, **kwargs)

        monkeypatch.setattr(store, "write_flush", paused)
        flush = asyncio.create_task(d.flush())
        try:
            assert await asyncio.to_thread(between.wait, 10)
            during = await d.query(**q)
        finally:
            go_on.set()
            await flush
        assert await d.query(**q) == want
        assert during == want
    finally:
        await d.stop()


async def test_a_series_with_a_point_in_memory_is_not_forgotten(tmp_path: Path) -> None:
    """A sparse series whose stored rows all expired reports again; retention runs before the
    next flush. The accepted point must stay queryable (DESIGN §4 freshness), before and after
    the flush."""
    config = make_config(tmp_path, storage=SHORT_TIERS)
    clock = ManualClock(T0)
    d = await Driver(config, clock, seed=103).start()
    gw = d.gw
    assert gw is not None and gw.retention is not None and d.api is not None
    try:
        await d.report(T0, T0 + 10, 1, name="cron.duration", tagsets=({},))
        await d.flush()
        clock.advance(HOUR + 60)
        await d.flush()  # the hour is rolled up and written
        clock.advance(5 * HOUR)  # silent for longer than every retention
        await d.report(clock.t - 5, clock.t, 1, name="cron.duration", tagsets=({},))
        await gw.retention.run_once(force=True)
        for when in ("before the flush", "after the flush"):
            status, body = await d.api.query(name="cron.duration", agg="count")
            assert status == 200, (when, body)
            assert body["points"][0]["value"] == 1, when
            await d.flush()
        status, body = await d.api.request("GET", "/v1/metrics")
        assert [m["name"] for m in body["metrics"]] == ["cron.duration"]
    finally:
        await d.stop()


# -- merging rows into a coarser bucket (TierRollup's merge) ------------------------------------


def test_merge_rows_equals_merging_each_bucket_and_series_by_hand() -> None:
    """Rows of several series, types and minutes, in arrival order, merged into 1 m buckets."""
    from statsd_gateway.store.rollup import merge_rows

    rng = np.random.default_rng(5)
    timer = ("default", "t", (("h", "a"),))
    gauge = ("default", "g", ())
    members = ("default", "s", ())
    rows: list[BucketRow] = []
    for i in range(300):
        ts = T0 + 10.0 * int(rng.integers(0, 18))
        which = int(rng.integers(0, 3))
        if which == 0:
            vals = values_of(rng, int(rng.integers(1, 9)))
            lo, hi, n = float(vals.min()), float(vals.max()), float(vals.size)
            b = sketch.bin_values(vals)
            rows.append(
                BucketRow(ts, timer, MetricType.TIMING, n, float(vals.sum()), lo, hi, sketch=b)
            )
        elif which == 1:
            last_ts = ts + float(rng.integers(0, 3))  # equal last_ts: the later row wins
            v, b = float(i), sketch.bin_values([i])
            rows.append(BucketRow(ts, gauge, MetricType.GAUGE, 1.0, v, v, v, v, last_ts, sketch=b))
        else:
            hll = sketch.hll_from_members([f"m{i}", "shared"])
            rows.append(BucketRow(ts, members, MetricType.SET, 2.0, 0.0, None, None, hll=hll))
    got = {(r.ts, r.key): r for r in merge_rows(RowBatch.from_rows(rows), 60.0).rows()}
    groups: dict[tuple[float, Any], list[BucketRow]] = {}
    for r in rows:
        groups.setdefault((math.floor(r.ts / 60) * 60.0, r.key), []).append(r)
    assert got.keys() == groups.keys()
    for k, parts in groups.items():
        g = got[k]
        assert g.type is parts[0].type
        assert g.count == sum(p.count for p in parts)
        assert g.sum == sum(p.sum for p in parts)
        assert g.min == min((p.min for p in parts if p.min is not None), default=None)
        assert g.max == max((p.max for p in parts if p.max is not None), default=None)
        latest = None
        for p in parts:
            if p.last_ts is not None and (latest is None or p.last_ts >= latest.last_ts):
                latest = p
        assert (g.last, g.last_ts) == (
            (None, None) if latest is None else (latest.last, latest.last_ts)
        )
        bins = [p.sketch for p in parts if p.sketch is not None]
        assert g.sketch == (sketch.merge(bins) if bins else None)
        hlls = [p.hll for p in parts if p.hll is not None]
        if hlls:
            assert g.hll is not None
            assert sketch.hll_estimate(g.hll) == sketch.hll_estimate(sketch.hll_merge(hlls))
        else:
            assert g.hll is None


async def test_a_rollup_that_fails_midway_is_undone_and_the_snapshot_counted_once(
    tmp_path: Path,
) -> None:
    """If completing the minute raises after it changed the rollups, the flush fails, the
    rollups go back to their state before it, and the retry counts the snapshot once."""
    from statsd_gateway.aggregator import IntervalAggregator
    from statsd_gateway.flusher import Flusher
    from statsd_gateway.series_registry import SeriesRegistry
    from statsd_gateway.store import SqliteStore
    from statsd_gateway.store.rollup import TierRollup
    from statsd_gateway.telemetry import Telemetry

    clock = ManualClock(T0 + 1.0)
    store = SqliteStore(tmp_path / "m.db", clock=clock)
    stored = await store.open()
    rollup = TierRollup(store.resolutions, stored.complete_until)
    aggregator = IntervalAggregator(interval=10.0, clock=clock, registry=SeriesRegistry(),
                                    max_series_per_tenant=100, max_backdate=3600.0)  # fmt: skip
    flusher = Flusher(aggregator, store, Telemetry(), clock=clock, rollup=rollup)
    real_complete = rollup.complete
    failures = [RuntimeError("injected")]

    def complete_then_fail(boundary: float) -> dict[float, RowBatch]:
        done = real_complete(boundary)
        if done and failures:
            raise failures.pop()
        return done

    rollup.complete = complete_then_fail  # type: ignore[method-assign]
    try:
        for _ in range(7):  # six 10 s buckets of one minute, then the flush that completes it
            aggregator.add_samples(
                "default", [Sample("lat", (), MetricType.TIMING, 5.0, 1.0, None, False)]
            )
            clock.t += 10.0
            await flusher.flush(force=True)
        assert not failures and flusher.telemetry.flush_errors == 1
        assert await flusher.flush(force=True)  # the retry
        with sqlite3.connect(store.path) as conn:
            minute = conn.execute("SELECT ts, count FROM points_60s").fetchall()
        conn.close()
        assert minute == [(T0, 6.0)]
    finally:
        await store.close()
        flusher.close()
