"""SqliteStore: one writer thread, reader threads, every read time-limited.

- The write connection lives on one dedicated thread; every write is a function run there inside
  `BEGIN IMMEDIATE … COMMIT`. A flush is one transaction.
- A bucket already on disk is merged with, never overwritten (`ON CONFLICT DO UPDATE`, with the
  sketch and HyperLogLog merged by SQL functions).
- Reads run on a small pool, each thread with its own connection; a progress handler aborts a
  read that overruns the time limit (StoreTimeout).
- Every write checks, before it begins and after it commits, that the path is still the file
  opened (same device and inode): removed or replaced, SQLite would go on writing into the
  unlinked file, lost at the next start. Then the write fails (StoreGone, an outage: the flusher
  keeps the data in memory) and `gone` says why, until the path's directory exists again: a
  file restored there is opened as it is, a missing one created anew, and the write goes on.
  A removed directory is not made again while running (it may be a mount that went away);
  `recreate=True` (the final flush at stop) does make it, so that what is in memory is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np

from statsd_gateway import sketch
from statsd_gateway.model import BucketRow, Matcher, MetricType, RowBatch, SeriesKey, matches_all
from statsd_gateway.store.base import IdempotencyRecord, RowRead, SeriesInfo, StoredRows
from statsd_gateway.store.schema import (
    DamagedDatabase,
    SchemaError,
    check_file,
    ensure_tier_table,
    migrate,
    tier_table,
)
from statsd_gateway.store.sqlite_reads import (
    complete_key,
    read_complete_until,
    read_flushed_seq,
    read_idempotency,
    read_rows_where,
    read_series,
    read_stored_rows,
    read_tag_values,
    tags_from_json,
    tags_json,
)

T = TypeVar("T")
log = logging.getLogger(__name__)


class StoreError(Exception):
    """The store cannot be opened or written: an outage (locked, full, I/O, closed), after
    which the same write is worth retrying. An error of the data itself (a value the database
    cannot encode, a constraint it breaks, a merge function that fails on a stored blob) is not
    wrapped: it propagates as it was raised, and the flusher sets the offending rows aside."""


class StoreTimeout(StoreError):
    pass


class StoreGone(StoreError):
    """The database file was removed or replaced while open."""


_ALL_COLUMNS = ("ts", "series_id", "count", "sum", "min", "max", "last", "last_ts", "sketch", "hll")
# Rows with neither `last` (gauges) nor `hll` (sets) bind these only: each bound parameter
# costs, and a flush binds one row per series.
_NARROW_COLUMNS = ("ts", "series_id", "count", "sum", "min", "max", "sketch")


def _upsert_sql(table: str, columns: Sequence[str] = _ALL_COLUMNS) -> str:
    return f"""
INSERT INTO {table}({", ".join(columns)})
VALUES ({", ".join("?" * len(columns))})
ON CONFLICT DO UPDATE SET
  count = count + excluded.count,
  sum = sum + excluded.sum,
  min = min(coalesce(min, excluded.min), coalesce(excluded.min, min)),
  max = max(coalesce(max, excluded.max), coalesce(excluded.max, max)),
  last = CASE WHEN last_ts IS NULL OR excluded.last_ts >= last_ts
              THEN coalesce(excluded.last, last) ELSE last END,
  last_ts = max(coalesce(last_ts, excluded.last_ts), coalesce(excluded.last_ts, last_ts)),
  sketch = dd_merge(sketch, excluded.sketch),
  hll = hll_merge(hll, excluded.hll)
