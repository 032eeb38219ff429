"""SqliteStore on real files: schema, round trips, merging buckets on disk, foreign files."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from statsd_gateway import sketch
from statsd_gateway.model import BucketRow, MetricType, SeriesKey
from statsd_gateway.store import SqliteStore, StoreError
from statsd_gateway.store.schema import SCHEMA_VERSION
from statsd_gateway.store.sqlite_reads import read_columns, read_flushed_seq, read_series
from tests.conftest import T0, run_sync, write_rows

LAT: SeriesKey = ("default", "api.latency", (("env", "prod"), ("region", "eu")))
TEMP: SeriesKey = ("default", "temp", (("host", "a"),))
HITS: SeriesKey = ("default", "hits", ())
USERS: SeriesKey = ("default", "users", (("canary", ""),))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "metrics.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(db_path)
    run_sync(s.open())
    try:
        yield s
    finally:
        run_sync(s.close())


def timing(ts: float, values: Sequence[float], weights: Sequence[float] | None = None) -> BucketRow:
    w = list(weights) if weights is not None else [1.0] * len(values)
    return BucketRow(
        ts=ts,
        key=LAT,
        type=MetricType.TIMING,
        count=sum(w),
        sum=sum(v * x for v, x in zip(values, w, strict=True)),
        min=min(values),
        max=max(values),
        sketch=sketch.bin_values(values, weights),
    )


def gauge(ts: float, values: Sequence[float], last_ts: float) -> BucketRow:
    return BucketRow(
        ts=ts,
        key=TEMP,
        type=MetricType.GAUGE,
        count=float(len(values)),
        sum=sum(values),
        min=min(values),
        max=max(values),
        last=values[-1],
        last_ts=last_ts,
        sketch=sketch.bin_values(values),
    )


def counter(ts: float, total: float, count: float) -> BucketRow:
    return BucketRow(ts=ts, key=HITS, type=MetricType.COUNTER, count=count, sum=total, min=1, max=2)


def members(ts: float, names: Sequence[str]) -> BucketRow:
    return BucketRow(
        ts=ts,
        key=USERS,
        type=MetricType.SET,
        count=float(len(names)),
        sum=0.0,
        min=None,
        max=None,
        hll=sketch.hll_from_members(names),
    )


async def write(store: SqliteStore, rows: list[BucketRow], flushed_seq: int | None = None) -> None:
    await write_rows(store, rows, flushed_seq)


async def read_all(
    store: SqliteStore, name: str | None = None
) -> dict[tuple[float, str], BucketRow]:
    """Every row of the finest tier, as the store reads them back to rebuild its rollups."""
    batch = await store.read_for_rebuild(store.resolutions[0], 0.0)
    rows = [r for r in batch.rows() if name is None or r.key[1] == name]
    out = {(r.ts, r.key[1]): r for r in rows}
    assert len(out) == len(rows)
    return out


def assert_same_bins(a: sketch.Bins | None, b: sketch.Bins | None) -> None:
    assert a is not None and b is not None
    np.testing.assert_array_equal(a.pos_keys, b.pos_keys)
    np.testing.assert_array_equal(a.pos_counts, b.pos_counts)
    np.testing.assert_array_equal(a.neg_keys, b.neg_keys)
    np.testing.assert_array_equal(a.neg_counts, b.neg_counts)
    assert a.zero == b.zero


def assert_same_row(got: BucketRow, want: BucketRow) -> None:
    assert (got.ts, got.key, got.type) == (want.ts, want.key, want.type)
    assert (got.count, got.sum, got.min, got.max) == (want.count, want.sum, want.min, want.max)
    assert (got.last, got.last_ts) == (want.last, want.last_ts)
    if want.sketch is None:
        assert got.sketch is None
    else:
        assert_same_bins(got.sketch, want.sketch)
    assert got.hll == want.hll


# --- schema ----------------------------------------------------------------------------------


def test_open_creates_the_schema(store: SqliteStore, db_path: Path) -> None:
    assert db_path.is_file()
    with sqlite3.connect(db_path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
    conn.close()
    assert {"meta", "series", "points_10s", "points_60s", "points_3600s"} <= tables
    assert meta["schema_version"] == str(SCHEMA_VERSION)
    assert meta["sketch_format"] == f"{sketch.FORMAT}:mapping={sketch.MAPPING_ID}"
    assert meta["flushed_seq"] == "0"
    assert journal == "wal"


def test_the_wal_is_checkpointed_between_writes_and_stays_small(
    store: SqliteStore, db_path: Path
) -> None:
    """Checkpoints run after each commit on a thread of their own, so the WAL starts over
    instead of growing to SQLite's automatic threshold (4 MB) inside a flush."""
    wal = db_path.with_name(db_path.name + "-wal")
    sizes = []
    for i in range(20):
        rows = [
            BucketRow(T0 + 10 * i, ("default", f"m{j}", ()), MetricType.TIMING, 3.0, 6.0, 1.0,
                      3.0, sketch=sketch.bin_values([1.0, 2.0, 3.0 + j]))
            for j in range(1000)
        ]  # fmt: skip
        run_sync(write_rows(store, rows))
        store._writer.checkpoints.wait()  # the queued checkpoint has run
        sizes.append(wal.stat().st_size)
    one_write = sizes[0]
    assert max(sizes) < 3 * one_write < 800_000, sizes
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM points_10s").fetchone()[0] == 20_000
    conn.close()


