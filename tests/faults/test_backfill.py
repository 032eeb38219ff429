"""Back-filling history keeps memory bounded by `storage.backfill_memory` and loses nothing.

Before: every back-dated bucket stayed in memory as Python objects until the next flush (a day of
history for 1,000 series took 4.1 GB); now, past the bound, the request path flushes early and
waits for it, and back-dated buckets reach the store in batches, merged into rows already there.
"""

from __future__ import annotations

import re
import sqlite3
import time
import urllib.request
from pathlib import Path
from typing import Any

from statsd_gateway import sketch
from statsd_gateway.config import Config
from statsd_gateway.snapshot import ENTRY_BYTES, VALUE_BYTES
from statsd_gateway.store import SqliteStore
from tests.conftest import T0, Api, ManualClock, make_config, on_sqlite_writer, running
from tests.daemon import Daemon

LIMIT = 2 * 1024 * 1024
BATCH = 1000
SERIES = 20
HOURS = 5
STEP = 10
# Whole hours of history ending an hour before the clock.
START = int(T0) - (HOURS + 1) * 3600
END = START + HOURS * 3600


def backfill_config(tmp_path: Path, limit: int = LIMIT) -> Config:
    return make_config(
        tmp_path,
        storage={
            "backfill_memory": limit,
            "tiers": [
                {"resolution": "10s", "retention": "1d"},
                {"resolution": "1m", "retention": "7d"},
                {"resolution": "1h", "retention": "400d"},
            ],
        },
    )


def value_of(k: int, s: int) -> int:
    return (k * 31 + s * 17) % 997 + 1  # integers: every sum is exact in any order