"""


SKETCH_FORMAT = f"{sketch.FORMAT}:mapping={sketch.MAPPING_ID}"


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
        self.clock = clock
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._readers = ThreadPoolExecutor(2, thread_name_prefix="sqlite-reader")
        self._local = threading.local()
        self._wconn: sqlite3.Connection | None = None
        self._series_ids: dict[SeriesKey, int] = {}
        self._last_write: dict[int, float] = {}  # series id -> last write by this process
        self._read_conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        # Checkpoints run on a thread of their own, after each commit, instead of inside the
        # commit that crosses SQLite's WAL threshold (which would put them on a flush).
        self._checkpointer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-checkpoint")
        self._checkpoint_conn: sqlite3.Connection | None = None
        self._checkpoint_queued = False
        self._checkpoint_gen = 0
        self._file_id: tuple[int, int] | None = None
        self._generation = 0  # bumped when the path is reopened: connections to the old go
        # Why writes fail now (the file was removed or replaced), or None; set by the writer.
        self.gone: str | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> list[SeriesInfo]:
        """Opens (creating or migrating) the database; returns every known series."""
        return self._writer.submit(self._open).result()

    def _open(self) -> list[SeriesInfo]:
        conn: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            check_file(self.path)
            if not self.path.exists():
                self._create()
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=5000")
            migrate(conn, SKETCH_FORMAT)
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL, not NORMAL: the HTTP write-ahead log is deleted once a flush commits, so a
            # commit must survive a power cut too (one more fsync per flush).
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA wal_autocheckpoint=0")  # see _request_checkpoint
            for i, res in enumerate(self.resolutions):
                ensure_tier_table(conn, res, time_major=i == 0)
                if i:
                    conn.execute("INSERT OR IGNORE INTO meta VALUES (?, '0')", (complete_key(res),))
        except (sqlite3.DatabaseError, SchemaError, OSError) as e:
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            damaged = isinstance(e, DamagedDatabase) or getattr(e, "sqlite_errorname", "") in (
                "SQLITE_CORRUPT",
                "SQLITE_NOTADB",
            )
            how = f" {recovery_steps(self.path)}" if damaged else ""
            raise StoreError(f"cannot open the database {self.path}: {e}.{how}") from None
        conn.create_function("dd_merge", 2, sketch.merge_blobs, deterministic=True)
        conn.create_function("hll_merge", 2, sketch.hll_merge_pair, deterministic=True)
        self._wconn = conn
        self._file_id = _file_id(self.path)
        out = []
        for sid, tenant, name, tags, mtype in conn.execute(
            "SELECT id, tenant, name, tags, type FROM series"
        ):
            info = SeriesInfo(sid, tenant, name, tags_from_json(tags), MetricType(mtype))
            self._series_ids[(tenant, name, info.tags)] = sid
            out.append(info)
        return out

    def _create(self) -> None:
        """A new database is built beside its path and renamed into place: a crash midway
        leaves no empty or half-made file at the path (which the next start would refuse)."""
        tmp = self.path.with_name(self.path.name + ".new")
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm"), Path(f"{tmp}-journal")):
            leftover.unlink(missing_ok=True)
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            migrate(conn, SKETCH_FORMAT)
            conn.execute("PRAGMA journal_mode=WAL")
        finally:
            conn.close()
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _ensure_in_place(self, *, recreate: bool = False) -> None:
        """Writer thread: raises StoreGone unless the path is the file open (reopening it when
        it can, see the module's docstring)."""
        if self._wconn is None or _file_id(self.path) == self._file_id:
            return
        why = "replaced" if self.path.exists() else "removed"
        if self.gone is None:
            log.error(
                "the database %s was %s while running: flushes are kept in memory and HTTP "
                "writes refused (503) until it is back",
                self.path,
                why,
            )
        self.gone = f"the database {self.path} was {why}"
        if not (recreate or self.path.parent.is_dir()):
            raise StoreGone(self.gone)
        old = self._wconn
        self._wconn = None
        with contextlib.suppress(sqlite3.Error):
            old.close()
        self._series_ids.clear()
        self._last_write.clear()
        self._generation += 1
        self._open()  # raises StoreError (still gone) if it cannot
        log.warning(
            "reopened the database %s (%s); writing what is held in memory",
            self.path,
            "a new, empty file" if why == "removed" else "the file now at the path",
        )
        self.gone = None

    def ensure_in_place(self, *, recreate: bool = False) -> None:
        """Checks (and reopens) the path on the writer thread; see _ensure_in_place."""
        self._writer.submit(lambda: self._ensure_in_place(recreate=recreate)).result()

    def close(self, timeout: float | None = None) -> None:
        def _close() -> None:
            if self._wconn is not None:
                with contextlib.suppress(sqlite3.Error):  # e.g. a full disk: close regardless
                    self._wconn.execute("PRAGMA optimize")
                self._wconn.close()
                self._wconn = None

        self._checkpointer.shutdown(wait=True)
        if self._checkpoint_conn is not None:
            self._checkpoint_conn.close()
            self._checkpoint_conn = None
        self._writer.submit(_close).result(timeout)
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        with self._lock:
            for c in self._read_conns:
                c.close()
            self._read_conns.clear()

    # -- writes (writer thread only) ---------------------------------------------------------

    async def run_write(self, fn: Callable[[], T]) -> T:
        """Runs `fn` on the writer thread (it may call the write_* methods)."""
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn)

    def write_flush(
        self,
        rows: RowBatch,
        flushed_seq: int | None = None,
        idempotency: Sequence[IdempotencyRecord] = (),
        idempotency_expire_before: float | None = None,
        rollups: dict[float, RowBatch] | None = None,
        complete_until: dict[float, float] | None = None,
        *,
        gauges: Mapping[SeriesKey, tuple[float, float]] | None = None,
        trial: bool = False,
    ) -> None:
        """One transaction: the flush's rows into the finest tier (merged into buckets already
        there), the coarse tiers' buckets this flush completed and how far each tier is
        complete, flushed_seq, the idempotency records of the requests these rows hold, and
        the current values (value, time) of the gauges the flush changed (series of `rows`).
        One transaction, so a query never sees the snapshot gone from memory and its rows in one
        tier but not yet in another. `trial`: do all of it, then roll back (raises what the
        real write would raise; the flusher's search for unwritable rows)."""

        def work(conn: sqlite3.Connection) -> None:
            self._upsert(conn, self.resolutions[0], rows)
            self._write_rollups(conn, rollups or {}, complete_until or {})
            conn.executemany(
                "INSERT INTO gauge_current VALUES (?, ?, ?) "
                "ON CONFLICT(series_id) DO UPDATE SET value=excluded.value, ts=excluded.ts",
                [(self._series_ids[k], v, t) for k, (v, t) in (gauges or {}).items()],
            )
            conn.executemany(
                "INSERT OR IGNORE INTO idempotency VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (r.tenant, r.key, r.body_sha256, r.status, r.response, r.created)
                    for r in idempotency
                ],
            )
            if idempotency_expire_before is not None:
                conn.execute(
                    "DELETE FROM idempotency WHERE created < ?", (idempotency_expire_before,)
                )
            if flushed_seq is not None:
                conn.execute("UPDATE meta SET value=? WHERE key='flushed_seq'", (str(flushed_seq),))

        self._transaction(work, commit=not trial)

    def write_rows(self, rows: Sequence[BucketRow], flushed_seq: int | None = None) -> None:
        """The finest tier's rows alone (tests and tools)."""
        self.write_flush(RowBatch.from_rows(rows), flushed_seq)

    def write_rollups(
        self, rows: dict[float, RowBatch], complete_until: dict[float, float]
    ) -> None:
        """One transaction: completed buckets of coarse tiers, and how far each is complete
        (history imports and tools; flushes pass them to write_flush)."""
        self._transaction(lambda conn: self._write_rollups(conn, rows, complete_until))

    def _write_rollups(
        self,
        conn: sqlite3.Connection,
        rows: dict[float, RowBatch],
        complete_until: dict[float, float],
    ) -> None:
        for res, tier_rows in rows.items():
            self._upsert(conn, res, tier_rows)
        for res, until in complete_until.items():
            conn.execute("UPDATE meta SET value=? WHERE key=?", (repr(until), complete_key(res)))

    def _transaction(
        self, work: Callable[[sqlite3.Connection], None], *, commit: bool = True
    ) -> None:
        self._ensure_in_place()
        conn = self._wconn
        if conn is None:
            raise StoreError("the store is closed")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                work(conn)
                if commit:
                    conn.execute("COMMIT")
            except BaseException:
                self._roll_back(conn)
                raise
            if not commit:
                self._roll_back(conn)
                return
        except sqlite3.Error as e:
            if _is_data_error(e):
                raise
            raise StoreError(f"write failed: {e}") from e
        # Removed between the check and the commit: the commit went into the unlinked file, so
        # it does not count as stored. Only compare here: reopening now would make the write
        # look stored; the check before the next write reopens the path (or fails).
        if _file_id(self.path) != self._file_id:
            raise StoreGone(f"the database {self.path} was removed or replaced during a write")
        self._request_checkpoint()

    def _roll_back(self, conn: sqlite3.Connection) -> None:
        # SQLite may have rolled back already (a full disk does): keep the first error.
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        # Series inserted in the rolled-back transaction are gone: forget their ids.
        valid = {r[0] for r in conn.execute("SELECT id FROM series")}
        self._series_ids = {k: v for k, v in self._series_ids.items() if v in valid}
        self._last_write = {k: v for k, v in self._last_write.items() if k in valid}

    def _request_checkpoint(self) -> None:
        """Queues a passive checkpoint (copying committed WAL frames into the database, so the
        WAL can start over) unless one is queued already. Passive: it never blocks the writer
        or readers, and skips frames a reader still needs."""
        if self._checkpoint_queued:
            return
        self._checkpoint_queued = True
        try:
            self._checkpointer.submit(self._checkpoint)
        except RuntimeError:  # shutting down: the next open replays what is left in the WAL
            self._checkpoint_queued = False

    def _checkpoint(self) -> None:
        self._checkpoint_queued = False
        try:
            if self._checkpoint_conn is not None and self._checkpoint_gen != self._generation:
                self._checkpoint_conn.close()
                self._checkpoint_conn = None
            if self._checkpoint_conn is None:
                self._checkpoint_gen = self._generation
                self._checkpoint_conn = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False
                )
                self._checkpoint_conn.execute("PRAGMA busy_timeout=1000")
            self._checkpoint_conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as e:
            log.warning("WAL checkpoint failed (retried after the next write): %s", e)

    def _upsert(self, conn: sqlite3.Connection, res: float, rows: RowBatch) -> None:
        n = len(rows)
        if not n:
            return
        now = self.clock()
        ids = []
        series_ids, last_write = self._series_ids, self._last_write
        for key, mtype in zip(rows.keys, rows.types, strict=True):
            sid = series_ids.get(key)
            if sid is None:
                sid = self._insert_series(conn, key, mtype, now)
            last_write[sid] = now
            ids.append(sid)
        blobs: list[bytes | None] = [None] * n
        if rows.has_sketch.any():
            encoded = sketch.encode_flat(rows.sketches)
            has = rows.has_sketch.tolist()
            blobs = [b if h else None for b, h in zip(encoded, has, strict=True)]
        table = tier_table(res)
        wide = ~(np.isnan(rows.last) & np.isnan(rows.last_ts))
        if any(h is not None for h in rows.hll):
            wide |= np.array([h is not None for h in rows.hll], dtype=np.bool_)
        ts, count, total = rows.ts.tolist(), rows.count.tolist(), rows.sum.tolist()
        mn, mx = rows.nullable("min"), rows.nullable("max")
        if not wide.any():
            params = zip(ts, ids, count, total, mn, mx, blobs, strict=True)
            conn.executemany(_upsert_sql(table, _NARROW_COLUMNS), params)
            return
        last, last_ts = rows.nullable("last"), rows.nullable("last_ts")
        full = zip(ts, ids, count, total, mn, mx, last, last_ts, blobs, rows.hll, strict=True)
        if wide.all():
            conn.executemany(_upsert_sql(table), full)
            return
        is_wide = wide.tolist()
        rows_all = list(full)
        narrow = [r[:6] + r[8:9] for r, w in zip(rows_all, is_wide, strict=True) if not w]
        conn.executemany(_upsert_sql(table, _NARROW_COLUMNS), narrow)
        conn.executemany(
            _upsert_sql(table), [r for r, w in zip(rows_all, is_wide, strict=True) if w]
        )

    def _insert_series(
        self, conn: sqlite3.Connection, key: SeriesKey, mtype: MetricType, now: float
    ) -> int:
        tenant, name, tags = key
        cur = conn.execute(
            "INSERT INTO series(tenant, name, tags, type, created) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(tenant, name, tags) DO UPDATE SET type=type RETURNING id",
            (tenant, name, tags_json(tags), mtype.value, now),
        )
        sid = int(cur.fetchone()[0])
        self._series_ids[key] = sid
        return sid

    def flushed_seq(self) -> int:
        return self._writer.submit(self._read_flushed_seq_w).result()

    def _read_flushed_seq_w(self) -> int:
        assert self._wconn is not None
        return read_flushed_seq(self._wconn)

    def flushed_seq_now(self) -> int:
        """Writer thread: the last snapshot committed (to the file at the path)."""
        self._ensure_in_place()
        return self._read_flushed_seq_w()

    def read_for_rebuild(self, res: float, since: float) -> RowBatch:
        """Writer thread: every row of tier `res` from `since` on (rebuilding rollups at
        start); the series they hold count as written now."""
        assert self._wconn is not None
        rows = read_rows_where(self._wconn, tier_table(res), "ts >= ?", (since,))
        now = self.clock()
        for r in rows:
            sid = self._series_ids.get(r.key)
            if sid is not None:
                self._last_write[sid] = now
        return RowBatch.from_rows(rows)

    def gauge_currents(self) -> dict[SeriesKey, tuple[float, float]]:
        """Writer thread: the current value and its time of every gauge, as last flushed."""
        assert self._wconn is not None
        by_id = {sid: key for key, sid in self._series_ids.items()}
        rows = self._wconn.execute("SELECT series_id, value, ts FROM gauge_current").fetchall()
        return {by_id[sid]: (v, t) for sid, v, t in rows if sid in by_id}

    def complete_until(self) -> dict[float, float]:
        assert self._wconn is not None
        return read_complete_until(self._wconn, self.resolutions)

    # -- retention (writer thread) -----------------------------------------------------------

    def delete_expired(self, res: float, before: float, cursor: int = -1) -> tuple[int, int]:
        """One short transaction of deletes of tier `res` rows older than `before`.

        Returns (rows deleted, next cursor); call again with the cursor until it is -1. The
        finest tier (time-major) deletes a range at its B-tree's left edge, about one bucket of
        series at a time; coarse tiers (series-major) seek per series, 500 series at a time."""
        table = tier_table(res)
        conn = self._wconn
        assert conn is not None
        if res == self.resolutions[0]:  # cursor unused: the left edge moves by itself
            row = conn.execute(
                f"SELECT ts FROM {table} WHERE ts < ? ORDER BY ts LIMIT 1 OFFSET 20000", (before,)
            ).fetchone()
            sql, args, nxt = f"DELETE FROM {table} WHERE ts < ?", (before,), -1
            if row is not None:  # more than a batch: up to that bucket, then again
                sql, args, nxt = f"DELETE FROM {table} WHERE ts <= ?", (row[0],), 0
        else:
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM series WHERE id > ? ORDER BY id LIMIT 500", (cursor,)
                )
            ]
            if not ids:
                return 0, -1
            marks = ",".join("?" * len(ids))
            sql = f"DELETE FROM {table} WHERE series_id IN ({marks}) AND ts < ?"
            args, nxt = (*ids, before), ids[-1]
        n = 0

        def work(c: sqlite3.Connection) -> None:
            nonlocal n
            n = c.execute(sql, args).rowcount

        self._transaction(work)
        return n, nxt

    def vacuum_free_pages(self, pages: int = 2000) -> None:
        assert self._wconn is not None
        with contextlib.suppress(sqlite3.Error):
            self._wconn.execute(f"PRAGMA incremental_vacuum({int(pages)})")

    def delete_series(self, keys: Sequence[SeriesKey]) -> tuple[int, int]:
        """Deletes these series and their rows in every tier, in one transaction; returns how
        many series were stored and how many rows went."""
        self._ensure_in_place()  # the ids must be those of the file the delete goes to
        conn = self._wconn
        if conn is None:
            raise StoreError("the store is closed")
        ids = []
        for tenant, name, tags in keys:
            row = conn.execute(
                "SELECT id FROM series WHERE tenant=? AND name=? AND tags=?",
                (tenant, name, tags_json(tags)),
            ).fetchone()
            if row is not None:
                ids.append(int(row[0]))
        rows = 0

        def work(c: sqlite3.Connection) -> None:
            nonlocal rows
            for start in range(0, len(ids), 500):  # SQLite caps the parameters of a statement
                part = ids[start : start + 500]
                marks = ",".join("?" * len(part))
                for res in self.resolutions:
                    table = tier_table(res)
                    sql = f"DELETE FROM {table} WHERE series_id IN ({marks})"
                    rows += c.execute(sql, part).rowcount
                c.execute(f"DELETE FROM gauge_current WHERE series_id IN ({marks})", part)
                c.execute(f"DELETE FROM series WHERE id IN ({marks})", part)

        if ids:
            self._transaction(work)
        for key in keys:
            sid = self._series_ids.pop(key, None)
            if sid is not None:
                self._last_write.pop(sid, None)
        return len(ids), rows

    def forget_stale_series(self, horizon: float) -> list[SeriesKey]:
        """Deletes series created before `horizon`, not written by this process since then,
        with no row in any series-major tier (the finest tier's rows roll up into those within
        a coarse bucket, so a series with data has rows there). Returns their keys."""
        conn = self._wconn
        assert conn is not None
        coarse = [tier_table(r) for r in self.resolutions[1:]]
        if not coarse:
            return []
        no_rows = " AND ".join(
            f"NOT EXISTS (SELECT 1 FROM {t} WHERE series_id = s.id)" for t in coarse
        )
        candidates = conn.execute(
            f"SELECT id, tenant, name, tags FROM series s WHERE created < ? AND {no_rows}",
            (horizon,),
        ).fetchall()
        stale = [c for c in candidates if self._last_write.get(c[0], -1.0) < horizon]
        if not stale:
            return []

        def work(c: sqlite3.Connection) -> None:
            ids = [(sid,) for sid, *_ in stale]
            c.executemany("DELETE FROM series WHERE id = ?", ids)
            c.executemany("DELETE FROM gauge_current WHERE series_id = ?", ids)

        self._transaction(work)
        keys: list[SeriesKey] = []
        for sid, tenant, name, tags in stale:
            key = (tenant, name, tags_from_json(tags))
            self._series_ids.pop(key, None)
            self._last_write.pop(sid, None)
            keys.append(key)
        return keys

    # -- reads -----------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.generation != self._generation:
            with self._lock:  # the path was reopened: read the file now there
                self._read_conns.remove(conn)
            conn.close()
            conn = None
        if conn is None:
            self._local.generation = self._generation
            conn = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA busy_timeout=5000")
            self._local.conn = conn
            with self._lock:
                self._read_conns.append(conn)
        return conn

    async def read_rows(self, request: RowRead) -> StoredRows:
        return await self.run_read(lambda c: read_stored_rows(c, request, self.resolutions))

    async def series(
        self, tenant: str, name: str | None = None, matchers: Sequence[Matcher] = ()
    ) -> list[SeriesInfo]:
        found = await self.run_read(lambda c: read_series(c, tenant, name))
        return [s for s in found if matches_all(s.tags, matchers)]

    async def tag_values(self, tenant: str, key: str, name: str | None = None) -> dict[str, int]:
        return await self.run_read(lambda c: read_tag_values(c, tenant, key, name))

    async def idempotency_record(self, tenant: str, key: str) -> IdempotencyRecord | None:
        return await self.run_read(lambda c: read_idempotency(c, tenant, key))

    async def run_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Runs `fn(conn)` on a reader thread inside one read transaction, time-limited."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._read, fn)

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
        except sqlite3.OperationalError as e:
            if "interrupted" in str(e):
                raise StoreTimeout(
                    f"the query ran longer than {self.read_timeout:g}s; narrow its range"
                ) from None
            raise StoreError(f"read failed: {e}") from e
        finally:
            conn.set_progress_handler(None, 0)


_DATA_ERRORS = (
    sqlite3.InterfaceError,  # a value SQLite cannot bind
    sqlite3.DataError,
    sqlite3.IntegrityError,
    sqlite3.ProgrammingError,
    sqlite3.NotSupportedError,
)


def _is_data_error(e: sqlite3.Error) -> bool:
    """An error that the same rows would raise again however often they are retried, as
    against an outage (locked, full, I/O: OperationalError, or a corrupt file)."""
    if isinstance(e, _DATA_ERRORS):
        return True
    # dd_merge/hll_merge failing on the blobs it was given
    return "user-defined function raised exception" in str(e)


def recovery_steps(path: Path) -> str:
    """What an operator does about a damaged database file (the daemon never replaces it)."""
    return (
        f"The daemon has left the file as it is and will not start on it. To recover: stop it "
        f"from restarting, copy {path} (and {path}-wal if present) somewhere safe, then either "
        f"salvage what SQLite can still read, `sqlite3 {path} .recover | sqlite3 {path}.recovered` "
        f"and move {path}.recovered to {path}, or move {path} aside to start with an empty "
        f"store (its history is then lost). HTTP points not yet flushed stay in the "
        f"write-ahead log and are replayed at the next start"
    )


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino
