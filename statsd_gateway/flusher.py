"""Aligned flush ticks: swap the live interval, finish it off the loop, write it, release it.

A flush is swap → finish → fold → write → release, each timed. Finishing (accumulators → rows)
and folding the rows into the coarse tiers' open rollups is CPU work: it runs on the flusher's
own worker thread, which alone folds into the TierRollup (a failed write's state is restored on
the loop while that worker is idle); the write is one `Store.write_flush`.

A failed write is logged and counted; the snapshot stays pending (queries still see it) and
is retried on the next tick, oldest first. At most `max_pending_rows` series-buckets wait: past
that the oldest snapshot is dropped and counted, so memory stays bounded while the store is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from statsd_gateway import held_interval
from statsd_gateway.aggregator import IntervalAggregator
from statsd_gateway.errors import StoreError
from statsd_gateway.idempotency import TTL_SECONDS, IdempotencyLedger
from statsd_gateway.model import RowBatch, SeriesKey
from statsd_gateway.snapshot import Snapshot, SnapshotEntry
from statsd_gateway.store.base import FlushWrite, IdempotencyRecord, Store
from statsd_gateway.store.rollup import RollupState, TierRollup
from statsd_gateway.telemetry import Telemetry
from statsd_gateway.wal import WriteAheadLog
from statsd_gateway.write_holds import WriteHolds

log = logging.getLogger(__name__)
# Writes of one snapshot that fail with an error of its data (not an outage) before it is
# dropped whole, when no single series can be blamed.
QUARANTINE_AFTER = 3
_LOGGED_PER_FLUSH = 10
# Failures after which the same write is worth retrying as it is.
_OUTAGES = (StoreError, MemoryError)
# How long a flush waits for HTTP writes whose log entries name its snapshot to apply their
# points (they wait for one fsync); past it the snapshot is retried at the next tick.
HOLD_TIMEOUT = 5.0
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A flush ready to write, and the rollups' state to go back to if it is not written."""

    write: FlushWrite
    saved: RollupState | None


