"""Gauge current values (what StatsD `+N`/`-N` change) survive a restart.

Before: a restart forgot them, so `g:+5|g` after a restart started from 0 instead of the last
value."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from statsd_gateway.config import Config
from statsd_gateway.model import BucketRow, MetricType, RowBatch
from statsd_gateway.store import SqliteStore
from statsd_gateway.store.base import FlushWrite
from tests.conftest import T0, ManualClock, run_sync, running, send_udp, wait_for_udp, write_rows
from tests.daemon import Daemon, fresh_config, generated_key, poll_value
from tests.test_wal import crash, started


async def test_a_gauge_delta_after_a_restart_applies_to_the_last_value(
    config: Config, clock: ManualClock
) -> None:
    async with running(config, clock) as (gw, api):
        send_udp(gw, b"g.a:10|g\ng.b:7|g|#k:v")
        await wait_for_udp(gw, 1)
        assert await gw.flusher.flush()
        clock.advance(10)
        send_udp(gw, b"g.a:+2|g")  # still in memory at stop: the final flush writes it
        await wait_for_udp(gw, 2)
    clock.advance(3600)
    async with running(config, clock) as (gw, api):
        send_udp(gw, b"g.a:+5|g\ng.b:-1|g|#k:v\ng.new:-1|g")
        await wait_for_udp(gw, 1)
        for name, want in (("g.a", 17), ("g.b", 6), ("g.new", -1)):
            _, q = await api.query(name=name, agg="last", since="-10s")
            assert q["points"][0]["value"] == want, (name, q)
        assert await gw.flusher.flush()
    clock.advance(10)
    async with running(config, clock) as (gw, api):  # and again: what the last run flushed
        send_udp(gw, b"g.a:+1|g")
        await wait_for_udp(gw, 1)
        _, q = await api.query(name="g.a", agg="last", since="-10s")
        assert q["points"][0]["value"] == 18


async def test_after_a_crash_the_current_value_is_the_last_flushed_or_logged_one(
    config: Config, clock: ManualClock
) -> None:
    """Restored from the store, then the write-ahead log's HTTP points applied over it."""
    gw, session, api = await started(config, clock)
    try:
        send_udp(gw, b"h.flushed:100|g\nh.logged:100|g")
        await wait_for_udp(gw, 1)
        assert await gw.flusher.flush()
        clock.advance(10)
        status, _ = await api.report({"name": "h.logged", "type": "gauge", "value": 3})
        assert status == 200
    finally:
        await session.close()
        await crash(gw)  # no final flush: the 3 is only in the log
    async with running(config, clock) as (gw, api):
        send_udp(gw, b"h.flushed:+1|g\nh.logged:+1|g")
        await wait_for_udp(gw, 1)
        for name, want in (("h.flushed", 101), ("h.logged", 4)):
            _, q = await api.query(name=name, agg="last", since="-10s")
            assert q["points"][0]["value"] == want, (name, q)


def test_the_daemon_keeps_gauge_values_across_a_restart(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    path, state = fresh_config(tmp_path)
    d = Daemon(path)
    daemons.append(d)
    key = generated_key(state)
    d.send_udp(b"d.g:40|g")
    poll_value(d, key, 40, name="d.g", agg="last", since="-60s")
    assert d.terminate() == 0
    again = Daemon(path)
    daemons.append(again)
    again.send_udp(b"d.g:+2|g")
    poll_value(again, key, 42, name="d.g", agg="last", since="-60s")


def test_a_database_of_schema_version_1_is_migrated_and_keeps_its_data(tmp_path: Path) -> None:
    db = tmp_path / "metrics.db"
    store = SqliteStore(db)
    run_sync(store.open())
    row = BucketRow(T0, ("default", "m", ()), MetricType.GAUGE, 1, 5, 5, 5, 5, T0 + 1, None, None)
    run_sync(write_rows(store, [row], 1))
    run_sync(store.close())
    with contextlib.closing(sqlite3.connect(db)) as conn:  # as the first release left it
        conn.execute("DROP TABLE gauge_current")
        conn.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
        conn.commit()
    store = SqliteStore(db)
    assert [s.name for s in run_sync(store.open()).series] == ["m"]
    gauges = {("default", "m", ()): (5.0, T0 + 1)}
    run_sync(store.write_flush(FlushWrite(2, RowBatch.from_rows([row]), gauges=gauges)))
    run_sync(store.close())
    store = SqliteStore(db)
    assert run_sync(store.open()).gauges == gauges
    run_sync(store.close())
