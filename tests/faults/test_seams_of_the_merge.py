"""Where two of the fault mechanisms meet: each case was found by a review of the merged change
and fails on the code before its fix."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

from statsd_gateway.aggregator import IntervalAggregator
from statsd_gateway.api.schemas import parse_point
from statsd_gateway.ingest import LoggedBody
from statsd_gateway.model import BucketRow, MetricType, RowBatch, Sample
from statsd_gateway.protocol import sanitise_name
from statsd_gateway.series_registry import SeriesRegistry
from statsd_gateway.store import SqliteStore
from statsd_gateway.store.base import FlushWrite
from statsd_gateway.store.sqlite import StoreGone
from statsd_gateway.wal import WalError, WriteAheadLog
from tests.conftest import KEY, T0, ManualClock, make_config, run_sync, running

HITS = ("default", "hits", ())


def test_a_commit_into_a_file_removed_mid_write_is_not_counted_as_stored(
    tmp_path: Path,
) -> None:
    path = tmp_path / "data" / "metrics.db"
    store = SqliteStore(path)
    run_sync(store.open())
    writer = store._writer
    upsert = writer._upsert

    def upsert_then_remove(*args: object) -> None:
        upsert(*args)  # type: ignore[arg-type]
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)

    writer._upsert = upsert_then_remove  # type: ignore[method-assign]
    row = BucketRow(T0, HITS, MetricType.COUNTER, 1.0, 5.0, 5.0, 5.0)
    try:
        run_sync(store.write_flush(FlushWrite(7, RowBatch.from_rows([row]))))
    except StoreGone:
        pass
    else:
        raise AssertionError("the write into the unlinked file counted as stored")
    finally:
        writer._upsert = upsert  # type: ignore[method-assign]
    # The retry: the new file.
    assert run_sync(store.write_flush(FlushWrite(7, RowBatch.from_rows([row]))))
    assert run_sync(store.flushed_seq()) == 7
    run_sync(store.close())


async def test_the_barrier_after_a_record_that_failed_alone_reports_it(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path / "wal")
    wal.replay(0)
    wal.start()
    wrote = asyncio.Event()
    loop = asyncio.get_running_loop()
    write = wal._write

    def full(seq: int, record: bytes) -> None:
        loop.call_soon_threadsafe(wrote.set)
        raise OSError(28, "No space left on device")

    wal._write = full  # type: ignore[method-assign]
    wal.append(5, {"k": "body", "n": 1}, b"{}")
    await wrote.wait()  # the worker has taken the record alone, before any barrier
    wal._write = write  # type: ignore[method-assign]
    try:
        await wal.barrier()
    except WalError:
        pass
    else:
        raise AssertionError("a barrier reported success for a record that was cut back")
    await wal.barrier()  # reported once: the log works again
    await asyncio.to_thread(wal.stop)
    assert WriteAheadLog(tmp_path / "wal").replay(0) == []


async def test_a_gauge_write_landing_in_a_swapped_snapshot_keeps_its_current_value(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    config = make_config(tmp_path)
    async with running(config, clock) as (gw, api):
        await api.report({"name": "level", "type": "gauge", "value": 10})
        clock.advance(10)
        assert await gw.flusher.flush()
        point = {"name": "level", "type": "gauge", "value": 50}
        logged = LoggedBody("report", json.dumps(point).encode(), [0], 1)
        sample = parse_point(point, sanitise=sanitise_name)
        gw.ingest.samples("default", [sample], "http", logged=logged)
        gw.aggregator.swap()  # a flush swaps while the write waits for its log fsync
        gw.ingest.commit(logged)
        clock.advance(10)
        assert await gw.flusher.flush()
    again = SqliteStore(gw.store.path)  # type: ignore[attr-defined]
    stored = (await again.open()).gauges
    await again.close()
    assert stored[("default", "level", ())][0] == 50


def test_a_series_deleted_and_sent_again_counts_once_in_a_query() -> None:
    clock = ManualClock()
    agg = IntervalAggregator(interval=10, clock=clock, registry=SeriesRegistry(),
                             max_series_per_tenant=100, max_backdate=86400)  # fmt: skip
    point = Sample("hits", (), MetricType.COUNTER, 1.0, 1.0, None, False)
    agg.add_samples("default", [point])
    agg.discard({HITS})  # the admin delete; its flush has not swapped yet
    agg.add_samples("default", [point])  # a UDP point in the same bucket
    rows = agg.metric_in_memory("default", "hits").rows(0, 0.0, math.inf, lambda tags: True)
    assert rows.sum.tolist() == [1.0]


async def test_a_lone_surrogate_in_a_body_with_an_idempotency_key_is_a_400(
    tmp_path: Path,
) -> None:
    async with running(make_config(tmp_path), ManualClock()) as (_, api):
        point = '{"name": "a", "value": 1, "tags": {"k": "\\ud800"}}'
        body = '{"points": [' + point + '], "idempotency_key": "k1"}'
        status, answer = await api.request(
            "POST",
            "/v1/metrics/batch",
            key=KEY,
            data=body,
            headers={"Content-Type": "application/json"},
        )
        assert status == 200, answer  # the batch is answered; the bad point by index
        assert [e["index"] for e in answer["errors"]] == [0]
