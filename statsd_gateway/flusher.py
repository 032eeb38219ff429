"""Aligned flush ticks: swap the live interval, finish it off the loop, write it, release it.

A flush is swap → finish → write → release, each timed. A failed write is logged and counted; the
snapshot stays pending (queries still see it) and is retried on the next tick, oldest first. At
most `max_pending` snapshots wait: past that the oldest is dropped and counted, so memory stays
bounded while the store is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable

from statsd_gateway.aggregator import IntervalAggregator, Snapshot, finish_snapshot
from statsd_gateway.idempotency import TTL_SECONDS, IdempotencyLedger
from statsd_gateway.model import RowBatch
from statsd_gateway.store import SqliteStore
from statsd_gateway.store.rollup import TierRollup
from statsd_gateway.store.sqlite import IdempotencyRecord
from statsd_gateway.telemetry import Telemetry
from statsd_gateway.wal import WriteAheadLog

log = logging.getLogger(__name__)


class Flusher:
    def __init__(
        self,
        aggregator: IntervalAggregator,
        store: SqliteStore,
        telemetry: Telemetry,
        *,
        clock: Callable[[], float] = time.time,
        max_pending_rows: int = 1_000_000,
        max_backoff: float = 300.0,
        ledger: IdempotencyLedger | None = None,
        wal: WriteAheadLog | None = None,
        rollup: TierRollup | None = None,
    ) -> None:
        self.rollup = rollup
        self.ledger = ledger
        self.wal = wal
        self.aggregator = aggregator
        self.store = store
        self.telemetry = telemetry
        self.clock = clock
        self.max_pending_rows = max_pending_rows
        self.max_backoff = max_backoff
        self.failures = 0
        self._retry_at = -math.inf
        self.last_flush_ok: float | None = None
        self.last_error: str | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def seconds_to_next_tick(self) -> float:
        i = self.aggregator.interval
        now = self.clock()
        return (math.floor(now / i) + 1) * i - now

    async def run(self) -> None:
        """Flushes at every wall-clock multiple of the interval until cancelled."""
        while True:
            await asyncio.sleep(self.seconds_to_next_tick())
            await self.flush()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="flusher")

    async def stop(self) -> None:
        """Stops the ticks, after any flush in progress has finished (cancelling a flush while
        the writer thread commits it would leave the snapshot to be written twice)."""
        if self._task is not None:
            async with self._lock:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def flush(self, *, force: bool = False) -> bool:
        """Swaps the live interval and writes every pending snapshot, oldest first. True if all
        were written. After a failure, writes wait out an exponential backoff (interval, 2×, 4×…
        up to max_backoff) unless `force` (the final flush at stop)."""
        async with self._lock:
            self.aggregator.swap()
            self._bound_pending()
            if not force and self.clock() < self._retry_at:
                return False
            for snap in self.aggregator.pending:
                if not await self._write(snap):
                    self.failures += 1
                    delay = min(
                        self.aggregator.interval * 2 ** (self.failures - 1), self.max_backoff
                    )
                    self._retry_at = self.clock() + delay
                    return False
            self.failures = 0
            self._retry_at = -math.inf
            return True

    def _bound_pending(self) -> None:
        """Past the bound, the oldest snapshots are dropped and counted: memory stays bounded
        however long the store is down."""
        pending = self.aggregator.pending
        rows = sum(s.series_count() for s in pending)
        while len(pending) > 1 and rows > self.max_pending_rows:
            dropped = self.aggregator.drop_oldest_pending()
            pending.remove(dropped)
            n = dropped.series_count()
            rows -= n
            self.telemetry.flush_dropped_series += n
            log.error("the store is failing: dropped the oldest pending flush (%d series)", n)

    async def _write(self, snap: Snapshot) -> bool:
        started = time.perf_counter()
        records = self.ledger.records_upto(snap.seq) if self.ledger else []
        expire_before = self.clock() - TTL_SECONDS
        try:
            n = await self.store.run_write(
                lambda: self._finish_and_write(snap, records, expire_before)
            )
        except Exception as e:
            self.telemetry.flush_errors += 1
            self.last_error = str(e)
            log.error("flush failed, will retry: %s", e)
            return False
        self.aggregator.release(snap)
        if self.ledger:
            self.ledger.forget(records)
        if self.wal:
            self.wal.release_upto(snap.seq)
        self.telemetry.flushes += 1
        self.telemetry.flushed_rows += n
        self.telemetry.last_flush_seconds = time.perf_counter() - started
        self.last_flush_ok = self.clock()
        self.last_error = None
        return True

    def _finish_and_write(
        self, snap: Snapshot, records: list[IdempotencyRecord], expire_before: float
    ) -> int:
        """Writer thread: the finest tier's rows and the coarse tiers' buckets they complete, in
        one transaction. If it fails, the rollups go back to their state before this snapshot,
        which is retried whole with the next flush."""
        if snap.seq <= self.store.flushed_seq_now():
            return 0  # already committed (a retry after an answer that never arrived)
        rows = finish_snapshot(snap)
        rollups: dict[float, RowBatch] = {}
        saved = None if self.rollup is None else self.rollup.save()
        try:
            if self.rollup is not None:
                self.rollup.fold(rows)
                rollups = self.rollup.complete(snap.boundary)
            self.store.write_flush(
                rows,
                flushed_seq=snap.seq,
                idempotency=records,
                idempotency_expire_before=expire_before,
                rollups=rollups,
                complete_until=None if self.rollup is None else dict(self.rollup.complete_until),
            )
        except BaseException:
            if self.rollup is not None and saved is not None:
                self.rollup.restore(saved)
            raise
        return len(rows)