def test_open_of_a_new_database_knows_no_series(db_path: Path) -> None:
    s = SqliteStore(db_path)
    try:
        state = run_sync(s.open())
        assert state.series == [] and state.flushed_seq == 0
    finally:
        run_sync(s.close())


# --- round trips -----------------------------------------------------------------------------


async def test_rows_read_back_as_written(store: SqliteStore) -> None:
    rows = [
        timing(T0, [1.5, 2.0, 250.0, -3.0, 0.0]),
        timing(T0 + 10, [4.0, 8.0], weights=[10.0, 1 / 0.3]),
        gauge(T0, [21.5, 22.0, 19.0], last_ts=T0 + 7.5),
        counter(T0, 18.0, 13.0),
        members(T0, ["alice", "bob", "carol"]),
    ]
    await write(store, rows)
    got = await read_all(store)
    assert sorted(got) == sorted((r.ts, r.key[1]) for r in rows)
    for r in rows:
        assert_same_row(got[(r.ts, r.key[1])], r)
    assert sketch.hll_estimate(got[(T0, "users")].hll or b"") == pytest.approx(3, abs=0.01)


async def test_series_are_stored_with_type_and_tags(store: SqliteStore) -> None:
    await write(store, [timing(T0, [1.0]), members(T0, ["x"])])

    def fn(conn: sqlite3.Connection) -> dict[str, tuple[SeriesKey, MetricType]]:
        return {s.name: ((s.tenant, s.name, s.tags), s.type) for s in read_series(conn, "default")}

    assert await store.run_read(fn) == {
        "api.latency": (LAT, MetricType.TIMING),
        "users": (USERS, MetricType.SET),
    }
    assert await store.run_read(lambda c: read_series(c, "other-tenant")) == []


async def test_read_columns_respects_the_time_range(store: SqliteStore) -> None:
    await write(store, [counter(T0 + i * 10, 1.0, 1.0) for i in range(6)])

    def fn(conn: sqlite3.Connection) -> list[float]:
        cols = read_columns(conn, read_series(conn, "default"), T0 + 10, T0 + 40)
        return sorted(cols.ts.tolist())

    assert await store.run_read(fn) == [T0 + 10, T0 + 20, T0 + 30]


# --- merging a bucket already on disk --------------------------------------------------------


async def test_second_write_of_a_bucket_merges_timing(store: SqliteStore) -> None:
    a, b = timing(T0, [1.0, 2.0, 3.0]), timing(T0, [2.0, 50.0, 0.25])
    await write(store, [a])
    await write(store, [b])
    got = (await read_all(store))[(T0, "api.latency")]
    assert (got.count, got.sum, got.min, got.max) == (6.0, 58.25, 0.25, 50.0)
    assert_same_bins(got.sketch, sketch.merge([a.sketch, b.sketch]))  # type: ignore[list-item]


async def test_merge_of_weighted_sketches_is_bit_identical(store: SqliteStore) -> None:
    a = timing(T0, [1.0, 7.0, 7.1], weights=[1 / 0.3, 1 / 0.3, 1.0])
    b = timing(T0, [7.0, 900.0], weights=[1 / 0.7, 1 / 0.7])
    await write(store, [a])
    await write(store, [b])
    got = (await read_all(store))[(T0, "api.latency")]
    assert got.count == a.count + b.count
    assert_same_bins(got.sketch, sketch.merge([a.sketch, b.sketch]))  # type: ignore[list-item]


async def test_second_write_of_a_bucket_merges_counter(store: SqliteStore) -> None:
    await write(store, [counter(T0, 18.0, 13.0)])
    await write(store, [counter(T0, 2.0, 1.0)])
    got = (await read_all(store))[(T0, "hits")]
    assert (got.count, got.sum) == (14.0, 20.0)