def history() -> list[list[dict[str, Any]]]:
    """Timing points every 10 s per series, oldest first, in batches of BATCH."""
    points = [
        {
            "name": "bf.latency",
            "type": "timing",
            "value": value_of(k, s),
            "tags": {"host": f"h{s}"},
            "timestamp": START + k * STEP,
        }
        for k in range((END - START) // STEP)
        for s in range(SERIES)
    ]
    return [points[i : i + BATCH] for i in range(0, len(points), BATCH)]


def values_of(s: int, since: int = START, until: int = END) -> list[int]:
    return [value_of(k, s) for k in range((since - START) // STEP, (until - START) // STEP)]


async def assert_answers_exact(api: Api) -> None:
    """Every answer equals the one computed from the points sent (quantiles: the sketch of the
    values sent, which merging per bucket must not change)."""
    for s in (0, SERIES - 1):
        vals = values_of(s)
        rng = {"name": "bf.latency", "since": START, "until": END, "tags": f"host:h{s}"}
        bins = sketch.bin_values(vals)
        want = {
            "count": len(vals),
            "sum": sum(vals),
            "min": min(vals),
            "max": max(vals),
            "p50": sketch.quantile(bins, 0.5),
            "p99": sketch.quantile(bins, 0.99),
        }
        for agg, expected in want.items():
            status, body = await api.query(agg=agg, **rng)
            assert status == 200, body
            assert [p["value"] for p in body["points"]] == [expected], (s, agg)
        status, body = await api.query(agg="sum", window="1h", **rng)
        hourly = [sum(values_of(s, t, t + 3600)) for t in range(START, END, 3600)]
        assert [p["value"] for p in body["points"]] == hourly
        status, body = await api.query(agg="p50", window="10s", **{**rng, "until": START + 600})
        # One value per bucket: its quantile is that value (clamped to the bucket's min/max).
        assert [p["value"] for p in body["points"]] == values_of(s, START, START + 600)
    status, body = await api.query(name="bf.latency", agg="count", since=START, until=END)
    assert body["points"][0]["value"] == SERIES * (END - START) // STEP


async def test_a_backfill_stays_under_the_bound_and_every_answer_is_exact(
    tmp_path: Path, clock: ManualClock
) -> None:
    config = backfill_config(tmp_path)
    batches = history()
    # The bound holds to within the batch being applied.
    slack = BATCH * (ENTRY_BYTES + VALUE_BYTES)
    async with running(config, clock) as (gw, api):
        for points in batches:
            status, answer = await api.batch(points)
            assert (status, answer["accepted"]) == (200, len(points)), answer
            assert gw.aggregator.memory_bytes() <= LIMIT + slack
        # Nothing flushed by time: the clock never moved. Early flushes wrote the history.
        pressure = gw.telemetry.pressure_flushes
        assert pressure >= len(batches) * BATCH * ENTRY_BYTES // (LIMIT + slack)
        assert gw.telemetry.flushes >= pressure
        await assert_answers_exact(api)  # store + memory
        assert await gw.flusher.flush()
        await assert_answers_exact(api)  # store alone
    async with running(config, clock) as (gw, api):
        await assert_answers_exact(api)  # after a restart: nothing lost, nothing doubled


async def test_past_the_bound_with_the_store_failing_http_writes_are_refused_whole(
    tmp_path: Path, clock: ManualClock
) -> None:
    batches = history()[:4]
    async with running(backfill_config(tmp_path), clock) as (gw, api):
        assert isinstance(gw.store, SqliteStore)
        locker = sqlite3.connect(gw.store.path, isolation_level=None)
        await on_sqlite_writer(gw.store, lambda conn: conn.execute("PRAGMA busy_timeout=20"))
        locker.execute("BEGIN EXCLUSIVE")
        accepted = 0
        refused = None
        for points in batches:
            status, answer = await api.batch(points)
            if status != 200:
                refused = (status, answer)
                break
            accepted += len(points)
        assert refused is not None, "memory grew past the bound with the store failing"
        status, answer = refused
        assert (status, answer["error"]["code"]) == (503, "UNAVAILABLE")
        assert "backfill_memory" in answer["error"]["message"]
        assert accepted > 0
        assert gw.aggregator.memory_bytes() <= LIMIT + BATCH * (ENTRY_BYTES + VALUE_BYTES)
        locker.execute("ROLLBACK")
        locker.close()
        clock.advance(gw.flusher.max_backoff)  # the backoff has run out
        assert await gw.flusher.flush()
        status, body = await api.query(name="bf.latency", agg="count", since=START, until=END)
        assert body["points"][0]["value"] == accepted  # the refused batch was not applied


def test_a_backfill_killed_midway_keeps_every_acknowledged_point_once(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """The real daemon, kill -9 right after the last 200: the early flushes have written most
    of the history and released its log; the rest comes back from the log, nothing twice."""
    state = tmp_path / "state"
    path = tmp_path / "config.yaml"
    path.write_text(
        "udp: {listen: '127.0.0.1:0', read_buffer: 0}\n"
        "http: {listen: '127.0.0.1:0'}\n"
        f"storage: {{path: '{state / 'metrics.db'}', backfill_memory: {LIMIT},\n"
        "  tiers: [{resolution: 10s, retention: 1d}, {resolution: 1m, retention: 7d},\n"
        "          {resolution: 1h, retention: 400d}]}\n",
        encoding="utf-8",
    )
    d = Daemon(path)
    daemons.append(d)
    key = (state / "api-key").read_text().strip()
    start = (int(time.time()) // 3600 - 3) * 3600  # two whole hours of history, an hour ago
    points = [
        {"name": "bf.c", "type": "counter", "value": k % 7 + 1, "tags": {"s": str(k % 10)},
         "timestamp": start + (k // 10) * STEP}
        for k in range(10 * 720)
    ]  # fmt: skip
    for i in range(0, len(points), BATCH):
        status, answer, _ = d.request(
            "POST", "/v1/metrics/batch", key, {"points": points[i : i + BATCH]}
        )
        assert status == 200, answer
    with urllib.request.urlopen(d.base + "/metrics", timeout=10) as r:
        text = r.read().decode()
    found = re.search(r"^statsd_gateway_pressure_flushes_total (\S+)$", text, re.M)
    assert found is not None and float(found.group(1)) >= 2
    d.kill()
    again = Daemon(path)
    daemons.append(again)
    rng = {"name": "bf.c", "since": start, "until": start + 7200}
    for agg, want in (("count", len(points)), ("sum", sum(p["value"] for p in points))):
        status, body = again.query(key, agg=agg, **rng)
        assert (status, [p["value"] for p in body["points"]]) == (200, [want]), agg
