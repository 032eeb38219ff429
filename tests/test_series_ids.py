"""Series ids across a restart: the registry is seeded with the ids of the store's series (a real
SQLite file, through the Gateway), and the ids of new series continue above the largest."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from statsd_gateway.model import SeriesKey
from statsd_gateway.store.sqlite_reads import read_series
from tests.conftest import ADMIN_KEY, Api, ManualClock, make_config, running


async def report_counters(api: Api, *names: str) -> None:
    for name in names:
        status, body = await api.report({"name": name, "value": 1, "type": "counter"})
        assert status == 200, body


def stored_ids(path: str) -> dict[SeriesKey, int]:
    with sqlite3.connect(path) as conn:
        series = read_series(conn, "default")
    conn.close()
    return {(s.tenant, s.name, s.tags): s.id for s in series}


def key(name: str) -> SeriesKey:
    return ("default", name, ())


async def test_ids_are_the_stores_after_a_restart_and_new_ones_continue_above(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path)
    clock = ManualClock()
    async with running(config, clock) as (gw, api):
        await report_counters(api, "a", "b", "c")
        first = {k: gw.registry.id_of(k) for k in map(key, "abc")}
        clock.advance(10)
        assert await gw.flusher.flush()
        assert stored_ids(config.storage.path) == first  # the store keeps the same ids
        # The middle series goes: the ids the store keeps have a gap, which a registry that
        # numbered the store's series itself would close.
        status, body = await api.request(
            "DELETE", "/v1/metrics", params={"name": "b"}, key=ADMIN_KEY
        )
        assert status == 200, body
        clock.advance(10)
        await report_counters(api, "a")
        rows = gw.aggregator.snapshot_rows(gw.aggregator.swap())
        assert rows.series is not None
        assert rows.series.tolist() == [first[key("a")]]  # the same id in a later interval
    stored = stored_ids(config.storage.path)
    assert set(stored) == {key("a"), key("c")}
    assert stored[key("c")] > stored[key("a")] + 1

    async with running(config, clock) as (gw, api):
        assert {k: gw.registry.id_of(k) for k in stored} == stored
        await report_counters(api, "d", "a", "b")
        rows = gw.aggregator.snapshot_rows(gw.aggregator.swap())
        assert rows.series is not None
        ids = dict(zip(rows.keys, rows.series.tolist(), strict=True))
        top = max(stored.values())
        assert ids == {key("d"): top + 1, key("a"): stored[key("a")], key("b"): top + 2}