@pytest.mark.parametrize(
    ("first_last_ts", "second_last_ts", "last"),
    [
        pytest.param(T0 + 2, T0 + 8, 7.0, id="later write is newer"),
        pytest.param(T0 + 8, T0 + 2, 5.0, id="later write is older"),
    ],
)
async def test_second_write_of_a_bucket_merges_gauge(
    store: SqliteStore, first_last_ts: float, second_last_ts: float, last: float
) -> None:
    a = gauge(T0, [3.0, 5.0], last_ts=first_last_ts)
    b = gauge(T0, [9.0, 7.0], last_ts=second_last_ts)
    await write(store, [a])
    await write(store, [b])
    got = (await read_all(store))[(T0, "temp")]
    assert (got.count, got.sum, got.min, got.max) == (4.0, 24.0, 3.0, 9.0)
    assert got.last == last
    assert got.last_ts == T0 + 8
    assert_same_bins(got.sketch, sketch.merge([a.sketch, b.sketch]))  # type: ignore[list-item]


async def test_second_write_of_a_bucket_merges_set(store: SqliteStore) -> None:
    await write(store, [members(T0, ["alice", "bob", "carol"])])
    await write(store, [members(T0, ["carol", "dave"])])
    got = (await read_all(store))[(T0, "users")]
    assert got.count == 5.0
    assert got.hll is not None
    assert sketch.hll_estimate(got.hll) == pytest.approx(4, abs=0.01)


async def test_merge_with_a_bucket_written_before_a_restart(db_path: Path) -> None:
    a, b = timing(T0, [1.0, 2.0]), timing(T0, [3.0])
    first = SqliteStore(db_path)
    await first.open()
    try:
        await write(first, [a])
    finally:
        await first.close()
    second = SqliteStore(db_path)
    await second.open()
    try:
        await write(second, [b])
        got = (await read_all(second))[(T0, "api.latency")]
    finally:
        await second.close()
    assert (got.count, got.sum, got.min, got.max) == (3.0, 6.0, 1.0, 3.0)
    assert_same_bins(got.sketch, sketch.merge([a.sketch, b.sketch]))  # type: ignore[list-item]


# --- durability and flushed_seq --------------------------------------------------------------


async def test_data_survives_close_and_reopen(db_path: Path) -> None:
    rows = [timing(T0, [1.0, 2.0, 40.0]), gauge(T0, [1.0], T0 + 1), members(T0, ["a", "b"])]
    first = SqliteStore(db_path)
    await first.open()
    try:
        await write(first, rows, flushed_seq=3)
    finally:
        await first.close()
    second = SqliteStore(db_path)
    try:
        known = (await second.open()).series
        assert {(s.tenant, s.name, s.tags): s.type for s in known} == {
            LAT: MetricType.TIMING,
            TEMP: MetricType.GAUGE,
            USERS: MetricType.SET,
        }
        assert await second.flushed_seq() == 3
        got = await read_all(second)
    finally:
        await second.close()
    for r in rows:
        assert_same_row(got[(r.ts, r.key[1])], r)


async def test_flushed_seq_is_stored_with_the_rows(store: SqliteStore) -> None:
    await write(store, [counter(T0, 1.0, 1.0)], flushed_seq=7)
    assert await store.flushed_seq() == 7
    assert await store.run_read(read_flushed_seq) == 7
    await write(store, [counter(T0 + 10, 1.0, 1.0)])
    assert await store.flushed_seq() == 7
    await write(store, [], flushed_seq=8)
    assert await store.flushed_seq() == 8


# --- files that are not ours -----------------------------------------------------------------


def open_fails(path: Path) -> StoreError:
    s = SqliteStore(path)
    try:
        with pytest.raises(StoreError) as e:
            run_sync(s.open())
    finally:
        run_sync(s.close())
    return e.value


def test_non_sqlite_file_is_refused_and_left_alone(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    content = b"these are my notes, not a database\n" * 200
    db_path.write_bytes(content)
    err = open_fails(db_path)
    assert str(db_path) in str(err)
    assert "not a database" in str(err)
    assert db_path.read_bytes() == content


def test_foreign_sqlite_database_is_refused_and_left_alone(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as conn:
        conn.execute("CREATE TABLE users(id INTEGER PRIMARY KEY, email TEXT)")
        conn.execute("INSERT INTO users(email) VALUES ('a@example.com')")
    conn.close()
    err = open_fails(db_path)
    assert "not a statsd-gateway" in str(err)
    with sqlite3.connect(db_path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert tables == {"users"}


def test_newer_schema_version_is_refused(db_path: Path) -> None:
    s = SqliteStore(db_path)
    run_sync(s.open())
    run_sync(s.close())
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),)
        )
    conn.close()
    err = open_fails(db_path)
    assert f"schema version {SCHEMA_VERSION + 1}" in str(err)
    assert "upgrade" in str(err)
