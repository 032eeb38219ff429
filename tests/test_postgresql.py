"""The PostgreSQL backend where it differs from SQLite: many gateways on one database, a
server that goes away and comes back, the schema shared by gateways of different releases.

Every test runs real gateways (in-process, on the manual clock) against a real server the tests
started (tests/postgres.py), and reads the answers through the HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp import ClientSession

from statsd_gateway.config import Config, config_from_dict
from statsd_gateway.errors import ConfigError
from statsd_gateway.gateway import Gateway
from statsd_gateway.model import TAG_VALUE_MAX, TAGS_MAX
from statsd_gateway.store.pg_connect import safe_dsn
from statsd_gateway.store.postgresql import PostgresStore
from statsd_gateway.store.schema import SchemaError
from tests.conftest import ADMIN_KEY, T0, Api, ManualClock, make_config
from tests.daemon import Daemon, generated_key, poll_value, write_config
from tests.postgres import PostgresCluster, running_cluster
from tests.test_exporter import samples, scrape

HOUR = 3600.0


def pg_config(tmp_path: Path, dsn: str, source: str) -> Config:
    return make_config(
        tmp_path / source,
        storage={
            "backend": "postgresql",
            "postgresql": {"dsn": dsn, "source": source, "connect_timeout": "3s"},
        },
    )


@contextlib.asynccontextmanager
async def gateways(
    configs: Sequence[Config], clock: ManualClock
) -> AsyncIterator[list[tuple[Gateway, Api]]]:
    """The gateways started, each with an Api; stopped at the end."""
    started: list[tuple[Gateway, Api]] = []
    async with ClientSession() as session:
        try:
            for cfg in configs:
                gw = Gateway(cfg, clock=clock, flush_on_ticks=False)
                await gw.start()
                assert gw.http_address is not None
                started.append((gw, Api(session, "http://{}:{}".format(*gw.http_address))))
            yield started
        finally:
            for gw, _ in started:
                await gw.stop()


def points(host: str, n: int, offset: float) -> list[dict[str, Any]]:
    """n timings, counts, set members and gauges from `host` over T0's first 10 minutes
    (values in quarters: their sums are exact in any order)."""
    out: list[dict[str, Any]] = []
    for i in range(n):
        tags = {"host": host, "route": f"/r{i % 3}"}
        t = T0 + i * 7 % 600
        out += [
            {"name": "api.temp", "type": "gauge", "value": offset + i, "tags": {"route": "/r0"},
             "timestamp": t + 0.5 + offset / 1000},
            {"name": "api.latency", "type": "timing", "value": offset + i * 0.25, "tags": tags,
             "timestamp": t},
            {"name": "api.hits", "type": "counter", "value": 1 + i % 5, "tags": tags,
             "timestamp": t},
            {"name": "api.users", "type": "set", "value": f"u{i % 40}", "tags": tags,
             "timestamp": t},
        ]  # fmt: skip
    return out


QUERIES: list[dict[str, str]] = [
    *(
        {"name": "api.latency", "agg": agg, "window": w}
        for agg in ("p50", "p99", "count", "sum", "min", "max", "avg")
        for w in ("1m", "10m")
    ),
    {"name": "api.latency", "agg": "p99", "window": "1m", "group_by": "route"},
    {"name": "api.latency", "agg": "p50", "window": "10m", "tags": "route:/r1"},
    {"name": "api.hits", "agg": "sum", "window": "1m", "group_by": "host"},
    {"name": "api.users", "agg": "count", "window": "10m"},
    {"name": "api.temp", "agg": "last", "window": "1m"},
    {"name": "api.temp", "agg": "max", "window": "1h"},
    {"name": "api.latency", "agg": "p99", "window": "1h"},
]
PROMQL = [
    "histogram_quantile(0.99, sum by (le) (rate(api_latency_bucket[10m])))",
    "sum by (route) (increase(api_hits[10m]))",
]


async def answers(api: Api) -> list[Any]:
    out = []
    for q in QUERIES:
        status, body = await api.query(since=str(int(T0)), until=str(int(T0 + HOUR)), **q)
        assert status == 200, (q, body)
        out.append(body.get("points", body.get("series")))
    for expr in PROMQL:
        status, body = await api.request(
            "GET", "/api/v1/query", params={"query": expr, "time": str(T0 + 600)}
        )
        assert status == 200, body
        out.append(sorted(map(str, body["data"]["result"])))
    return out


async def test_three_gateways_answer_as_one_that_received_everything(
    tmp_path: Path, postgres_cluster: PostgresCluster
) -> None:
    shared = postgres_cluster.fresh_database()
    alone = postgres_cluster.fresh_database()
    clock = ManualClock(T0 + 700)
    hosts = {"a": 0.0, "b": 50.0, "c": 200.0}
    configs = [pg_config(tmp_path, shared, f"gw-{h}") for h in hosts]
    configs.append(pg_config(tmp_path, alone, "gw-all"))
    async with gateways(configs, clock) as started:
        *three, (_, one) = started
        for (host, offset), (_, api) in zip(hosts.items(), three, strict=True):
            batch = points(host, 200, offset)
            assert (await api.batch(batch))[0] == 200
            assert (await one.batch(batch))[0] == 200
        # gw-c flushes now and stops: its hour stays open (its rollups complete to T0+700),
        # so its rows of that hour are read from the minute tier, the others' from the hourly.
        c_gw = started[2][0]
        assert await c_gw.flusher.flush(force=True)
        c_gw.flusher.flush = _never  # type: ignore[method-assign]
        clock.advance(HOUR)
        for gw, _ in started:
            assert await gw.flusher.flush(force=True)
        with psycopg.connect(shared) as conn:  # two groups of sources, each read its way
            hourly = conn.execute(
                "SELECT DISTINCT until FROM complete_until WHERE resolution = 3600 ORDER BY 1"
            ).fetchall()
        assert hourly == [(T0,), (T0 + HOUR,)]
        want = await answers(one)
        assert all(want), "every query answers something"
        for _, api in three:
            assert await answers(api) == want  # any gateway: every host's data, merged exactly


async def _never(force: bool = False) -> bool:
    return True


async def test_a_type_conflict_between_gateways_sets_the_series_aside(
    tmp_path: Path, postgres_dsn: str
) -> None:
    clock = ManualClock(T0 + 60)
    configs = [pg_config(tmp_path, postgres_dsn, s) for s in ("gw-a", "gw-b")]
    async with gateways(configs, clock) as [(a_gw, a), (b_gw, b)]:
        assert (await a.report({"name": "jobs", "type": "counter", "value": 3}))[0] == 200
        assert await a_gw.flusher.flush(force=True)
        # gw-b has not seen `jobs`: its registry admits a gauge; the store refuses it.
        assert (await b.report({"name": "jobs", "type": "gauge", "value": 9}))[0] == 200
        assert (await b.report({"name": "other", "type": "counter", "value": 1}))[0] == 200
        assert await b_gw.flusher.flush(force=True)  # the rest of the flush is written
        clock.advance(30)
        status, body = await a.query(name="other", agg="sum")
        assert status == 404  # gw-b's new metric: known to gw-a from its next flush on
        assert await a_gw.flusher.flush(force=True)
        status, body = await a.query(name="jobs", agg="sum")
        assert (status, body["points"][0]["value"]) == (200, 3)
        status, body = await a.query(name="other", agg="sum")
        assert (status, body["points"][0]["value"]) == (200, 1)
        assert b_gw.telemetry.flush_quarantined_series == 1


async def test_a_retry_reaching_another_gateway_is_applied_once(
    tmp_path: Path, postgres_dsn: str
) -> None:
    clock = ManualClock(T0 + 60)
    configs = [pg_config(tmp_path, postgres_dsn, s) for s in ("gw-a", "gw-b")]
    body = {"points": [{"name": "paid", "type": "counter", "value": 5}], "idempotency_key": "k1"}
    async with gateways(configs, clock) as [(a_gw, a), (b_gw, b)]:
        status, first = await a.request("POST", "/v1/metrics/batch", json=body)
        assert status == 200, first
        # Before gw-a has flushed: gw-b cannot know the answer yet, and must not apply it.
        status, early = await b.request("POST", "/v1/metrics/batch", json=body)
        assert (status, early["error"]["code"]) == (409, "IDEMPOTENCY_KEY_IN_PROGRESS")
        assert await a_gw.flusher.flush(force=True)
        status, again = await b.request("POST", "/v1/metrics/batch", json=body)
        assert (status, again["replayed"]) == (200, True)
        assert {k: v for k, v in again.items() if k != "replayed"} == first
        other = {**body, "points": [{"name": "paid", "type": "counter", "value": 6}]}
        status, reused = await b.request("POST", "/v1/metrics/batch", json=other)
        assert (status, reused["error"]["code"]) == (409, "IDEMPOTENCY_KEY_REUSED")
        assert await b_gw.flusher.flush(force=True)
        clock.advance(30)
        status, q = await b.query(name="paid", agg="sum")
        assert (status, q["points"][0]["value"]) == (200, 5)


async def test_ten_gateways_starting_at_once_make_one_schema(
    postgres_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock(T0)
    stores = [PostgresStore(postgres_dsn, source=f"gw-{i}", clock=clock) for i in range(10)]
    with caplog.at_level(logging.INFO, "statsd_gateway.store"):
        states = await asyncio.gather(*(s.open() for s in stores))
    try:
        assert all(st.flushed_seq == 0 for st in states)
        migrated = [r for r in caplog.records if "from version 0 to" in r.getMessage()]
        assert len(migrated) == 1
        with psycopg.connect(postgres_dsn) as conn:
            sources = conn.execute("SELECT name FROM sources ORDER BY name").fetchall()
        assert [s for (s,) in sources] == sorted(f"gw-{i}" for i in range(10))
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_an_older_gateway_refuses_a_newer_schema(postgres_dsn: str) -> None:
    store = PostgresStore(postgres_dsn, source="gw", clock=ManualClock(T0))
    await store.open()
    await store.close()
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    old = PostgresStore(postgres_dsn, source="gw", clock=ManualClock(T0))
    with pytest.raises(SchemaError, match="schema version 99, newer than this release's"):
        await old.open()
    await old.close()


def test_a_password_is_never_in_a_message() -> None:
    dsn = "postgresql://metrics:s3cret-pw@db.internal:5432/statsd?sslmode=require"
    shown = safe_dsn(dsn)
    assert "s3cret-pw" not in shown and "db.internal" in shown and "metrics" in shown
    assert "s3cret" not in safe_dsn("host=db password=s3cret dbname=statsd")


async def test_a_server_outage_keeps_the_data_and_readyz_says_so(tmp_path: Path) -> None:
    with running_cluster() as cluster:
        assert cluster is not None
        dsn = cluster.fresh_database()
        clock = ManualClock(T0 + 60)
        async with gateways([pg_config(tmp_path, dsn, "gw")], clock) as [(gw, api)]:
            assert (await api.report({"name": "paid", "type": "counter", "value": 2}))[0] == 200
            assert await gw.flusher.flush(force=True)
            cluster.stop()
            try:
                status, _ = await api.report({"name": "paid", "type": "counter", "value": 3})
                assert status == 200  # the write-ahead log holds it; memory counts it
                clock.advance(10)
                assert not await gw.flusher.flush(force=True)
                status, ready = await api.request("GET", "/readyz")
                assert status == 503 and "last flush failed" in str(ready), ready
                status, q = await api.query(name="paid", agg="sum")
                assert status == 503, q  # the store cannot be read: said, not a wrong sum
            finally:
                cluster.restart()
            clock.advance(10)
            assert await gw.flusher.flush(force=True)
            status, ready = await api.request("GET", "/readyz")
            assert status == 200, ready
            clock.advance(30)
            status, q = await api.query(name="paid", agg="sum", window="1h")
            assert (status, q["points"][0]["value"]) == (200, 5)


@pytest.mark.parametrize(
    ("postgresql", "key", "said"),
    [
        ({"dsn": "host=db password=s3cret dbname"}, "storage.postgresql.dsn", "not a libpq"),
        ({"password_file": "/nonexistent/pw"}, "storage.postgresql.password_file", "cannot be"),
        ({"pool_size": 0}, "storage.postgresql.pool_size", ""),
        ({"dns": "x"}, "storage.postgresql.dns", ""),
    ],
)
def test_a_bad_postgresql_setting_is_a_config_error_naming_it(
    postgresql: dict[str, Any], key: str, said: str
) -> None:
    raw = {"storage": {"backend": "postgresql", "postgresql": postgresql}}
    with pytest.raises(ConfigError) as e:
        config_from_dict(raw)
    assert key in str(e.value) and said in str(e.value)
    assert "s3cret" not in str(e.value)


def test_a_200_survives_kill_9_in_front_of_postgresql(
    tmp_path: Path, postgres_dsn: str, daemons: list[Daemon]
) -> None:
    """The daemon as a subprocess: a batch answered 200, the daemon killed before any flush,
    started again: the write-ahead log brings the points to PostgreSQL, once."""
    state = tmp_path / "state"
    path = tmp_path / "gw.yaml"

    write_config(path, state, flush_interval="1h")  # no tick flushes before the kill
    text = path.read_text(encoding="utf-8")
    path.write_text(
        text.replace(
            "storage:\n",
            f"storage:\n  backend: postgresql\n  postgresql:\n    dsn: {postgres_dsn}\n"
            "    source: gw-kill\n",
        ),
        encoding="utf-8",
    )
    d = Daemon(path)
    daemons.append(d)
    key = generated_key(state)
    batch = {"points": [{"name": "paid", "type": "counter", "value": 7}]}
    status, body, _ = d.request("POST", "/v1/metrics/batch", key, batch)
    assert (status, body["accepted"]) == (200, 1)
    d.kill()  # SIGKILL: no final flush
    with psycopg.connect(postgres_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM series WHERE name = 'paid'").fetchone() == (0,)
    again = Daemon(path)
    daemons.append(again)
    poll_value(again, key, 7, name="paid", agg="sum", since="-1d")
    assert again.terminate() == 0
    with psycopg.connect(postgres_dsn) as conn:
        stored = conn.execute(
            "SELECT sum(p.sum), sum(p.count) FROM points_3600s p "
            "JOIN series s ON s.id = p.series_id WHERE s.name = 'paid'"
        ).fetchone()
    assert stored == (7.0, 1.0)  # replayed once, not doubled


async def test_a_metric_has_one_type_across_gateways_whatever_its_tags(
    tmp_path: Path, postgres_dsn: str
) -> None:
    clock = ManualClock(T0 + 60)
    configs = [pg_config(tmp_path, postgres_dsn, s) for s in ("gw-a", "gw-b")]
    async with gateways(configs, clock) as [(a_gw, a), (b_gw, b)]:
        point = {"name": "jobs", "type": "counter", "value": 3, "tags": {"host": "a"}}
        assert (await a.report(point))[0] == 200
        assert await a_gw.flusher.flush(force=True)
        other = {"name": "jobs", "type": "gauge", "value": 9, "tags": {"host": "b"}}
        assert (await b.report(other))[0] == 200  # gw-b has not learnt `jobs` yet
        assert await b_gw.flusher.flush(force=True)
        assert b_gw.telemetry.flush_quarantined_series == 1  # refused by the store
        clock.advance(30)
        for api in (a, b):
            status, body = await api.query(name="jobs", agg="sum", window="1h")
            assert (status, [p["value"] for p in body["points"]]) == (200, [3]), body
        with psycopg.connect(postgres_dsn) as conn:
            stored = conn.execute("SELECT DISTINCT type FROM series WHERE name = 'jobs'")
            assert stored.fetchall() == [("counter",)]


async def test_a_series_with_tags_too_long_for_an_index_entry_is_stored(
    tmp_path: Path, postgres_dsn: str
) -> None:
    clock = ManualClock(T0 + 60)
    tags = {f"k{i:02d}": f"{i:02d}" + "v" * (TAG_VALUE_MAX - 2) for i in range(TAGS_MAX)}
    async with gateways([pg_config(tmp_path, postgres_dsn, "gw")], clock) as [(gw, api)]:
        point = {"name": "wide", "type": "counter", "value": 2, "tags": tags}
        assert (await api.report(point))[0] == 200
        assert await gw.flusher.flush(force=True)
        assert gw.telemetry.flush_quarantined_series == 0
        clock.advance(30)
        status, body = await api.query(name="wide", agg="sum", window="1h")
        assert (status, body["points"][0]["value"]) == (200, 2)


async def test_two_processes_cannot_write_as_one_source(postgres_dsn: str) -> None:
    first = PostgresStore(postgres_dsn, source="gw", clock=ManualClock(T0))
    await first.open()
    try:
        second = PostgresStore(postgres_dsn, source="gw", clock=ManualClock(T0))
        with pytest.raises(SchemaError, match="another gateway is running as source 'gw'"):
            await second.open()
        other = PostgresStore(postgres_dsn, source="gw-2", clock=ManualClock(T0))
        await other.open()  # another source is fine
        await other.close()
    finally:
        await first.close()


async def test_a_server_that_turned_read_only_is_an_outage_not_bad_data(
    tmp_path: Path, postgres_dsn: str
) -> None:
    """After a failover to a read-only server (or a privilege revoked) every write fails:
    kept and retried, never set aside or dropped as if the data were at fault."""
    clock = ManualClock(T0 + 60)
    admin, database = postgres_dsn.rsplit("/", 1)

    def read_only(on: bool) -> None:
        with psycopg.connect(admin + "/postgres", autocommit=True) as conn:
            conn.execute(
                f'ALTER DATABASE "{database}" SET default_transaction_read_only = '
                + ("on" if on else "off")
            )
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name LIKE 'statsd-gateway%%'"
            )

    async with gateways([pg_config(tmp_path, postgres_dsn, "gw")], clock) as [(gw, api)]:
        assert (await api.report({"name": "paid", "type": "counter", "value": 2}))[0] == 200
        read_only(True)
        try:
            for _ in range(4):  # past the tries after which bad data is dropped
                clock.advance(10)
                assert not await gw.flusher.flush(force=True)
            assert gw.telemetry.flush_quarantined_series == 0
        finally:
            read_only(False)
        clock.advance(10)
        assert await gw.flusher.flush(force=True)
        clock.advance(30)
        status, q = await api.query(name="paid", agg="sum", window="1h")
        assert (status, q["points"][0]["value"]) == (200, 2)


async def test_a_metric_deleted_through_one_gateway_is_gone_from_every_gateway(
    tmp_path: Path, postgres_dsn: str
) -> None:
    clock = ManualClock(T0 + 5)
    configs = [pg_config(tmp_path, postgres_dsn, s) for s in ("gw-a", "gw-b")]
    async with gateways(configs, clock) as [(a_gw, a), (b_gw, b)]:
        for api in (a, b):
            assert (await api.report({"name": "jobs", "type": "counter", "value": 2}))[0] == 200
        for gw in (a_gw, b_gw):
            assert await gw.flusher.flush(force=True)  # each holds an open minute of `jobs`
        status, body = await a.request(
            "DELETE", "/v1/metrics", params={"name": "jobs"}, key=ADMIN_KEY
        )
        assert status == 200, body
        clock.advance(HOUR)  # gw-b's minute and hour complete: they must not bring it back
        for gw in (b_gw, a_gw):
            assert await gw.flusher.flush(force=True)
        for api in (a, b):
            status, body = await api.query(name="jobs", agg="sum", since=str(int(T0)))
            assert (status, body["error"]["code"]) == (404, "METRIC_NOT_FOUND"), body
        with psycopg.connect(postgres_dsn) as conn:
            assert conn.execute("SELECT count(*) FROM series").fetchone() == (0,)


def _ctid(text: str) -> tuple[int, int]:
    page, item = text.strip("()").split(",")
    return int(page), int(item)


TIED = {"name": "temp", "type": "gauge", "timestamp": T0 + 2}


async def _write_tied(gw: Gateway, api: Api, value: float) -> None:
    assert (await api.report({**TIED, "value": value}))[0] == 200
    assert await gw.flusher.flush(force=True)


async def _fill(gw: Gateway, api: Api) -> None:
    """100 rows written (by `_free`, deleted and vacuumed: the next row written after that
    takes the first free place in the heap, before the rows written after these)."""
    fillers = [
        {"name": "filler", "type": "counter", "value": 1, "tags": {"i": str(i)}} for i in range(100)
    ]
    assert (await api.request("POST", "/v1/metrics/batch", json={"points": fillers}))[0] == 200
    assert await gw.flusher.flush(force=True)


async def _free(api: Api, dsn: str) -> None:
    status, body = await api.request(
        "DELETE", "/v1/metrics", params={"name": "filler"}, key=ADMIN_KEY
    )
    assert status == 200, body
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM points_10s")


async def _tied_later_first_in_heap(gw: Gateway, api: Api, dsn: str) -> None:
    """temp = 1, then temp = 2 at the same time in a later flush, the later row placed
    before the earlier one in the heap (in space VACUUM freed)."""
    await _fill(gw, api)
    await _write_tied(gw, api, 1)
    await _free(api, dsn)
    await _write_tied(gw, api, 2)
    places = _heap_places(dsn)
    assert places[2.0] < places[1.0], places  # the case itself


def _heap_places(dsn: str) -> dict[float, tuple[int, int]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT last, ctid::text FROM points_10s").fetchall()
    return {last: _ctid(place) for last, place in rows}


async def _last_of_bucket(api: Api) -> list[Any]:
    status, body = await api.query(
        name="temp", agg="last", window="10s", since=str(int(T0)), until=str(int(T0 + 10))
    )
    assert status == 200, body
    return [p["value"] for p in body["points"]]


async def test_on_equal_times_the_later_written_gauge_wins_where_vacuum_reused_space(
    tmp_path: Path, postgres_dsn: str
) -> None:
    """Two gauge points of one bucket at one time, sent in two flushes: the later is the
    bucket's `last`, as SQLite answers, also when the server stored it in space VACUUM freed
    before the earlier row (the heap's order is not the write order), and once sealed."""
    clock = ManualClock(T0 + 5)
    async with gateways([pg_config(tmp_path, postgres_dsn, "gw")], clock) as [(gw, api)]:
        await _tied_later_first_in_heap(gw, api, postgres_dsn)
        assert await _last_of_bucket(api) == [2]
        clock.advance(2 * HOUR)  # the window completes; its rows are sealed into a chunk
        assert await gw.flusher.flush(force=True)
        assert await gw.store.seal_chunks() > 0
        with psycopg.connect(postgres_dsn) as conn:
            head = conn.execute("SELECT count(*) FROM points_10s WHERE ts < %s", (T0 + 10,))
            assert head.fetchone() == (0,)
        assert await _last_of_bucket(api) == [2]


async def test_a_restart_rebuilds_the_open_minute_in_write_order(
    tmp_path: Path, postgres_dsn: str
) -> None:
    """The open minute rebuilt at start from the 10 s rows keeps the later write's `last` on
    equal times, whatever their places in the heap: the minute written at its end says 2."""
    clock = ManualClock(T0 + 5)
    config = pg_config(tmp_path, postgres_dsn, "gw")
    async with gateways([config], clock) as [(gw, api)]:
        await _tied_later_first_in_heap(gw, api, postgres_dsn)
    async with gateways([config], clock) as [(gw, api)]:  # rebuilds the open minute
        clock.advance(2 * HOUR)
        assert await gw.flusher.flush(force=True)
        with psycopg.connect(postgres_dsn) as conn:
            minute = conn.execute(
                "SELECT p.last FROM points_60s p JOIN series s ON s.id = p.series_id "
                "WHERE s.name = 'temp'"
            ).fetchall()
        assert minute == [(2.0,)]


async def test_a_schema_1_database_is_migrated_and_its_rows_count_as_written_first(
    tmp_path: Path, postgres_dsn: str
) -> None:
    """A database a gateway of schema 1 wrote (no write order): opened by this release, it is
    brought to the current schema, its rows are read as before, and a point written now wins
    `last` over one of the same time written then, though the heap holds it first."""
    clock = ManualClock(T0 + 5)
    config = pg_config(tmp_path, postgres_dsn, "gw")
    async with gateways([config], clock) as [(gw, api)]:
        await _fill(gw, api)
        await _write_tied(gw, api, 1)
        await _free(api, postgres_dsn)
    with psycopg.connect(postgres_dsn) as conn:  # as schema 1 left it
        for table in ("points_10s", "points_60s", "points_3600s"):
            conn.execute(f"ALTER TABLE {table} DROP COLUMN written")
        conn.execute("DROP SEQUENCE write_order")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    async with gateways([config], clock) as [(gw, api)]:
        with psycopg.connect(postgres_dsn) as conn:
            version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'")
            assert version.fetchone() == ("2",)
            assert conn.execute("SELECT written FROM points_10s").fetchall() == [(0,)]
        assert await _last_of_bucket(api) == [1]
        await _write_tied(gw, api, 2)
        places = _heap_places(postgres_dsn)
        assert places[2.0] < places[1.0], places
        assert await _last_of_bucket(api) == [2]


async def test_a_metric_deleted_through_another_gateway_restarts_on_this_ones_scrape(
    tmp_path: Path, postgres_dsn: str
) -> None:
    """gw-b scrapes what it receives; a delete through gw-a reaches gw-b's scrape at its next
    flush, which then shows only what arrived since, though points of it were in gw-b's
    memory when it learnt of the delete."""
    clock = ManualClock(T0 + 5)
    a_config = pg_config(tmp_path, postgres_dsn, "gw-a")
    b_config = make_config(
        tmp_path / "gw-b",
        storage={
            "backend": "postgresql",
            "postgresql": {"dsn": postgres_dsn, "source": "gw-b", "connect_timeout": "3s"},
        },
        exporter={"enabled": True, "listen": "127.0.0.1:0"},
    )
    async with gateways([a_config, b_config], clock) as [(a_gw, a), (b_gw, b)]:
        assert (await b.report({"name": "jobs", "type": "counter", "value": 3}))[0] == 200
        assert await b_gw.flusher.flush(force=True)
        assert samples((await scrape(b_gw))[1])["jobs"] == 3
        assert await a_gw.flusher.flush(force=True)  # gw-a learns of jobs
        assert (await b.report({"name": "jobs", "type": "counter", "value": 2}))[0] == 200
        status, body = await a.request(
            "DELETE", "/v1/metrics", params={"name": "jobs"}, key=ADMIN_KEY
        )
        assert status == 200, body
        clock.advance(30)
        assert await b_gw.flusher.flush(force=True)  # learns of the delete, writes the 2
        assert samples((await scrape(b_gw))[1])["jobs"] == 2
