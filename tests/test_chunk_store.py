"""The SQLite store's chunks: closed windows sealed into compressed chunks give the same answers
as the rows they replace, late points for a sealed window merge exactly, retention drops whole
chunks, deletes and restarts see them, an old row-layout file is converted, and a damaged chunk
fails the read clearly. Real SQLite files throughout."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statsd_gateway import sketch
from statsd_gateway.errors import StoreError
from statsd_gateway.model import BucketRow, MetricType, RowBatch, SeriesKey
from statsd_gateway.store import SqliteStore
from statsd_gateway.store.base import FlushWrite, RowRead, StoredRows
from statsd_gateway.store.chunks import BUCKETS_PER_CHUNK, _column, encode_columns
from statsd_gateway.store.postgresql import PostgresStore
from statsd_gateway.store.rollup import merge_rows
from statsd_gateway.store.sealing import SealJob
from statsd_gateway.store.sqlite_files import give_back_free_pages
from statsd_gateway.telemetry import Telemetry
from tests.conftest import T0, ManualClock

# The tests of the `store` fixture run on both backends (tests/conftest.py).
STORE_BACKENDS = ("sqlite", "postgresql")

RES = (10.0,)  # one tier: its windows are complete up to its newest bucket
HOUR = 10.0 * BUCKETS_PER_CHUNK  # the finest tier's chunk window
LAT: list[SeriesKey] = [("default", "lat", (("host", f"h{i}"),)) for i in range(3)]
TEMP: SeriesKey = ("default", "temp", ())
USERS: SeriesKey = ("default", "users", ())
ALL = ("count", "sum", "min", "max", "last", "last_ts")


def rows_at(ts: float, rng: np.random.Generator) -> list[BucketRow]:
    """One bucket of every kind: timings with a sketch, a gauge, a set's HyperLogLog."""
    out = []
    for key in LAT:
        v = [float(x) for x in rng.integers(1, 500, int(rng.integers(1, 4)))]
        v[0] += 0.25  # a fraction: the float encoding as well as the integer one
        out.append(
            BucketRow(ts, key, MetricType.TIMING, len(v), sum(v), min(v), max(v),
                      sketch=sketch.bin_values(v))
        )  # fmt: skip
    g = float(rng.normal())
    out.append(BucketRow(ts, TEMP, MetricType.GAUGE, 1.0, g, g, g, g, ts + 3.5))
    members = [f"u{int(x)}" for x in rng.integers(0, 50, 3)]
    out.append(
        BucketRow(ts, USERS, MetricType.SET, 3.0, 3.0, None, None,
                  hll=sketch.hll_from_members(members))
    )  # fmt: skip
    return out


@pytest.fixture
def new_store(
    tmp_path: Path, storage_backend: str, request: pytest.FixtureRequest
) -> Callable[..., Any]:
    """Makes a store on the test's backend (STORE_BACKENDS), every one on the same file or
    database (a second one is the first reopened)."""
    dsn = request.getfixturevalue("postgres_dsn") if storage_backend == "postgresql" else None

    def make(resolutions: tuple[float, ...] = RES) -> Any:
        if dsn is None:
            return SqliteStore(tmp_path / "m.db", resolutions=resolutions, clock=ManualClock(T0))
        s = PostgresStore(dsn, source="gw", resolutions=resolutions, clock=ManualClock(T0))
        s.test_dsn = dsn  # type: ignore[attr-defined]
        return s

    return make


@pytest.fixture
async def store(new_store: Callable[..., Any]) -> AsyncIterator[Any]:
    """The store on each backend: both keep chunks of one format."""
    s = new_store()
    await s.open()
    yield s
    await s.close()


async def fill(store: SqliteStore, buckets: int, seed: int = 0, seq: int = 0) -> int:
    """`buckets` buckets of rows_at() from T0 on, in flushes of up to ten minutes of buckets
    (what is sealed and read depends on the rows, not on how many flushes brought them: a flush
    per bucket, each its own committed transaction, made these tests several times slower);
    returns the last flush's seq."""
    rng = np.random.default_rng(seed)
    for first in range(0, buckets, 60):
        rows = [
            r for b in range(first, min(first + 60, buckets)) for r in rows_at(T0 + 10 * b, rng)
        ]
        seq += 1
        await store.write_flush(FlushWrite(seq, RowBatch.from_rows(rows)))
    return seq


def read(name: str, until: float = T0 + 4 * HOUR) -> RowRead:
    return RowRead(
        "default", name, (), T0, until, None, values=ALL, sketches=True, hll=True,
        by_series=True,
    )  # fmt: skip


def answer(got: StoredRows) -> dict[str, object]:
    """Everything a read says, one entry per (series, bucket), merged as every consumer merges
    a bucket's rows (a bucket may sit in its chunk and in the head while a late point waits)."""
    c = got.cols
    assert c.series is not None
    keys = [(got.series[s].tags, t) for s, t in zip(c.series.tolist(), c.ts.tolist(), strict=True)]
    out: dict[tuple[object, float], list[object]] = {}
    sk_of = dict(zip(c.sketch_rows.tolist(), range(len(c.sketches)), strict=True))
    hll_of = dict(zip(c.hll_rows.tolist(), c.hlls, strict=True))
    for i, k in enumerate(keys):
        v: list[object] = [float(c.values[n][i]) for n in ALL]
        bins = c.sketches.bins(sk_of[i]) if i in sk_of else None
        hll = hll_of.get(i)
        if k in out:
            o = out[k]
            o[0] += v[0]  # type: ignore[operator]
            o[1] += v[1]  # type: ignore[operator]
            o[2] = float(np.fmin(o[2], v[2]))  # type: ignore[call-overload]
            o[3] = float(np.fmax(o[3], v[3]))  # type: ignore[call-overload]
            if bins is not None:
                o[6] = sketch.merge([o[6], bins]) if o[6] is not None else bins  # type: ignore[list-item]
            if hll is not None:
                o[7] = sketch.hll_merge_pair(o[7], hll)  # type: ignore[arg-type]
        else:
            out[k] = [*v, bins, hll]
    return {repr(k): [repr(x) for x in v] for k, v in sorted(out.items(), key=repr)}


def tables(store: Any) -> dict[str, int]:
    """Rows per head and chunk table."""
    if isinstance(store, PostgresStore):
        with psycopg.connect(store.test_dsn) as pg:
            names = pg.execute(
                "SELECT tablename FROM pg_tables WHERE tablename ~ '^(points|chunks)_[0-9]+m?s$'"
            ).fetchall()
            return {
                t: pg.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
                for (t,) in names
            }
    conn = sqlite3.connect(store.path)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {
            t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in names
            if t.startswith(("points_", "chunks_"))
        }
    finally:
        conn.close()


async def test_sealing_keeps_every_answer_and_leaves_only_the_open_window_in_the_head(
    store: SqliteStore,
) -> None:
    await fill(store, 2 * BUCKETS_PER_CHUNK + 30)  # two whole windows and 5 minutes
    before = {m: answer(await store.read_rows(read(m))) for m in ("lat", "temp", "users")}
    sealed = await store.seal_chunks()
    assert sealed == 2 * BUCKETS_PER_CHUNK * 5  # 5 series, two complete windows each
    assert {m: answer(await store.read_rows(read(m))) for m in before} == before
    counts = tables(store)
    assert counts["chunks_10s"] == 2 * 5  # a chunk per series and window
    assert counts["points_10s"] == 30 * 5  # the open window stays in the head
    assert await store.seal_chunks() == 0  # nothing complete is left


