"""The SQLite store's writer: the one write connection, and everything done with it.

Every method runs on the store's writer thread (SqliteStore submits them there), so nothing here
locks. A write is a function run inside `BEGIN IMMEDIATE … COMMIT`; a flush is one transaction.
A bucket already on disk is merged with, never overwritten (`ON CONFLICT DO UPDATE`, the sketch
and HyperLogLog merged by SQL functions registered on this connection: how SQLite merges late
points is this module's business, no other backend's).

Every write checks, before it begins and after it commits, that the path is still the file
opened (same device and inode): removed or replaced, SQLite would go on writing into the unlinked
file, lost at the next start. Then the write fails (StoreGone, an outage: the flusher keeps the
data in memory) and `gone` says why, until the path's directory exists again: a file restored
there is opened as it is, a missing one created anew, and the write goes on. A removed directory
is not made again while running (it may be a mount that went away); `recreate=True` (the final
flush at stop) does make it, so that what is in memory is kept.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from statsd_gateway import sketch
from statsd_gateway.errors import StoreError, StoreGone
from statsd_gateway.model import MetricType, RowBatch, SeriesKey
from statsd_gateway.store.base import FlushWrite, SeriesInfo, StoredState
from statsd_gateway.store.chunks import chunk_span
from statsd_gateway.store.schema import SKETCH_FORMAT, tags_from_json, tags_json, tier_table
from statsd_gateway.store.sqlite_chunks import (
    SEAL_SERIES,
    SealCursor,
    chunk_batch,
    delete_expired_chunks,
    delete_series_chunks,
    first_sealable,
    head_row_batch,
    seal_unit,
    series_names,
)
from statsd_gateway.store.sqlite_deletes import (
    delete_series_rows,
    expired_batch,
    series_ids_of,
    stale_candidates,
)
from statsd_gateway.store.sqlite_files import (
    Checkpointer,
    file_id,
    give_back_free_pages,
    open_database,
)
from statsd_gateway.store.sqlite_reads import (
    complete_key,
    read_complete_until,
    read_flushed_seq,
    read_rows_where,
)
from statsd_gateway.store.sqlite_upsert import upsert_rows

log = logging.getLogger(__name__)


class SqliteWriter:
    """The write connection to the database at `path` and what it knows: the series ids, when
    this process last wrote each series (stale-series removal), the file's identity.
    `resolutions` are the tiers' bucket widths, finest first. Writer thread only."""

    def __init__(
        self, path: Path, resolutions: Sequence[float], clock: Callable[[], float]
    ) -> None:
        self.path = path
        self.resolutions = tuple(resolutions)
        self.clock = clock
        self._wconn: sqlite3.Connection | None = None
        self._series_ids: dict[SeriesKey, int] = {}
        self._last_write: dict[int, float] = {}  # series id -> last write by this process
        self.checkpoints = Checkpointer(path)
        self._file_id: tuple[int, int] | None = None
        # Bumped when the path is reopened: readers' connections to the old file go.
        self.generation = 0
        # Why writes fail now (the file was removed or replaced), or None.
        self.gone: str | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> StoredState:
        """Opens (creating or migrating) the database; returns what it holds for a start."""
        series = self._open()
        conn = self._conn()
        return StoredState(
            series=series,
            flushed_seq=read_flushed_seq(conn),
            complete_until=read_complete_until(conn, self.resolutions),
            gauges=self._gauge_currents(),
        )

    def _open(self) -> list[SeriesInfo]:
        conn = open_database(self.path, self.resolutions, SKETCH_FORMAT)
        conn.create_function("dd_merge", 2, sketch.merge_blobs, deterministic=True)
        conn.create_function("hll_merge", 2, sketch.hll_merge_pair, deterministic=True)
        self._wconn = conn
        self._file_id = file_id(self.path)
        out = []
        for sid, tenant, name, tags, mtype in conn.execute(
            "SELECT id, tenant, name, tags, type FROM series"
        ):
            info = SeriesInfo(sid, tenant, name, tags_from_json(tags), MetricType(mtype))
            self._series_ids[(tenant, name, info.tags)] = sid
            out.append(info)
        return out

    def _ensure_in_place(self, *, recreate: bool = False) -> None:
        """Raises StoreGone unless the path is the file open (reopening it when
        it can, see the module's docstring)."""
        if self._wconn is None or file_id(self.path) == self._file_id:
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
        self.generation += 1
        self._open()  # raises StoreError (still gone) if it cannot
        log.warning(
            "reopened the database %s (%s); writing what is held in memory",
            self.path,
            "a new, empty file" if why == "removed" else "the file now at the path",
        )
        self.gone = None

    def close(self) -> None:
        self.checkpoints.close()
        if self._wconn is not None:
            with contextlib.suppress(sqlite3.Error):  # e.g. a full disk: close regardless
                self._wconn.execute("PRAGMA optimize")
            self._wconn.close()
            self._wconn = None

    def _conn(self) -> sqlite3.Connection:
        if self._wconn is None:
            raise StoreError("the store is closed")
        return self._wconn

    def ensure_in_place(self, *, recreate: bool = False) -> None:
        self._ensure_in_place(recreate=recreate)

    # -- writes ----------------------------------------------------------------------------

    def write_flush(self, flush: FlushWrite, *, trial: bool = False) -> bool:
        """One transaction (see store/base.py); False if `flush.seq` is stored already."""
        self._ensure_in_place()
        if flush.seq is not None and flush.seq <= read_flushed_seq(self._conn()):
            return False
        rows, gauges, idempotency = flush.rows, flush.gauges, flush.idempotency
        expire_before, flushed_seq = flush.idempotency_expire_before, flush.seq
        rollups, complete_until = flush.rollups, flush.complete_until

        def work(conn: sqlite3.Connection) -> None:
            self._upsert(conn, self.resolutions[0], rows)
            self._write_rollups(conn, rollups, complete_until)
            conn.executemany(
                "INSERT INTO gauge_current VALUES (?, ?, ?) "
                "ON CONFLICT(series_id) DO UPDATE SET value=excluded.value, ts=excluded.ts",
                [(self._series_ids[k], v, t) for k, (v, t) in gauges.items()],
            )
            conn.executemany(
                "INSERT OR IGNORE INTO idempotency VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (r.tenant, r.key, r.body_sha256, r.status, r.response, r.created)
                    for r in idempotency
                ],
            )
            if expire_before is not None:
                conn.execute("DELETE FROM idempotency WHERE created < ?", (expire_before,))
            if flushed_seq is not None:
                conn.execute("UPDATE meta SET value=? WHERE key='flushed_seq'", (str(flushed_seq),))

        self._transaction(work, commit=not trial)
        return True

    def write_rollups(
        self, rows: Mapping[float, RowBatch], complete_until: Mapping[float, float]
    ) -> None:
        """One transaction: completed buckets of coarse tiers, and how far each is complete."""
        self._transaction(lambda conn: self._write_rollups(conn, rows, complete_until))

    def _write_rollups(
        self,
        conn: sqlite3.Connection,
        rows: Mapping[float, RowBatch],
        complete_until: Mapping[float, float],
    ) -> None:
        for res, tier_rows in rows.items():
            self._upsert(conn, res, tier_rows)
        for res, until in complete_until.items():
            conn.execute("UPDATE meta SET value=? WHERE key=?", (repr(until), complete_key(res)))

    def _transaction(
        self, work: Callable[[sqlite3.Connection], None], *, commit: bool = True
    ) -> None:
        self._ensure_in_place()
        conn = self._conn()
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
        if file_id(self.path) != self._file_id:
            raise StoreGone(f"the database {self.path} was removed or replaced during a write")
        self.checkpoints.request(self.generation)

    def _roll_back(self, conn: sqlite3.Connection) -> None:
        # SQLite may have rolled back already (a full disk does): keep the first error.
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        # Series inserted in the rolled-back transaction are gone: forget their ids.
        valid = {r[0] for r in conn.execute("SELECT id FROM series")}
        self._series_ids = {k: v for k, v in self._series_ids.items() if v in valid}
        self._last_write = {k: v for k, v in self._last_write.items() if k in valid}

    def _upsert(self, conn: sqlite3.Connection, res: float, rows: RowBatch) -> None:
        n = len(rows)
        if not n:
            return
        now = self.clock()
        ids = []
        series_ids, last_write = self._series_ids, self._last_write
        wanted = None if rows.series is None else rows.series.tolist()
        for i, (key, mtype) in enumerate(zip(rows.keys, rows.types, strict=True)):
            sid = series_ids.get(key)
            if sid is None:
                sid = self._insert_series(
                    conn, key, mtype, now, None if wanted is None else wanted[i]
                )
            last_write[sid] = now
            ids.append(sid)
        upsert_rows(conn, tier_table(res), rows, ids)

    def _insert_series(
        self,
        conn: sqlite3.Connection,
        key: SeriesKey,
        mtype: MetricType,
        now: float,
        wanted: int | None,
    ) -> int:
        """The stored id of a series this writer has not written yet, inserting it: with the
        id the daemon's registry gave it at admission (`wanted`, so that both name a series by
        the same number) unless a stored series holds that id already."""
        tenant, name, tags = key
        if (
            wanted is not None
            and conn.execute("SELECT 1 FROM series WHERE id=?", (wanted,)).fetchone()
        ):
            wanted = None  # e.g. a store written by another process meanwhile
        cur = conn.execute(
            "INSERT INTO series(id, tenant, name, tags, type, created) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(tenant, name, tags) DO UPDATE SET type=type RETURNING id",
            (wanted, tenant, name, tags_json(tags), mtype.value, now),
        )
        sid = int(cur.fetchone()[0])
        self._series_ids[key] = sid
        return sid

    def flushed_seq(self) -> int:
        """The last snapshot committed (to the file at the path)."""
        self._ensure_in_place()
        return read_flushed_seq(self._conn())

    def read_for_rebuild(self, res: float, since: float) -> RowBatch:
        """Every row of tier `res` from `since` on, sealed or in the head (rebuilding rollups
        at start); the series they hold count as written now."""
        conn = self._conn()
        rows = read_rows_where(conn, tier_table(res), "ts >= ?", (since,))
        names = series_names(conn, "1", ())
        sealed = chunk_batch(conn, res, "start > ?", (since - chunk_span(res),), names.get)
        sealed = sealed.take(np.flatnonzero(sealed.ts >= since))
        now = self.clock()
        for r in rows:
            sid = self._series_ids.get(r.key)
            if sid is not None:
                self._last_write[sid] = now
        for sid in set(sealed.series.tolist() if sealed.series is not None else ()):
            self._last_write[sid] = now
        return RowBatch.concat([replace(sealed, series=None), RowBatch.from_rows(rows)])

    # -- chunks ----------------------------------------------------------------------------

    def seal_step(self, cursor: SealCursor) -> tuple[int, SealCursor]:
        """One short transaction of sealing (store/sqlite_chunks.py): the head rows of one
        complete window for SEAL_SERIES series ids. Returns (buckets sealed, the cursor to call
        again with; None when no complete window is left in any head)."""
        conn = self._conn()
        if cursor is None:
            cursor = first_sealable(
                conn, self.resolutions, read_complete_until(conn, self.resolutions)
            )
            if cursor is None:
                return 0, None
        level, window, lo, upto = cursor
        res = self.resolutions[level]
        finest = level == 0
        (top,) = conn.execute("SELECT coalesce(max(id), 0) FROM series").fetchone()
        sweep = lo > top
        if (
            sweep
            and not conn.execute(
                f"SELECT 1 FROM {tier_table(res)} WHERE ts >= ? AND ts < ? LIMIT 1",
                (window, min(upto, window + chunk_span(res))),
            ).fetchone()
        ):
            return self.seal_step(None)  # what was complete of the window is sealed: on
        hi = lo + SEAL_SERIES
        names = series_names(conn, "1", ()) if sweep else series_names(
            conn, "id >= ? AND id < ?", (lo, hi))  # fmt: skip
        n = 0

        def work(c: sqlite3.Connection) -> None:
            nonlocal n

            def head(where: str, args: tuple[object, ...]) -> RowBatch:
                return head_row_batch(c, res, where, args, names.get)

            n = seal_unit(c, res, finest, window, (lo, hi), names.get, head, upto=upto, sweep=sweep)

        self._transaction(work)
        return n, (None if sweep else (level, window, hi, upto))

    def delete_expired_chunks(self, res: float, before: float) -> int:
        """Drops tier `res`'s chunks whose whole window is older than `before`, in one
        transaction; returns the buckets they held."""
        n = 0

        def work(c: sqlite3.Connection) -> None:
            nonlocal n
            n = delete_expired_chunks(c, res, before)

        self._transaction(work)
        return n

    def _gauge_currents(self) -> dict[SeriesKey, tuple[float, float]]:
        """The current value and its time of every gauge, as last flushed."""
        by_id = {sid: key for key, sid in self._series_ids.items()}
        rows = self._conn().execute("SELECT series_id, value, ts FROM gauge_current").fetchall()
        return {by_id[sid]: (v, t) for sid, v, t in rows if sid in by_id}

    # -- retention -------------------------------------------------------------------------

    def delete_expired(self, res: float, before: float, cursor: int = -1) -> tuple[int, int]:
        """One short transaction of deletes of tier `res` rows older than `before`.

        Returns (rows deleted, next cursor); call again with the cursor until it is -1. The
        finest tier (time-major) deletes a range at its B-tree's left edge, about one bucket of
        series at a time; coarse tiers (series-major) seek per series, 500 series at a time."""
        batch = expired_batch(self._conn(), res, res == self.resolutions[0], before, cursor)
        if batch is None:
            return 0, -1
        sql, args, nxt = batch
        n = 0

        def work(c: sqlite3.Connection) -> None:
            nonlocal n
            n = c.execute(sql, args).rowcount

        self._transaction(work)
        return n, nxt

    def free_share(self) -> float:
        """The share of the file's pages that are free (deleted rows' space not given back)."""
        conn = self._conn()
        (free,) = conn.execute("PRAGMA freelist_count").fetchone()
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        return float(free) / max(int(pages), 1)

    def vacuum_free_pages(self, pages: int = 2000) -> None:
        conn = self._conn()
        with contextlib.suppress(sqlite3.Error):
            give_back_free_pages(conn, pages)

    def delete_series(self, keys: Sequence[SeriesKey]) -> tuple[int, int]:
        """Deletes these series and their rows in every tier, in one transaction; returns how
        many series were stored and how many rows went."""
        self._ensure_in_place()  # the ids must be those of the file the delete goes to
        conn = self._wconn
        if conn is None:
            raise StoreError("the store is closed")
        ids = series_ids_of(conn, keys)
        rows = 0

        def work(c: sqlite3.Connection) -> None:
            nonlocal rows
            rows = delete_series_rows(c, ids, self.resolutions)
            rows += delete_series_chunks(c, ids, self.resolutions)

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
        conn = self._conn()  # closed: StoreError, as for every other write
        candidates = stale_candidates(conn, self.resolutions, horizon)
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
