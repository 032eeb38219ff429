"""SqliteStore: one writer thread, reader threads, every read time-limited.

- The write connection lives on one dedicated thread; every write is a function run there inside
  `BEGIN IMMEDIATE … COMMIT`. A flush is one transaction.
- A bucket already on disk is merged with, never overwritten (`ON CONFLICT DO UPDATE`, with the
  sketch and HyperLogLog merged by SQL functions).
- Reads run on a small pool, each thread with its own connection; a progress handler aborts a
  read that overruns the time limit (StoreTimeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from statsd_gateway import sketch
from statsd_gateway.model import BucketRow, MetricType, SeriesKey, Tags
from statsd_gateway.store.schema import SchemaError, migrate

T = TypeVar("T")


class StoreError(Exception):
    """The store cannot be opened or written."""


class StoreTimeout(StoreError):
    pass


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    tenant: str
    key: str
    body_sha256: str
    status: int
    response: str  # the JSON body answered
    created: float
    seq: int = 0  # the snapshot holding the points this request applied


@dataclass(frozen=True, slots=True)
class SeriesInfo:
    id: int
    tenant: str
    name: str
    tags: Tags
    type: MetricType


def tags_json(tags: Tags) -> str:
    return json.dumps(dict(tags), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _tags_from_json(text: str) -> Tags:
    return tuple(sorted(json.loads(text).items()))


_UPSERT = """
INSERT INTO points_raw(ts, series_id, count, sum, min, max, last, last_ts, sketch, hll)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(ts, series_id) DO UPDATE SET
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


class SqliteStore:
    def __init__(self, path: str | Path, *, read_timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.read_timeout = read_timeout
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._readers = ThreadPoolExecutor(2, thread_name_prefix="sqlite-reader")
        self._local = threading.local()
        self._wconn: sqlite3.Connection | None = None
        self._series_ids: dict[SeriesKey, int] = {}
        self._read_conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> list[SeriesInfo]:
        """Opens (creating or migrating) the database; returns every known series."""
        return self._writer.submit(self._open).result()

    def _open(self) -> list[SeriesInfo]:
        conn: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=5000")
            migrate(conn, sketch.FORMAT)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        except (sqlite3.DatabaseError, SchemaError, OSError) as e:
            if conn is not None:
                conn.close()
            raise StoreError(f"cannot open the database {self.path}: {e}") from None
        conn.create_function("dd_merge", 2, sketch.merge_blobs, deterministic=True)
        conn.create_function("hll_merge", 2, sketch.hll_merge_pair, deterministic=True)
        self._wconn = conn
        out = []
        for sid, tenant, name, tags, mtype in conn.execute(
            "SELECT id, tenant, name, tags, type FROM series"
        ):
            info = SeriesInfo(sid, tenant, name, _tags_from_json(tags), MetricType(mtype))
            self._series_ids[(tenant, name, info.tags)] = sid
            out.append(info)
        return out

    def close(self) -> None:
        def _close() -> None:
            if self._wconn is not None:
                with contextlib.suppress(sqlite3.Error):  # e.g. a full disk: close regardless
                    self._wconn.execute("PRAGMA optimize")
                self._wconn.close()
                self._wconn = None

        self._writer.submit(_close).result()
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        with self._lock:
            for c in self._read_conns:
                c.close()
            self._read_conns.clear()

    # -- writes ----------------------------------------------------------------------------

    async def run_write(self, fn: Callable[[], T]) -> T:
        """Runs `fn` on the writer thread (it may call `write_rows`)."""
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn)

    def write_rows(
        self,
        rows: Sequence[BucketRow],
        flushed_seq: int | None = None,
        idempotency: Sequence[IdempotencyRecord] = (),
        idempotency_expire_before: float | None = None,
    ) -> None:
        """Writer thread only. One transaction: series rows, bucket upserts, flushed_seq, and the
        idempotency records of the requests whose points these rows hold."""
        conn = self._wconn
        if conn is None:
            raise StoreError("the store is closed")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                params = []
                for r in rows:
                    sid = self._series_ids.get(r.key)
                    if sid is None:
                        sid = self._insert_series(conn, r.key, r.type)
                    params.append(
                        (
                            r.ts,
                            sid,
                            r.count,
                            r.sum,
                            r.min,
                            r.max,
                            r.last,
                            r.last_ts,
                            None if r.sketch is None else sketch.encode(r.sketch),
                            r.hll,
                        )
                    )
                conn.executemany(_UPSERT, params)
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
                    conn.execute(
                        "UPDATE meta SET value=? WHERE key='flushed_seq'", (str(flushed_seq),)
                    )
                conn.execute("COMMIT")
            except BaseException:
                # SQLite may have rolled back already (a full disk does): keep the first error.
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                # Series inserted in the rolled-back transaction are gone: forget their ids.
                valid = {r[0] for r in conn.execute("SELECT id FROM series")}
                self._series_ids = {k: v for k, v in self._series_ids.items() if v in valid}
                raise
        except sqlite3.Error as e:
            raise StoreError(f"write failed: {e}") from e

    def _insert_series(self, conn: sqlite3.Connection, key: SeriesKey, mtype: MetricType) -> int:
        tenant, name, tags = key
        cur = conn.execute(
            "INSERT INTO series(tenant, name, tags, type) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(tenant, name, tags) DO UPDATE SET type=type RETURNING id",
            (tenant, name, tags_json(tags), mtype.value),
        )
        sid = int(cur.fetchone()[0])
        self._series_ids[key] = sid
        return sid

    def flushed_seq(self) -> int:
        return self._writer.submit(self._read_flushed_seq_w).result()

    def _read_flushed_seq_w(self) -> int:
        assert self._wconn is not None
        return int(
            self._wconn.execute("SELECT value FROM meta WHERE key='flushed_seq'").fetchone()[0]
        )

    # -- reads -----------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA busy_timeout=5000")
            self._local.conn = conn
            with self._lock:
                self._read_conns.append(conn)
        return conn

    async def run_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Runs `fn(conn)` on a reader thread inside one read transaction, time-limited."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._read, fn)

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._reader()
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