async def test_a_late_point_for_a_sealed_window_is_merged_exactly(store: SqliteStore) -> None:
    seq = await fill(store, BUCKETS_PER_CHUNK + 1)
    await store.seal_chunks()
    late = BucketRow(T0 + 20, LAT[0], MetricType.TIMING, 1.0, 9999.5, 9999.5, 9999.5,
                     sketch=sketch.bin_values([9999.5]))  # fmt: skip
    await store.write_flush(FlushWrite(seq + 1, RowBatch.from_rows([late])))
    got = await store.read_rows(read("lat", T0 + 30))
    with_late = answer(got)
    mine = [v for k, v in with_late.items() if "'h0'" in k and "1764172820.0" in k]
    assert mine and mine[0][3] == "9999.5"  # the max of that bucket is the late point
    assert await store.seal_chunks() == 1  # merged into its chunk, rewritten
    assert answer(await store.read_rows(read("lat", T0 + 30))) == with_late
    assert tables(store)["chunks_10s"] == 5  # still one chunk per series and window
    raw = await store.read_rows(read("lat", T0 + 30))
    assert len(raw.cols) == 3 * 3  # one row per bucket again: 3 buckets of 3 series


async def test_the_open_window_is_sealed_ten_minutes_at_a_time(store: SqliteStore) -> None:
    """What is complete of the open window moves into its chunk in 10-minute steps, the chunk
    rewritten at each; the head keeps less than a step, and every answer stays the same."""
    if isinstance(store, PostgresStore):
        pytest.skip("SQLite only: PostgreSQL seals whole windows (its head is not a B-tree)")
    step = 60  # buckets of 10 s in 10 minutes
    seq = await fill(store, 2 * BUCKETS_PER_CHUNK + 2 * step + 10)  # two windows, 2 steps, 10
    before = {m: answer(await store.read_rows(read(m))) for m in ("lat", "temp", "users")}
    assert await store.seal_chunks() == (2 * BUCKETS_PER_CHUNK + 2 * step) * 5
    assert {m: answer(await store.read_rows(read(m))) for m in before} == before
    assert tables(store) == {"points_10s": 10 * 5, "chunks_10s": 3 * 5}
    rng = np.random.default_rng(9)
    for b in range(2 * BUCKETS_PER_CHUNK + 2 * step + 10, 2 * BUCKETS_PER_CHUNK + 3 * step + 5):
        seq += 1
        await store.write_flush(FlushWrite(seq, RowBatch.from_rows(rows_at(T0 + 10 * b, rng))))
    before = {m: answer(await store.read_rows(read(m))) for m in before}
    assert await store.seal_chunks() == step * 5  # the third step, into the same chunks
    assert {m: answer(await store.read_rows(read(m))) for m in before} == before
    assert tables(store) == {"points_10s": 5 * 5, "chunks_10s": 3 * 5}
    conn = sqlite3.connect(store.path)
    try:
        open_window = T0 + 2 * HOUR
        rows = conn.execute("SELECT rows FROM chunks_10s WHERE start = ?", (open_window,))
        assert [r for (r,) in rows] == [3 * step] * 5
    finally:
        conn.close()


async def test_retention_drops_whole_chunks_only_once_their_window_has_aged_out(
    store: SqliteStore,
) -> None:
    await fill(store, 2 * BUCKETS_PER_CHUNK + 1)
    await store.seal_chunks()
    # Mid-window: the first chunk holds buckets younger than the cutoff, so it stays whole.
    assert await store.delete_expired(10.0, T0 + HOUR / 2) == 0
    assert len((await store.read_rows(read("temp", T0 + HOUR))).cols) == BUCKETS_PER_CHUNK
    assert await store.delete_expired(10.0, T0 + HOUR) == BUCKETS_PER_CHUNK * 5
    assert tables(store)["chunks_10s"] == 5
    assert len((await store.read_rows(read("temp"))).cols) == BUCKETS_PER_CHUNK + 1


async def test_an_admin_delete_removes_the_series_chunks(store: SqliteStore) -> None:
    await fill(store, BUCKETS_PER_CHUNK + 1)
    await store.seal_chunks()
    assert await store.delete_series([TEMP]) == (1, BUCKETS_PER_CHUNK + 1)
    assert len((await store.read_rows(read("temp"))).cols) == 0
    assert tables(store)["chunks_10s"] == 4


async def test_chunks_are_read_after_a_restart_and_by_the_rollup_rebuild(
    new_store: Callable[..., Any],
) -> None:
    first = new_store()
    await first.open()
    await fill(first, BUCKETS_PER_CHUNK + 6)
    before = answer(await first.read_rows(read("lat")))
    await first.seal_chunks()
    await first.close()
    again = new_store()
    state = await again.open()
    try:
        assert {s.name for s in state.series} == {"lat", "temp", "users"}
        assert answer(await again.read_rows(read("lat"))) == before
        rebuilt = await again.read_for_rebuild(10.0, T0 + HOUR - 20)  # sealed and head rows
        assert sorted(set(rebuilt.ts.tolist())) == [T0 + HOUR - 20 + 10 * i for i in range(8)]
        assert len(rebuilt) == 8 * 5
    finally:
        await again.close()


async def test_a_row_layout_file_keeps_working_and_is_converted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, storage_backend: str
) -> None:
    if storage_backend != "sqlite":
        pytest.skip("SQLite only: the conversion of a file of the previous release")
    path = tmp_path / "m.db"
    old = SqliteStore(path, resolutions=RES, clock=ManualClock(T0))
    await old.open()
    await fill(old, BUCKETS_PER_CHUNK + 3)
    before = {m: answer(await old.read_rows(read(m))) for m in ("lat", "temp", "users")}
    await old.close()
    # What the previous release left: schema 3, rows only, no chunk tables.
    conn = sqlite3.connect(path)
    conn.executescript(
        "DROP TABLE chunks_10s;UPDATE meta SET value='3' WHERE key='schema_version';"
    )
    conn.close()
    upgraded = SqliteStore(path, resolutions=RES, clock=ManualClock(T0))
    await upgraded.open()
    try:
        assert {m: answer(await upgraded.read_rows(read(m))) for m in before} == before
        assert await upgraded.seal_chunks() == BUCKETS_PER_CHUNK * 5
        assert {m: answer(await upgraded.read_rows(read(m))) for m in before} == before
        version = (
            sqlite3.connect(path)
            .execute("SELECT value FROM meta WHERE key='schema_version'")
            .fetchone()[0]
        )
        assert version == "4"
    finally:
        await upgraded.close()