class Flusher:
    """Writes what the aggregator swaps out, tick by tick: each snapshot finished into rows,
    folded into the rollups and written by one Store.write_flush, oldest first, then released
    from memory and the write-ahead log. An outage keeps the snapshots (bounded by
    `max_pending_rows`) and retries with backoff; a series that cannot be finished or written
    is set aside alone; nothing raised by a flush ends the ticks."""

    def __init__(
        self,
        aggregator: IntervalAggregator,
        store: Store,
        telemetry: Telemetry,
        *,
        clock: Callable[[], float] = time.time,
        max_pending_rows: int = 1_000_000,
        max_backoff: float = 300.0,
        ledger: IdempotencyLedger | None = None,
        wal: WriteAheadLog | None = None,
        rollup: TierRollup | None = None,
        holds: WriteHolds | None = None,
    ) -> None:
        self.rollup = rollup
        self.holds = holds
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
        self._failed_at = -math.inf  # the wall-clock time of the failure _retry_at counts from
        self.last_flush_ok: float | None = None
        self.last_error: str | None = None
        self._data_failures: dict[int, int] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="flush-worker")
        # Told each batch of rows once the store holds it, on the worker (the scrape's state).
        self.on_written: Callable[[RowBatch], None] | None = None
        # Awaited before each snapshot is written: what other gateways sharing the store
        # changed (their new series, their deletions, whose open rollups must not be written).
        self.before_write: Callable[[], Awaitable[None]] | None = None

    async def _on_worker(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    def close(self) -> None:
        """After the final flush: the worker thread ends."""
        self._worker.shutdown(wait=True)

    async def rebuild_rollups(self) -> None:
        """At start: the coarse tiers' open buckets, from the rows of the tier below them in
        the store (open buckets are never written)."""
        rollup = self.rollup
        if rollup is None:
            return
        finer = (self.store.resolutions[0], *rollup.coarse)
        for level, res in enumerate(rollup.coarse):
            rows = await self.store.read_for_rebuild(finer[level], rollup.complete_until[res])
            await self._on_worker(rollup.fold, rows, level)
        n_open = await self._on_worker(rollup.open_buckets)
        if n_open:
            log.info("rebuilt %d open rollup buckets from disk", n_open)

    async def discard_rollups(self, keys: set[SeriesKey]) -> None:
        """Drops the open rollup buckets of these series (an admin delete; hold paused())."""
        if self.rollup is not None:
            await self._on_worker(self.rollup.discard, keys)

    @property
    def backing_off(self) -> bool:
        """A write failed and the backoff has not run out: a flush now would not write (the
        same condition flush() applies, a backward clock step included)."""
        return self._failed_at <= self.clock() < self._retry_at

    def seconds_to_next_tick(self) -> float:
        i = self.aggregator.interval
        now = self.clock()
        return (math.floor(now / i) + 1) * i - now

    async def run(self, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        """Flushes at every wall-clock multiple of the interval until cancelled. A flush that
        raises (a bug: a failing store is caught, kept and retried inside flush()) is logged
        with its traceback and counted, and the ticks go on: no exception ends the loop."""
        while True:
            await sleep(self.seconds_to_next_tick())
            try:
                await self.flush()
            except Exception as e:
                self.telemetry.flush_errors += 1
                self.last_error = f"the flush raised {type(e).__name__}: {e}"
                log.exception("the flush raised; the next tick tries again")

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="flusher")

    @property
    def stopped_by_itself(self) -> bool:
        """The tick task ended without stop() (it cannot, short of a bug in the loop itself):
        /readyz says so."""
        return self._task is not None and self._task.done()

    async def stop(self) -> None:
        """Stops the ticks, after any flush in progress has finished (cancelling a flush while
        the store commits it would leave its rollups folded and the snapshot written again)."""
        if self._task is not None:
            async with self._lock:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """No flush runs while this is held (an admin delete changes what a flush would write)."""
        async with self._lock:
            yield

    async def flush(self, *, force: bool = False) -> bool:
        """Swaps the live interval and writes every pending snapshot, oldest first. True if all
        were written. After a failure, writes wait out an exponential backoff (interval, 2×, 4×…
        up to max_backoff) unless `force` (the final flush at stop). Ticks and the backoff
        follow the wall clock; a step of it either way neither stalls nor repeats a flush, and
        points land in the buckets of the time they arrived (merged on disk with any there)."""
        async with self._lock:
            started = time.perf_counter()
            self.aggregator.swap()
            self._bound_pending()
            self.telemetry.flush_step_seconds["swap"] = time.perf_counter() - started
            # Before the failure it counts from, the wall clock has stepped back: the backoff
            # would otherwise last as long as the step (minutes) on top of its own length.
            if not force and self._failed_at <= self.clock() < self._retry_at:
                return False
            for snap in self.aggregator.pending:
                if not await self._settled(snap) or not await self._write(snap):
                    self.failures += 1
                    delay = min(
                        self.aggregator.interval * 2 ** (self.failures - 1), self.max_backoff
                    )
                    self._failed_at = self.clock()
                    self._retry_at = self._failed_at + delay
                    return False
            self.failures = 0
            self._retry_at = self._failed_at = -math.inf
            return True

    async def _settled(self, snap: Snapshot) -> bool:
        if self.holds is None or await self.holds.settled(snap.seq, HOLD_TIMEOUT):
            return True
        self._failed(TimeoutError(f"HTTP writes to snapshot {snap.seq} still wait for the log"))
        return False

    def _bound_pending(self) -> None:
        """Past the bound, the oldest snapshots are dropped and counted: memory stays bounded
        however long the store is down."""
        pending = self.aggregator.pending
        rows = sum(s.series_count() for s in pending)
        while len(pending) > 1 and rows > self.max_pending_rows:
            if self.holds is not None and self.holds.held(pending[0].seq):
                break  # a write is still adding to it; its log entry names that seq
            dropped = self.aggregator.drop_oldest_pending()
            pending.remove(dropped)
            n = dropped.series_count()
            rows -= n
            self.telemetry.flush_dropped_series += n
            log.error("the store is failing: dropped the oldest pending flush (%d series)", n)

    async def _write(self, snap: Snapshot) -> bool:
        """Writes one snapshot; True once the store holds it (or it was set aside whole)."""
        started = time.perf_counter()
        if self.before_write is not None:
            try:
                await self.before_write()
            except _OUTAGES as e:  # the write would fail the same way: retried as it would be
                self._failed(e)
                return False
            except Exception:  # a bug: logged, and the snapshot written regardless
                log.exception("before the flush: the store's changes by others were not read")
        records = self.ledger.records_upto(snap.seq) if self.ledger else []
        expire_before = self.clock() - TTL_SECONDS
        while True:  # ends: each pass that continues has removed series from the snapshot
            rows: RowBatch | None = None
            try:
                finishing = time.perf_counter()
                rows = await self._on_worker(self.aggregator.snapshot_rows, snap)
                self.telemetry.flush_step_seconds["finish"] = time.perf_counter() - finishing
                n = await self._finish_and_write(snap, rows, records, expire_before)
                break
            except _OUTAGES as e:  # the same write is worth retrying later
                self._failed(e)
                return False
            except Exception as e:
                # An error of the data: retried as it is, it would fail this way forever, and
                # every snapshot behind it with it. Set aside what cannot be finished or
                # written.
                try:
                    if await self._set_aside_unwritable(snap, rows):
                        continue
                except _OUTAGES as outage:
                    self._failed(outage)
                    return False
                self._failed(e)
                tries = self._data_failures[snap.seq] = self._data_failures.get(snap.seq, 0) + 1
                if tries < QUARANTINE_AFTER:
                    return False
                self._drop_unwritable(snap, records)
                return True
        if self.on_written is not None and rows is not None:
            await self._tell_written(rows)
        released = time.perf_counter()
        self.aggregator.release(snap)
        if self.ledger:
            self.ledger.forget(records)
        if self.wal:
            self.wal.release_upto(snap.seq)
        self.telemetry.flush_step_seconds["release"] = time.perf_counter() - released
        self.telemetry.flushes += 1
        self.telemetry.flushed_rows += n
        self.telemetry.last_flush_seconds = time.perf_counter() - started
        self.last_flush_ok = self.clock()
        self.last_error = None
        self._data_failures.pop(snap.seq, None)
        return True

    async def _tell_written(self, rows: RowBatch) -> None:
        """on_written(rows), whose failure is logged and never fails the flush: the rows are
        stored already."""
        assert self.on_written is not None
        try:
            await self._on_worker(self.on_written, rows)
        except Exception:
            log.exception("the scrape's state could not take a flush's rows")

    def _failed(self, e: Exception) -> None:
        self.telemetry.flush_errors += 1
        self.last_error = str(e) or type(e).__name__
        log.error("flush failed, will retry: %s", self.last_error)

    async def _set_aside_unwritable(self, snap: Snapshot, rows: RowBatch | None) -> bool:
        """Finds the series-buckets of `snap` that cannot be finished into rows (`rows` is None:
        finishing the snapshot failed) or written, and removes them from it (logged and
        counted): True if any were found. A snapshot that keeps failing with no series to blame
        counts a data failure towards QUARANTINE_AFTER."""
        held_interval.materialize(snap, self.aggregator.registry)  # set aside by entry
        if rows is None:
            found = await self._on_worker(self.aggregator.unfinishable, snap)
        else:
            found = await self._find_unwritable(snap, rows)
        for (ts, sid), why in found[:_LOGGED_PER_FLUSH]:
            log.error(
                "flush: set aside series %r of bucket %s, which cannot be written: %s",
                self.aggregator.registry.key_of(sid),
                ts,
                why,
            )
        if len(found) > _LOGGED_PER_FLUSH:
            log.error("flush: %d more series set aside", len(found) - _LOGGED_PER_FLUSH)
        snap.remove([entry for entry, _ in found])
        self.telemetry.flush_quarantined_series += len(found)
        return bool(found)

    def _drop_unwritable(self, snap: Snapshot, records: list[IdempotencyRecord]) -> None:
        """The last resort for a snapshot that failed QUARANTINE_AFTER times with an error of
        its data and no series to blame: drop it whole, so the ones behind it get written."""
        n = snap.series_count()
        log.error(
            "flush: dropped snapshot %d (%d series) after %d failures of its data: %s",
            snap.seq,
            n,
            QUARANTINE_AFTER,
            self.last_error,
        )
        self._data_failures.pop(snap.seq, None)
        self.aggregator.release(snap)
        if self.ledger:
            self.ledger.forget(records)
        if self.wal:  # its points must not come back at the next start
            self.wal.release_upto(snap.seq)
        self.telemetry.flush_quarantined_series += n

    async def _find_unwritable(
        self, snap: Snapshot, rows: RowBatch
    ) -> list[tuple[SnapshotEntry, Exception]]:
        """Bisects the snapshot's rows with trial writes (rolled back) down to the single ones
        that fail, each with its error; none if all its rows write (the error was elsewhere, or
        passed). Costs about two trial writes of the snapshot per bad row. An outage ends the
        search (it propagates)."""

        async def trial(part: RowBatch) -> Exception | None:
            try:
                await self._finish_and_write(snap, part, [], 0.0, trial=True)
            except _OUTAGES:
                raise
            except Exception as e:
                return e
            return None

        everything = np.arange(len(rows), dtype=np.int64)
        if await trial(rows.take(everything[:0])) is not None:
            return []  # it fails with no row at all: no row is to blame
        assert rows.series is not None  # the aggregator's rows carry their series ids
        found: list[tuple[SnapshotEntry, Exception]] = []
        suspects = [(everything, e)] if (e := await trial(rows)) is not None else []
        while suspects:
            part, why = suspects.pop()
            if len(part) == 1:
                i = int(part[0])
                found.append(((float(rows.ts[i]), int(rows.series[i])), why))
                continue
            mid = len(part) // 2
            for half in (part[:mid], part[mid:]):
                if (e := await trial(rows.take(half))) is not None:
                    suspects.append((half, e))
        return found

    def _prepare(
        self,
        snap: Snapshot,
        rows: RowBatch,
        records: list[IdempotencyRecord],
        expire_before: float,
    ) -> _Prepared:
        """Worker thread: the flush of `rows` (of `snap`) with the coarse tiers' buckets they
        complete; the rollups keep the fold, and `saved` is their state before it."""
        # Only those of the series written: a series set aside must not fail the rest again.
        gauges = {k: snap.gauges[k] for k in rows.keys if k in snap.gauges}
        rollups: dict[float, RowBatch] = {}
        saved = None
        if self.rollup is not None:
            saved = self.rollup.save()
            try:
                self.rollup.fold(rows)
                rollups = self.rollup.complete(snap.boundary)
            except BaseException:
                self.rollup.restore(saved)
                raise
        return _Prepared(
            FlushWrite(
                seq=snap.seq,
                rows=rows,
                rollups=rollups,
                complete_until={} if self.rollup is None else dict(self.rollup.complete_until),
                gauges=gauges,
                idempotency=records,
                idempotency_expire_before=expire_before,
            ),
            saved,
        )

    async def _finish_and_write(
        self,
        snap: Snapshot,
        rows: RowBatch,
        records: list[IdempotencyRecord],
        expire_before: float,
        *,
        trial: bool = False,
    ) -> int:
        """The finest tier's rows and the coarse tiers' buckets they complete, in one
        Store.write_flush. If it fails (or is a `trial`, rolled back by the store), the rollups go
        back to their state before it; a failed snapshot is retried whole with the next flush.
        A seq stored already (a retry after an answer that never arrived) keeps the fold: the
        store holds it. Returns the rows written."""
        folding = time.perf_counter()
        prepared = await self._on_worker(self._prepare, snap, rows, records, expire_before)
        writing = time.perf_counter()
        stored = answered = False
        try:
            stored = await self.store.write_flush(prepared.write, trial=trial)
            answered = True
        finally:
            # The worker is idle (this flush awaited it) and nothing else folds: restore here.
            # Not when the store answered that it holds the seq already: an earlier try of this
            # snapshot committed (its answer lost) with the rollups of this very fold.
            if (trial or not answered) and self.rollup is not None and prepared.saved is not None:
                self.rollup.restore(prepared.saved)
        if not trial:
            steps = self.telemetry.flush_step_seconds
            steps["fold"], steps["write"] = writing - folding, time.perf_counter() - writing
        return len(rows) if stored else 0