def read_flushed_seq(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT value FROM meta WHERE key='flushed_seq'").fetchone()[0])


def read_series(conn: sqlite3.Connection, tenant: str, name: str | None = None) -> list[SeriesInfo]:
    if name is None:
        cur = conn.execute(
            "SELECT id, tenant, name, tags, type FROM series WHERE tenant=?", (tenant,)
        )
    else:
        cur = conn.execute(
            "SELECT id, tenant, name, tags, type FROM series WHERE tenant=? AND name=?",
            (tenant, name),
        )
    return [
        SeriesInfo(sid, t, n, _tags_from_json(tags), MetricType(mt)) for sid, t, n, tags, mt in cur
    ]


def read_rows(
    conn: sqlite3.Connection, series: Sequence[SeriesInfo], since: float, until: float
) -> list[BucketRow]:
    """Bucket rows of the given series with since <= ts < until."""
    by_id = {s.id: s for s in series}
    out: list[BucketRow] = []
    ids = list(by_id)
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        marks = ",".join("?" * len(chunk))
        cur = conn.execute(
            "SELECT ts, series_id, count, sum, min, max, last, last_ts, sketch, hll "
            f"FROM points_raw WHERE ts >= ? AND ts < ? AND series_id IN ({marks})",
            (since, until, *chunk),
        )
        for ts, sid, count, total, mn, mx, last, last_ts, blob, hll in cur:
            s = by_id[sid]
            out.append(
                BucketRow(
                    ts=ts,
                    key=(s.tenant, s.name, s.tags),
                    type=s.type,
                    count=count,
                    sum=total,
                    min=mn,
                    max=mx,
                    last=last,
                    last_ts=last_ts,
                    sketch=None if blob is None else sketch.decode(blob),
                    hll=hll,
                )
            )
    return out


def read_idempotency(conn: sqlite3.Connection, tenant: str, key: str) -> IdempotencyRecord | None:
    row = conn.execute(
        "SELECT body_sha256, status, response, created FROM idempotency WHERE tenant=? AND key=?",
        (tenant, key),
    ).fetchone()
    if row is None:
        return None
    return IdempotencyRecord(tenant, key, row[0], int(row[1]), row[2], float(row[3]))