async def test_a_damaged_chunk_fails_the_read_as_the_store_not_as_the_query(
    store: SqliteStore,
) -> None:
    await fill(store, BUCKETS_PER_CHUNK + 1)
    await store.seal_chunks()
    if isinstance(store, PostgresStore):
        with psycopg.connect(store.test_dsn) as pg:
            pg.execute("UPDATE chunks_10s SET data = substring(data for length(data) / 2)")
    else:
        conn = sqlite3.connect(store.path)
        blob = conn.execute("SELECT data FROM chunks_10s LIMIT 1").fetchone()[0]
        conn.execute("UPDATE chunks_10s SET data = ?", (blob[: len(blob) // 2],))
        conn.commit()
        conn.close()
    with pytest.raises(StoreError, match="stored chunk is damaged"):
        await store.read_rows(read("lat"))


async def test_coarse_tiers_seal_where_they_are_complete_and_the_finest_where_the_next_is(
    new_store: Callable[..., Any],
) -> None:
    """Two tiers written as the flusher writes them (the minute rollups and how far the minute
    tier is complete, with each flush): each tier is sealed up to its complete windows, and a
    read through either tier answers the same as before."""
    store = new_store((10.0, 60.0))
    await store.open()
    try:
        rng = np.random.default_rng(3)
        minute: list[BucketRow] = []
        for b in range(2 * BUCKETS_PER_CHUNK + 12):
            ts = T0 + 10 * b
            rows = rows_at(ts, rng)
            minute += rows
            rollups, until = {}, {}
            if (b + 1) % 6 == 0:  # a minute completes: its rollup rows, and how far
                rollups = {60.0: merge_rows(RowBatch.from_rows(minute), 60.0)}
                until = {60.0: ts + 10}
                minute = []
            await store.write_flush(
                FlushWrite(b + 1, RowBatch.from_rows(rows), rollups=rollups, complete_until=until)
            )
        fine = RowRead("default", "lat", (), T0, T0 + 3 * HOUR, 10.0, values=ALL,
                       sketches=True, by_series=True)  # fmt: skip
        coarse = RowRead("default", "lat", (), T0, T0 + 3 * HOUR, 60.0, values=ALL,
                         sketches=True, by_series=True)  # fmt: skip
        before = [answer(await store.read_rows(r)) for r in (fine, coarse)]
        # T0 is 16:00; the minute tier's 6 h windows start at 12:00 and 18:00, and it is
        # complete until 18:02: its first window (T0's two hours of it) is sealed, and the
        # finest tier's two hours, complete where the minute tier is.
        assert await store.seal_chunks() == (2 * BUCKETS_PER_CHUNK + 120) * 5
        assert [answer(await store.read_rows(r)) for r in (fine, coarse)] == before
        counts = tables(store)
        assert counts["chunks_10s"] == 2 * 5 and counts["points_10s"] == 12 * 5
        assert counts["chunks_60s"] == 5 and counts["points_60s"] == 2 * 5
    finally:
        await store.close()


async def test_the_sealing_task_counts_what_it_seals_and_waits_out_a_back_fill(
    store: SqliteStore,
) -> None:
    telemetry = Telemetry()
    job = SealJob(store, telemetry, interval=10.0)
    await fill(store, BUCKETS_PER_CHUNK + 1)
    telemetry.pressure_flushes += 1  # the memory bound flushed early: points are pouring in
    assert await job.run_once() == 0
    assert tables(store)["chunks_10s"] == 0
    assert await job.run_once() == BUCKETS_PER_CHUNK * 5  # quiet since the last run
    assert telemetry.sealed_buckets == BUCKETS_PER_CHUNK * 5
    assert "statsd_gateway_sealed_buckets_total 1800.0" in telemetry.render().decode()


_EDGES = [np.nan, -0.0, 0.0, 1.5, 255.0, 256.0, -128.0, 65535.0, 2.0**32, 2.0**53 - 1, 2.0**53,
          -(2.0**53) + 1, 1e300, -1e-300, np.inf, -np.inf, 1.7e9]  # fmt: skip
_SEGMENT = st.one_of(
    st.lists(st.integers(-(2**20), 2**20).map(float), max_size=12),  # small integers
    st.lists(st.integers(0, 2**53).map(float), max_size=12),  # wide ones
    st.lists(st.sampled_from(_EDGES), max_size=12),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=12),
    st.integers(0, 12).map(lambda k: [float("nan")] * k),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_SEGMENT, min_size=1, max_size=8))
def test_every_column_of_a_chunk_encodes_in_one_pass_as_it_does_alone(
    segments: list[list[float]],
) -> None:
    """encode_columns, the pass over all of a batch's columns of one kind, gives every
    segment's bytes exactly as _column, the encoding the format describes, gives them alone."""
    parts = [np.asarray(p, dtype=np.float64) for p in segments]
    lengths = np.array([p.size for p in parts], dtype=np.int64)
    got = encode_columns(np.concatenate(parts), lengths)
    assert got == [_column(p) for p in parts]


def test_free_pages_are_given_back_as_many_as_asked(tmp_path: Path) -> None:
    """What sealing and retention leave free is given back in steps of many pages (a call
    that freed one page would leave a back-fill's sealed head rows in the file for hours)."""
    conn = sqlite3.connect(tmp_path / "f.db", isolation_level=None)
    try:
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("CREATE TABLE t(x BLOB)")
        conn.executemany("INSERT INTO t VALUES (?)", [(b"x" * 3000,)] * 600)
        conn.execute("DELETE FROM t")

        def free() -> int:
            return int(conn.execute("PRAGMA freelist_count").fetchone()[0])

        before = free()
        assert before >= 500
        give_back_free_pages(conn, 100)
        assert free() == before - 100
        give_back_free_pages(conn, 10**6)
        assert free() == 0
    finally:
        conn.close()
