"""The Store protocol's rules (store/base.py), held by every backend: the same calls against the
SQLite store on a real file and against the in-memory store give the same answers."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from statsd_gateway import sketch
from statsd_gateway.model import BucketRow, Matcher, MatchOp, MetricType, RowBatch
from statsd_gateway.store import SqliteStore, Store
from statsd_gateway.store.base import FlushWrite, IdempotencyRecord, RowRead
from statsd_gateway.store.memory import MemoryStore
from statsd_gateway.store.postgresql import PostgresStore
from tests.conftest import T0, ManualClock

RES = (10.0, 60.0)
EU = ("default", "lat", (("region", "eu"),))
US = ("default", "lat", (("env", "prod"), ("region", "us")))
BARE = ("default", "lat", ())


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture(params=["sqlite", "postgresql", "memory"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock
) -> AsyncIterator[Store]:
    s: Store
    if request.param == "sqlite":
        s = SqliteStore(tmp_path / "m.db", resolutions=RES, clock=clock)
    elif request.param == "postgresql":
        dsn = request.getfixturevalue("postgres_dsn")
        s = PostgresStore(dsn, source="gw-a", resolutions=RES, clock=clock)
    else:
        s = MemoryStore(resolutions=RES, clock=clock)
    await s.open()
    yield s
    await s.close()


def timing(
    ts: float, key: tuple[str, str, tuple[tuple[str, str], ...]], *values: float
) -> BucketRow:
    return BucketRow(
        ts, key, MetricType.TIMING, float(len(values)), float(sum(values)), min(values),
        max(values), sketch=sketch.bin_values(list(values)),
    )  # fmt: skip


def gauge(ts: float, value: float, at: float) -> BucketRow:
    key = ("default", "temp", ())
    return BucketRow(ts, key, MetricType.GAUGE, 1.0, value, value, value, value, at)


def read(name: str = "lat", *matchers: Matcher, **kw: object) -> RowRead:
    return RowRead("default", name, tuple(matchers), T0, T0 + 3600, None, **kw)  # type: ignore[arg-type]


async def test_a_flush_is_stored_once_and_a_stored_seq_is_ignored(store: Store) -> None:
    rows = RowBatch.from_rows([timing(T0, EU, 1.0, 2.0)])
    assert await store.write_flush(FlushWrite(3, rows))
    assert not await store.write_flush(FlushWrite(3, rows))  # a retry: nothing done
    assert not await store.write_flush(FlushWrite(2, rows))
    got = await store.read_rows(read(values=("count",)))
    assert got.flushed_seq == 3 == await store.flushed_seq()
    assert got.cols.values["count"].tolist() == [2.0]


async def test_a_bucket_stored_already_is_merged_with(store: Store) -> None:
    await store.write_flush(FlushWrite(1, RowBatch.from_rows([timing(T0, EU, 1.0, 2.0)])))
    await store.write_flush(FlushWrite(2, RowBatch.from_rows([timing(T0, EU, 9.0)])))
    await store.write_flush(FlushWrite(3, RowBatch.from_rows([gauge(T0, 5.0, T0 + 2)])))
    await store.write_flush(FlushWrite(4, RowBatch.from_rows([gauge(T0, 7.0, T0 + 1)])))
    got = await store.read_rows(read(values=("count", "sum", "min", "max"), sketches=True))
    assert [got.cols.values[c].tolist() for c in ("count", "sum", "min", "max")] == [
        [3.0], [12.0], [1.0], [9.0],
    ]  # fmt: skip
    assert got.cols.sketches.bins(0) == sketch.bin_values([1.0, 2.0, 9.0])
    last = await store.read_rows(read("temp", values=("last", "last_ts")))
    # The later write's value is older: the stored `last` keeps the latest time's.
    assert last.cols.values["last"].tolist() == [5.0]
    assert last.cols.values["last_ts"].tolist() == [T0 + 2]


async def test_a_trial_write_leaves_nothing_behind(store: Store) -> None:
    rows = RowBatch.from_rows([timing(T0, EU, 1.0)])
    assert await store.write_flush(FlushWrite(5, rows), trial=True)
    assert await store.flushed_seq() == 0
    assert len((await store.read_rows(read())).cols) == 0


async def test_matchers_select_series_with_prometheus_semantics(store: Store) -> None:
    rows = [timing(T0, k, 1.0) for k in (EU, US, BARE)]
    await store.write_flush(FlushWrite(1, RowBatch.from_rows(rows)))

    async def tags_of(*matchers: Matcher) -> list[dict[str, str]]:
        got = await store.read_rows(read("lat", *matchers, by_series=True))
        assert got.cols.series is not None
        found = {got.series[i].tags for i in set(got.cols.series.tolist())}
        return [dict(t) for t in sorted(found)]

    assert await tags_of(Matcher("region", MatchOp.EQUAL, "eu")) == [{"region": "eu"}]
    # A tag a series lacks is "": != selects it, = "" selects only it.
    assert await tags_of(Matcher("env", MatchOp.NOT_EQUAL, "prod")) == [{}, {"region": "eu"}]
    assert await tags_of(Matcher("env", MatchOp.EQUAL, "")) == [{}, {"region": "eu"}]
    assert await tags_of(Matcher("region", MatchOp.REGEX, "e.")) == [{"region": "eu"}]
    assert await tags_of(Matcher("region", MatchOp.REGEX, "u")) == []  # anchored
    assert len(await tags_of(Matcher("region", MatchOp.NOT_REGEX, "eu|us"))) == 1
    present = Matcher("region", MatchOp.REGEX, ".*", present=True)
    assert len(await tags_of(present)) == 2
    assert await store.tag_values("default", "region", "lat") == {"eu": 1, "us": 1}
    series = await store.series("default", "lat", [Matcher("env", MatchOp.EQUAL, "prod")])
    assert [s.tags for s in series] == [US[2]]


async def test_reads_pick_the_coarse_tier_where_it_is_complete(store: Store) -> None:
    fine = [timing(T0 + 10 * i, EU, float(i + 1)) for i in range(12)]
    minute = [timing(T0, EU, *[float(i + 1) for i in range(6)])]
    await store.write_flush(
        FlushWrite(
            1,
            RowBatch.from_rows(fine),
            rollups={60.0: RowBatch.from_rows(minute)},
            complete_until={60.0: T0 + 60},
        )
    )
    got = await store.read_rows(
        RowRead("default", "lat", (), T0, T0 + 120, 60.0, values=("count", "sum"))
    )
    # One 1-minute row for the first minute, six 10 s rows for the second.
    assert got.cols.ts.tolist() == [T0, *(T0 + 60 + 10 * i for i in range(6))]
    assert float(np.sum(got.cols.values["count"])) == 12.0


async def test_rows_are_handed_on_off_the_loop_and_what_then_raises_is_raised(
    store: Store,
) -> None:
    """read_rows_then gives `then` what read_rows answers, on another thread than the loop's
    (the reduction must not stall it), and raises what `then` raises."""
    await store.write_flush(FlushWrite(1, RowBatch.from_rows([timing(T0, EU, 1.0, 2.0)])))
    seen: list[tuple[int, int, list[float]]] = []

    def then(rows: Any) -> str:
        seen.append((threading.get_ident(), rows.flushed_seq, rows.cols.values["sum"].tolist()))
        return "reduced"

    assert await store.read_rows_then(read(values=("sum",)), then) == "reduced"
    assert [(seq, sums) for _, seq, sums in seen] == [(1, [3.0])]
    assert seen[0][0] != threading.get_ident()

    def fails(rows: Any) -> None:
        raise ZeroDivisionError("in then")

    with pytest.raises(ZeroDivisionError, match="in then"):
        await store.read_rows_then(read(values=("sum",)), fails)


async def test_the_sketch_budget_is_asked_before_any_row_is_read(store: Store) -> None:
    await store.write_flush(FlushWrite(1, RowBatch.from_rows([timing(T0, EU, 1.0)])))
    asked: list[int] = []

    def budget(n: int) -> None:
        asked.append(n)
        raise OverflowError("too many")

    with pytest.raises(OverflowError):
        await store.read_rows(read(sketches=True, sketch_budget=budget))
    assert asked == [360]  # one series × 360 ten-second buckets in the hour


async def test_state_for_a_start_idempotency_and_deletes(store: Store) -> None:
    record = IdempotencyRecord("default", "k1", "sha", 200, '{"ok":true}', T0)
    old = IdempotencyRecord("default", "k0", "sha", 200, '{"ok":true}', T0 - 100_000)
    await store.write_flush(FlushWrite(1, RowBatch.from_rows([]), idempotency=[old]))
    await store.write_flush(
        FlushWrite(
            2,
            RowBatch.from_rows([timing(T0, EU, 1.0), gauge(T0, 4.0, T0 + 1)]),
            gauges={("default", "temp", ()): (4.0, T0 + 1)},
            idempotency=[record],
            idempotency_expire_before=T0 - 1000,
        )
    )
    state = await store.open()
    assert state.flushed_seq == 2
    assert state.gauges == {("default", "temp", ()): (4.0, T0 + 1)}
    assert {(s.name, s.type) for s in state.series} == {
        ("lat", MetricType.TIMING), ("temp", MetricType.GAUGE),
    }  # fmt: skip
    got = await store.idempotency_record("default", "k1")
    assert got is not None and (got.body_sha256, got.status) == ("sha", 200)
    assert await store.idempotency_record("default", "k0") is None  # expired
    assert await store.delete_expired(10.0, T0 + 1) == 2
    assert len((await store.read_rows(read())).cols) == 0
    assert await store.delete_series([EU]) == (1, 0)
    assert [s.name for s in await store.series("default")] == ["temp"]


async def test_rows_read_back_for_the_rollup_rebuild(store: Store) -> None:
    rows = [timing(T0 + 10 * i, EU, float(i)) for i in range(3)]
    await store.write_flush(FlushWrite(1, RowBatch.from_rows(rows)))
    batch = await store.read_for_rebuild(10.0, T0 + 10)
    assert sorted(batch.ts.tolist()) == [T0 + 10, T0 + 20]
    assert set(batch.keys) == {EU}


async def test_series_are_listed_by_name_then_tags_never_by_id(store: Store) -> None:
    a = ("default", "lat", (("a", "x"),))
    ab = ("default", "lat", (("a", "x"), ("b", "y")))
    api = ("default", "api", (("z", "1"),))
    # Written in this order, so the ids run BARE, a, ab, api.
    await store.write_flush(
        FlushWrite(1, RowBatch.from_rows([timing(T0, k, 1.0) for k in (BARE, a, ab, api)]))
    )
    # By the tags' JSON text: '{"a":"x","b":"y"}' < '{"a":"x"}' < '{}'.
    listed = [(s.name, s.tags) for s in await store.series("default")]
    assert listed == [api[1:], ab[1:], a[1:], BARE[1:]]
    got = await store.read_rows(read(by_series=True))
    assert [s.tags for s in got.series] == [ab[2], a[2], BARE[2]]


async def test_a_series_deleted_can_be_stored_again_under_its_key(store: Store) -> None:
    await store.write_flush(
        FlushWrite(1, RowBatch.from_rows([timing(T0, EU, 1.0), timing(T0, US, 2.0)]))
    )
    assert await store.delete_series([EU]) == (1, 1)
    assert await store.write_flush(FlushWrite(2, RowBatch.from_rows([timing(T0 + 10, EU, 7.0)])))
    got = await store.read_rows(read(values=("sum",), by_series=True))
    assert got.cols.series is not None
    columns = (got.cols.series.tolist(), got.cols.ts.tolist(), got.cols.values["sum"].tolist())
    rows = {(got.series[p].tags, ts, v) for p, ts, v in zip(*columns, strict=True)}
    # The old EU row is gone, the new one is there.
    assert rows == {(EU[2], T0 + 10, 7.0), (US[2], T0, 2.0)}
    assert sorted(s.tags for s in await store.series("default")) == sorted([EU[2], US[2]])


async def test_stale_series_are_forgotten_and_recent_ones_kept(
    store: Store, clock: ManualClock
) -> None:
    await store.write_flush(
        FlushWrite(1, RowBatch.from_rows([timing(T0, EU, 1.0), timing(T0, US, 1.0)]))
    )
    clock.advance(1000)
    await store.write_flush(FlushWrite(2, RowBatch.from_rows([timing(T0 + 1000, US, 2.0)])))
    # Both were created before the horizon; only US was written since.
    assert await store.forget_stale_series(T0 + 500) == [EU]
    assert [s.tags for s in await store.series("default")] == [US[2]]
    assert await store.forget_stale_series(T0 + 500) == []


async def test_the_memory_store_can_be_down() -> None:
    from statsd_gateway.errors import StoreError

    store = MemoryStore(resolutions=RES)
    store.outage = StoreError("down")
    with pytest.raises(StoreError):
        await store.write_flush(FlushWrite(1, RowBatch.from_rows([timing(T0, EU, 1.0)])))
    store.outage = None
    assert await store.write_flush(FlushWrite(1, RowBatch.from_rows([timing(T0, EU, 1.0)])))


WRITES: dict[str, Callable[[Store], Awaitable[object]]] = {
    "write_flush": lambda s: s.write_flush(FlushWrite(2, RowBatch.from_rows([]))),
    "write_rollups": lambda s: s.write_rollups({}, {60.0: T0 + 60}),
    "delete_series": lambda s: s.delete_series([EU]),
    "delete_expired": lambda s: s.delete_expired(10.0, T0 + 3600),
    "forget_stale_series": lambda s: s.forget_stale_series(T0 + 3600),
}


@pytest.mark.parametrize("write", sorted(WRITES))
async def test_every_write_of_the_memory_store_raises_its_outage(write: str) -> None:
    from statsd_gateway.errors import StoreError

    clock = ManualClock(T0)
    store = MemoryStore(resolutions=RES, clock=clock)
    await store.write_flush(FlushWrite(1, RowBatch.from_rows([timing(T0, EU, 1.0)])))
    clock.advance(7200)
    store.outage = StoreError("down")
    with pytest.raises(StoreError, match="down"):
        await WRITES[write](store)
    # Nothing was done: the series and its row are still there.
    store.outage = None
    assert [s.tags for s in await store.series("default")] == [EU[2]]
    assert len((await store.read_rows(read())).cols) == 1
