"""SqliteStore: the embedded default backend of the Store protocol (store/base.py).

- One writer thread owns the write connection (sqlite_writer.py); every write method of the
  protocol is a function submitted there, so writes never interleave inside a transaction and
  never block the event loop.
- Reads run on a small pool, each thread with its own read-only connection, inside one read
  transaction; a progress handler aborts a read that overruns `read_timeout` (StoreTimeout).
- When the database file was replaced or removed and is reopened, the readers' connections to
  the old file are dropped (the writer's `generation`).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TypeVar

from statsd_gateway.errors import StoreError, StoreGone, StoreTimeout
from statsd_gateway.model import Matcher, RowBatch, SeriesKey
from statsd_gateway.store.base import (
    FlushWrite,
    IdempotencyRecord,
    OthersSeries,
    RowRead,
    SeriesInfo,
    StoredRows,
    StoredState,
)
from statsd_gateway.store.chunks import ChunkError
from statsd_gateway.store.sqlite_chunks import SealCursor
from statsd_gateway.store.sqlite_files import recovery_steps
from statsd_gateway.store.sqlite_reads import (
    read_idempotency,
    read_series,
    read_stored_rows,
    read_tag_values,
)
from statsd_gateway.store.sqlite_writer import SqliteWriter

__all__ = ["SqliteStore", "StoreError", "StoreGone", "StoreTimeout", "recovery_steps"]

T = TypeVar("T")
log = logging.getLogger(__name__)
_FREE_SHARE = 0.25
_PROGRESS_EVERY = 10.0  # seconds between progress lines of a long sealing (a conversion)


class SqliteStore:
    """`resolutions` are the tiers' bucket widths, finest first (see config.TierConfig)."""

    def __init__(
        self,
        path: str | Path,
        *,
        resolutions: Sequence[float] = (10.0, 60.0, 3600.0),
        read_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.resolutions = tuple(resolutions)
        self.read_timeout = read_timeout
        self._writer_thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        # Four: a query's reduction runs on the reader that read its rows (read_rows_then), so
        # two long ones must not leave an idempotency lookup or a series listing waiting.
        self._readers = ThreadPoolExecutor(4, thread_name_prefix="sqlite-reader")
        self._writer = SqliteWriter(self.path, self.resolutions, clock)
        self._local = threading.local()
        self._read_conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    @property
    def gone(self) -> str | None:
        return self._writer.gone

    async def _write(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writer_thread, fn)

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> StoredState:
        return await self._write(self._writer.open)

    async def close(self, timeout: float | None = None) -> None:
        await asyncio.to_thread(self._close, timeout)

    def _close(self, timeout: float | None) -> None:
        self._writer_thread.submit(self._writer.close).result(timeout)
        self._writer_thread.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        with self._lock:
            for c in self._read_conns:
                c.close()
            self._read_conns.clear()

    async def ensure_in_place(self, *, recreate: bool = False) -> None:
        await self._write(partial(self._writer.ensure_in_place, recreate=recreate))

    # -- writes ----------------------------------------------------------------------------

    async def write_flush(self, flush: FlushWrite, *, trial: bool = False) -> bool:
        return await self._write(partial(self._writer.write_flush, flush, trial=trial))

    async def write_rollups(
        self, rollups: Mapping[float, RowBatch], complete_until: Mapping[float, float]
    ) -> None:
        await self._write(partial(self._writer.write_rollups, rollups, complete_until))

    async def delete_series(self, keys: Sequence[SeriesKey]) -> tuple[int, int]:
        return await self._write(partial(self._writer.delete_series, list(keys)))

    async def delete_expired(self, resolution: float, before: float) -> int:
        # One short transaction per submission: flushes queue between them.
        cursor = 0 if resolution == self.resolutions[0] else -1
        total = 0
        while True:
            n, cursor = await self._write(
                partial(self._writer.delete_expired, resolution, before, cursor)
            )
            total += n
            if cursor == -1:
                break
        total += await self._write(partial(self._writer.delete_expired_chunks, resolution, before))
        if total:
            await self._write(self._writer.vacuum_free_pages)
        return total

    async def seal_chunks(self, on_sealed: Callable[[int], None] | None = None) -> int:
        # One short transaction per submission, as retention: flushes queue between them.
        total = 0
        cursor: SealCursor = None
        began = last_said = time.monotonic()
        while True:
            n, cursor = await self._write(partial(self._writer.seal_step, cursor))
            total += n
            if n and on_sealed is not None:
                on_sealed(n)
            if cursor is None and not n:
                break
            if time.monotonic() - last_said >= _PROGRESS_EVERY and cursor is not None:
                last_said = time.monotonic()
                log.info(
                    "sealing into chunks: %d buckets in %.0fs, now at tier %gs, window %s",
                    total, last_said - began, self.resolutions[cursor[0]],
                    datetime.datetime.fromtimestamp(cursor[1], datetime.UTC).isoformat(),
                )  # fmt: skip
        # The sealed head rows' pages: given back once they are a good part of the file (a
        # back-fill, a conversion); fewer are left for the head's next window to reuse.
        share = await self._write(self._writer.free_share) if total else 0.0
        while share > _FREE_SHARE:
            await self._write(self._writer.vacuum_free_pages)
            before, share = share, await self._write(self._writer.free_share)
            if share >= before:  # a file made without incremental auto-vacuum
                break
        return total

    async def forget_stale_series(self, horizon: float) -> list[SeriesKey]:
        return await self._write(partial(self._writer.forget_stale_series, horizon))

    # -- reads -----------------------------------------------------------------------------

    async def flushed_seq(self) -> int:
        return await self._write(self._writer.flushed_seq)

    async def read_for_rebuild(self, resolution: float, since: float) -> RowBatch:
        return await self._write(partial(self._writer.read_for_rebuild, resolution, since))

    async def read_rows(self, request: RowRead) -> StoredRows:
        return await self.run_read(lambda c: read_stored_rows(c, request, self.resolutions))

    async def read_rows_then(self, request: RowRead, then: Callable[[StoredRows], T]) -> T:
        loop = asyncio.get_running_loop()

        def read_then() -> T:
            return then(self._read(lambda c: read_stored_rows(c, request, self.resolutions)))

        return await loop.run_in_executor(self._readers, read_then)

    async def series(
        self, tenant: str, name: str | None = None, matchers: Sequence[Matcher] = ()
    ) -> list[SeriesInfo]:
        return await self.run_read(lambda c: read_series(c, tenant, name, matchers))

    async def tag_values(self, tenant: str, key: str, name: str | None = None) -> dict[str, int]:
        return await self.run_read(lambda c: read_tag_values(c, tenant, key, name))

    async def idempotency_record(self, tenant: str, key: str) -> IdempotencyRecord | None:
        return await self.run_read(lambda c: read_idempotency(c, tenant, key))

    async def claim_idempotency(self, claim: IdempotencyRecord) -> IdempotencyRecord | None:
        return await self.idempotency_record(claim.tenant, claim.key)  # one gateway: no claims

    async def release_idempotency(self, claim: IdempotencyRecord) -> None:
        return None

    async def series_of_others(self) -> OthersSeries:
        return OthersSeries()  # one gateway owns the store

    async def run_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Runs `fn(conn)` on a reader thread inside one read transaction, time-limited."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._read, fn)

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        generation = self._writer.generation
        if conn is not None and self._local.generation != generation:
            with self._lock:  # the path was reopened: read the file now there
                self._read_conns.remove(conn)
            conn.close()
            conn = None
        if conn is None:
            self._local.generation = generation
            conn = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA busy_timeout=5000")
            self._local.conn = conn
            with self._lock:
                self._read_conns.append(conn)
        return conn

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            conn = self._reader()
        except sqlite3.Error as e:  # e.g. the file was removed
            raise StoreError(f"cannot open the database {self.path}: {e}") from e
        deadline = time.monotonic() + self.read_timeout

        def check() -> int:
            return 1 if time.monotonic() > deadline else 0

        conn.set_progress_handler(check, 10_000)
        try:
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")
        except ChunkError as e:
            # Damage on disk, not the query's fault: the read fails as an outage of the store.
            raise StoreError(f"read failed: a stored chunk is damaged ({e})") from None
        except sqlite3.OperationalError as e:
            if "interrupted" in str(e):
                raise StoreTimeout(f"the query ran longer than {self.read_timeout:g}s") from None
            raise StoreError(f"read failed: {e}") from e
        finally:
            conn.set_progress_handler(None, 0)
