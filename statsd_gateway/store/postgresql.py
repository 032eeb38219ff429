"""PostgresStore: the Store protocol (store/base.py) on a PostgreSQL database that many
gateways share, each writing under its own `source` (schema: store/pg_schema.py).

- Connections come from a bounded pool (psycopg_pool); every statement runs under the
  configured statement timeout; a read runs in one REPEATABLE READ transaction (one state).
- An outage — the server stopped or unreachable, the pool exhausted past the connect timeout, a
  statement cancelled by its timeout, a deadlock — is a StoreError: the flusher keeps the data
  in memory and retries, /readyz says the store is failing. An error of the data itself (a
  value PostgreSQL cannot hold, a series stored by another gateway with another type)
  propagates as raised, so the flusher sets those series aside.
- Retention drops whole time partitions and deletes the rows of the one the cut falls in
  (pg_schema.py); series deletions take the series lock exclusively (pg_series.py). One
  gateway at a time does either (advisory locks); the others skip the turn.
- Idempotency keys are claimed in the shared store before their request is applied
  (pg_idempotency.py).
- Complete windows of this gateway's rows are sealed into chunks of the SQLite store's format
  (store/pg_chunks.py), a short transaction at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors

from statsd_gateway.errors import StoreError, StoreTimeout
from statsd_gateway.model import Matcher, MetricType, RowBatch, SeriesKey
from statsd_gateway.store import pg_reads, pg_series
from statsd_gateway.store.base import (
    FlushWrite,
    IdempotencyRecord,
    OthersSeries,
    RowRead,
    SeriesInfo,
    StoredRows,
    StoredState,
    T,
)
from statsd_gateway.store.chunks import ChunkError
from statsd_gateway.store.pg_chunks import seal_next
from statsd_gateway.store.pg_connect import connection_options, hold_source, safe_dsn
from statsd_gateway.store.pg_idempotency import claim_key, release_key
from statsd_gateway.store.pg_schema import (
    PARTITION_LOCK,
    SERIES_LOCK,
    drop_expired,
    migrate,
    partition_ddl,
    partition_span,
    partition_start,
)
from statsd_gateway.store.pg_series import BUMP_GENERATION, OthersWatch
from statsd_gateway.store.pg_writes import (
    SeriesIds,
    begin_flush,
    flush_keys,
    resolve_series,
    write_flush_rows,
)

log = logging.getLogger(__name__)

# Errors of the data a flush holds, not of the server: a value out of range (class 22), a
# constraint (23), a value past a limit of PostgreSQL's (54: a series key too long to index).
_DATA_ERRORS = (pg_errors.DataError, pg_errors.IntegrityError, pg_errors.ProgramLimitExceeded)


class PostgresStore:
    """The shared store at `dsn`, written by this gateway as `source`."""

    def __init__(
        self,
        dsn: str,
        *,
        source: str | None = None,
        resolutions: Sequence[float] = (10.0, 60.0, 3600.0),
        read_timeout: float = 10.0,
        statement_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        pool_size: int = 4,
        password_file: str | None = None,
        clock: Callable[[], float],
    ) -> None:
        self.resolutions = tuple(resolutions)
        self.read_timeout = read_timeout
        self.source = source or socket.gethostname()
        self.connect_timeout = connect_timeout
        self.clock = clock
        self.where = safe_dsn(dsn)
        self._kwargs = connection_options(
            dsn,
            self.source,
            statement_timeout=statement_timeout,
            connect_timeout=connect_timeout,
            password_file=password_file,
        )
        self._dsn = dsn
        self._pool = psycopg_pool.AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=pool_size,
            kwargs=self._kwargs,
            open=False,
            timeout=connect_timeout,
            check=psycopg_pool.AsyncConnectionPool.check_connection,  # drop dead ones first
            name="statsd-gateway",
        )
        # This process's claim on its source: a session advisory lock on a connection of its
        # own, and a nonce in the source's row that every flush checks (pg_writes.py).
        self._owner: psycopg.AsyncConnection | None = None
        self._nonce = uuid.uuid4().hex
        self._source_id = 0
        self._series = SeriesIds()
        self._last_write: dict[int, float] = {}  # series id -> last write by this process
        self._partitions: set[tuple[float, float]] = set()
        self._others = OthersWatch()

    @property
    def gone(self) -> str | None:
        return None  # the server's outages are StoreErrors of the calls, nothing to reopen

    # -- connections -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _connection(self, *, reading: bool = False) -> AsyncIterator[psycopg.AsyncConnection]:
        """A pooled connection; the server's outages as StoreError (StoreTimeout when a read
        ran past its timeout)."""
        try:
            async with self._pool.connection() as conn:
                yield conn
        except psycopg_pool.PoolTimeout as e:
            raise StoreError(f"PostgreSQL at {self.where} is unreachable: {e}") from None
        except pg_errors.QueryCanceled:
            if reading:
                raise StoreTimeout(f"the query ran longer than {self.read_timeout:g}s") from None
            raise StoreError("a write ran past storage.postgresql.statement_timeout") from None
        except ChunkError as e:
            # Damage on disk, not the query's fault: the read fails as an outage of the store.
            raise StoreError(f"read failed: a stored chunk is damaged ({e})") from None
        except pg_errors.CheckViolation as e:
            # The schema has no CHECK constraint: a row outside every partition (one dropped
            # by another gateway's retention meanwhile). Made again at the next try.
            self._partitions.clear()
            raise StoreError(f"write failed: {e}") from None
        except _DATA_ERRORS:
            raise  # an error of the data: the flusher sets the series aside
        except psycopg.Error as e:
            # Anything else the server or the connection says (it is down, read-only after a
            # failover, a privilege revoked, the schema gone) is an outage: kept and retried.
            raise StoreError(f"PostgreSQL at {self.where}: {e}".strip()) from None

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> StoredState:
        try:
            return await self._open()
        except BaseException:
            await self.close()
            raise

    async def _open(self) -> StoredState:
        await self._pool.open(wait=False)
        try:
            await self._pool.wait(self.connect_timeout)
        except psycopg_pool.PoolTimeout:
            await self._pool.close()
            raise StoreError(
                f"cannot connect to PostgreSQL at {self.where} within {self.connect_timeout:g}s"
            ) from None
        async with self._connection() as conn:
            async with conn.transaction():
                await migrate(conn, self.resolutions)
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO sources(name) VALUES (%s) ON CONFLICT (name) DO NOTHING",
                    (self.source,),
                )
                cur = await conn.execute("SELECT id FROM sources WHERE name = %s", (self.source,))
                row = await cur.fetchone()
                assert row is not None
                self._source_id = int(row[0])
                await self._own_source()
                await conn.execute(
                    "UPDATE sources SET owner = %s WHERE id = %s", (self._nonce, self._source_id)
                )
                series = await pg_reads.read_all_series(conn)
                self._others.saw(series, await pg_reads.read_series_generation(conn))
                seq = await pg_reads.read_source_seq(conn, self._source_id)
                complete = await pg_reads.read_complete_until(conn, self._source_id)
                gauges = await pg_reads.read_gauges(conn, self._source_id)
        for s in series:
            key = (s.tenant, s.name, s.tags)
            self._series.ids[key] = s.id
            self._series.types[key] = s.type
        log.info("store: PostgreSQL at %s, as source %r", self.where, self.source)
        return StoredState(
            series, seq, {r: complete.get(r, 0.0) for r in self.resolutions[1:]}, gauges
        )

    async def _own_source(self) -> None:
        if self._owner is not None:  # opened again: the session's lock is given up first
            with contextlib.suppress(psycopg.Error):
                await self._owner.close()
            self._owner = None
        self._owner = await hold_source(self._dsn, self._kwargs, self._source_id, self.source)

    async def close(self, timeout: float | None = None) -> None:
        await self._pool.close(timeout if timeout is not None else 5.0)
        if self._owner is not None:
            with contextlib.suppress(psycopg.Error):
                await self._owner.close()
            self._owner = None

    async def ensure_in_place(self, *, recreate: bool = False) -> None:
        return None

    # -- writes ----------------------------------------------------------------------------

    async def _ensure_partitions(self, flush_tiers: Mapping[float, RowBatch]) -> None:
        """Makes the time partitions the rows fall in (and each one's successor, so that the
        next is made ahead of need), one gateway at a time."""
        wanted: set[tuple[float, float]] = set()
        for res, rows in flush_tiers.items():
            if len(rows):
                for start in {partition_start(res, t) for t in set(rows.ts.tolist())}:
                    wanted |= {(res, start), (res, start + partition_span(res))}
        missing = sorted(wanted - self._partitions)
        if not missing:
            return
        async with self._connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK,))
            for res, start in missing:
                await conn.execute(partition_ddl(res, start))
        self._partitions |= set(missing)

    async def write_flush(self, flush: FlushWrite, *, trial: bool = False) -> bool:
        tiers: dict[float, RowBatch] = {self.resolutions[0]: flush.rows, **flush.rollups}
        await self._ensure_partitions(tiers)
        now = self.clock()
        new: dict[SeriesKey, int] = {}
        async with self._connection() as conn, conn.transaction(force_rollback=trial):
            stored = await begin_flush(conn, self._source_id, self._nonce, self._series)
            if flush.seq is not None and flush.seq <= stored:
                return False
            keys = flush_keys(flush)
            await resolve_series(conn, self._series, keys, now, new)
            ids = {**self._series.ids, **new}
            await write_flush_rows(conn, self._source_id, self.resolutions, flush, ids, now)
            if flush.seq is not None:
                await conn.execute(
                    "UPDATE sources SET flushed_seq = %s WHERE id = %s",
                    (flush.seq, self._source_id),
                )
        if not trial:
            self._remember(new, keys, now)
        return True

    def _remember(
        self, new: Mapping[SeriesKey, int], keys: Sequence[tuple[SeriesKey, MetricType]], now: float
    ) -> None:
        self._series.ids.update(new)
        for key, mtype in keys:
            self._series.types.setdefault(key, mtype)
            sid = self._series.ids.get(key)
            if sid is not None:
                self._last_write[sid] = now

    async def write_rollups(
        self, rollups: Mapping[float, RowBatch], complete_until: Mapping[float, float]
    ) -> None:
        await self.write_flush(
            FlushWrite(
                seq=None,
                rows=RowBatch.from_rows([]),
                rollups=rollups,
                complete_until=complete_until,
            )
        )

    async def delete_series(self, keys: Sequence[SeriesKey]) -> tuple[int, int]:
        async with self._series_change() as conn:
            ids = await pg_series.series_ids_of(conn, keys)
            rows = await pg_series.delete_series(conn, self._source_id, self.resolutions, ids)
        return len(ids), rows

    @contextlib.asynccontextmanager
    async def _series_change(self) -> AsyncIterator[psycopg.AsyncConnection]:
        """A transaction that deletes series: the series lock held exclusively (no flush is
        writing meanwhile), the generation bumped (every gateway reads its ids again)."""
        async with self._connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SERIES_LOCK,))
            await conn.execute(BUMP_GENERATION)
            yield conn
        self._series.forget()

    async def delete_expired(self, resolution: float, before: float) -> int:
        async with self._connection() as conn, conn.transaction():
            done = await drop_expired(conn, resolution, before)
        if done is None:
            return 0  # another gateway is at it
        deleted, dropped = done
        self._partitions -= {(resolution, start) for start in dropped}
        return deleted

    async def seal_chunks(self, on_sealed: Callable[[int], None] | None = None) -> int:
        """Seals this source's complete windows, a unit per transaction (pg_chunks.py)."""
        total = 0
        while True:
            async with self._connection() as conn, conn.transaction():
                # The source's row lock: no flush of this source commits during the unit.
                await conn.execute(
                    "SELECT 1 FROM sources WHERE id = %s FOR UPDATE", (self._source_id,)
                )
                complete = await pg_reads.read_complete_until(conn, self._source_id)
                n, progressed = await seal_next(conn, self._source_id, self.resolutions, complete)
            total += n
            if n and on_sealed is not None:
                on_sealed(n)
            if not progressed:
                return total

    async def forget_stale_series(self, horizon: float) -> list[SeriesKey]:
        """Series created before `horizon`, not written by this process since, with no row or
        chunk in a coarse tier, nor a row in the finest since `horizon`, from any gateway (as
        SQLite's, none without coarse tiers). The candidates are found without a lock; only
        they are checked again under the series lock, which one gateway at a time takes (the
        others skip the turn), and only a deletion bumps the generation."""
        if len(self.resolutions) < 2:
            return []
        sql = pg_series.stale_series_sql(self.resolutions)
        async with self._reading() as conn:
            cur = await conn.execute(sql, (horizon, horizon))
            found = await cur.fetchall()
        ids = [int(r[0]) for r in found if self._last_write.get(int(r[0]), -1.0) < horizon]
        if not ids:
            return []
        async with self._connection() as conn, conn.transaction():
            stale = await pg_series.delete_stale(conn, self._source_id, sql, horizon, ids)
        if not stale:
            return []
        self._series.forget()
        for sid, _ in stale:
            self._last_write.pop(sid, None)
        return [key for _, key in stale]

    async def series_of_others(self) -> OthersSeries:
        async with self._reading() as conn:
            rows, deleted = await self._others.read(conn, self._source_id)
        return self._others.apply(rows, deleted, self._series)

    async def claim_idempotency(self, claim: IdempotencyRecord) -> IdempotencyRecord | None:
        async with self._connection() as conn:
            return await claim_key(conn, self._source_id, claim)

    async def release_idempotency(self, claim: IdempotencyRecord) -> None:
        async with self._connection() as conn:
            await release_key(conn, self._source_id, claim)

    # -- reads -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[psycopg.AsyncConnection]:
        async with self._connection(reading=True) as conn, conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            await conn.execute(
                "SELECT set_config('statement_timeout', %s, true)",
                (f"{max(1, round(self.read_timeout * 1000))}ms",),
            )
            yield conn

    async def flushed_seq(self) -> int:
        async with self._reading() as conn:
            return await pg_reads.read_source_seq(conn, self._source_id)

    async def read_rows(self, request: RowRead) -> StoredRows:
        async with self._reading() as conn:
            return await pg_reads.read_stored_rows(conn, self._source_id, request, self.resolutions)

    async def read_rows_then(self, request: RowRead, then: Callable[[StoredRows], T]) -> T:
        return await asyncio.to_thread(then, await self.read_rows(request))

    async def read_for_rebuild(self, resolution: float, since: float) -> RowBatch:
        async with self._reading() as conn:
            rows = await pg_reads.read_rebuild_rows(conn, self._source_id, resolution, since)
        now = self.clock()
        for key in set(rows.keys):
            sid = self._series.ids.get(key)
            if sid is not None:
                self._last_write[sid] = now
        return rows

    async def series(
        self, tenant: str, name: str | None = None, matchers: Sequence[Matcher] = ()
    ) -> list[SeriesInfo]:
        async with self._reading() as conn:
            return await pg_reads.read_series(conn, tenant, name, matchers)

    async def tag_values(self, tenant: str, key: str, name: str | None = None) -> dict[str, int]:
        async with self._reading() as conn:
            return await pg_reads.read_tag_values(conn, tenant, key, name)

    async def idempotency_record(self, tenant: str, key: str) -> IdempotencyRecord | None:
        async with self._reading() as conn:
            return await pg_reads.read_idempotency(conn, tenant, key)
