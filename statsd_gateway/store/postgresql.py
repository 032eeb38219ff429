"""PostgresStore: the Store protocol (store/base.py) on a PostgreSQL database that many
gateways share, each writing under its own `source` (schema: store/pg_schema.py).

- Connections come from a bounded pool (psycopg_pool); every statement runs under the
  configured statement timeout; a read runs in one REPEATABLE READ transaction (one state).
- An outage — the server stopped or unreachable, the pool exhausted past the connect timeout, a
  statement cancelled by its timeout, a deadlock — is a StoreError: the flusher keeps the data
  in memory and retries, /readyz says the store is failing. An error of the data itself (a
  value PostgreSQL cannot hold, a series stored by another gateway with another type)
  propagates as raised, so the flusher sets those series aside.
- Retention drops whole time partitions and deletes the rows of the one the cut falls in;
  series deletions take the series lock exclusively (pg_writes.py). One gateway at a time does
  either (advisory locks); the others skip the turn.
- Complete windows of this gateway's rows are sealed into chunks of the SQLite store's format
  (store/pg_chunks.py), a short transaction at a time.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors

from statsd_gateway import sketch
from statsd_gateway.errors import StoreError, StoreTimeout
from statsd_gateway.model import Matcher, MetricType, RowBatch, SeriesKey
from statsd_gateway.store import pg_reads
from statsd_gateway.store.base import (
    FlushWrite,
    IdempotencyRecord,
    OthersSeries,
    RowRead,
    SeriesInfo,
    StoredRows,
    StoredState,
)
from statsd_gateway.store.chunks import ChunkError, chunk_span
from statsd_gateway.store.pg_chunks import chunk_ddl, seal_next
from statsd_gateway.store.pg_schema import (
    MIGRATION_LOCK,
    PARTITION_LOCK,
    RETENTION_LOCK,
    SCHEMA_VERSION,
    SERIES_LOCK,
    SOURCE_LOCK,
    migration_steps,
    partition_ddl,
    partition_span,
    partition_start,
    tier_ddl,
)
from statsd_gateway.store.pg_writes import (
    SeriesIds,
    begin_flush,
    flush_keys,
    resolve_series,
    write_flush_rows,
)
from statsd_gateway.store.schema import (
    SchemaError,
    chunk_table,
    tags_from_json,
    tags_json,
    tier_table,
)

log = logging.getLogger(__name__)

SKETCH_FORMAT = f"{sketch.FORMAT}:mapping={sketch.MAPPING_ID}"

# A claim still open after its gateway flushed its snapshot, and flushed again this much later
# (by that gateway's clock), was abandoned: the gateway stopped between applying the request
# and logging it. The grace covers a flush that began before the request was applied and
# committed after, whose snapshot does not hold it (a write runs at most statement_timeout).
CLAIM_GRACE = 120.0


async def _record_deleted(conn: psycopg.AsyncConnection, source_id: int, ids: list[int]) -> None:
    """The keys of series about to be deleted, under the generation just made (the caller
    bumped it in this transaction), for the other gateways to forget."""
    await conn.execute(
        "INSERT INTO series_deleted SELECT (SELECT value::bigint FROM meta "
        "WHERE key = 'series_generation'), %s, tenant, name, tags FROM series "
        "WHERE id = ANY(%s)",
        (source_id, ids),
    )


_BUMP_GENERATION = (
    "UPDATE meta SET value = (value::bigint + 1)::text WHERE key = 'series_generation'"
)
# Errors of the data a flush holds, not of the server: a value out of range (class 22), a
# constraint (23), a value past a limit of PostgreSQL's (54: a series key too long to index).
_DATA_ERRORS = (pg_errors.DataError, pg_errors.IntegrityError, pg_errors.ProgramLimitExceeded)
# series_of_others: how far below the highest id seen each call looks, and how often it reads
# every series instead (a transaction that committed long after its ids were taken).
OTHERS_LOOKBACK = 10_000
OTHERS_FULL_EVERY = 30


def safe_dsn(dsn: str) -> str:
    """The DSN without its password, for messages."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(an unparsable DSN)"
    params.pop("password", None)
    params.pop("sslpassword", None)
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items()})


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
        params = psycopg.conninfo.conninfo_to_dict(dsn)
        # The statement timeout joins whatever options the DSN sets (a search_path, say).
        options = f"{params.get('options') or ''} -c statement_timeout="
        options += str(round(statement_timeout * 1000))
        kwargs: dict[str, Any] = {
            "connect_timeout": max(1, round(connect_timeout)),
            "options": options.strip(),
            "application_name": f"statsd-gateway {self.source}"[:63],
            # No server-side prepared statements: PgBouncer's transaction pooling (the scale
            # plan in docs/OPERATIONS.md) hands each transaction another server connection.
            "prepare_threshold": None,
        }
        if password_file is not None:
            kwargs["password"] = Path(password_file).read_text().strip()
        self._kwargs = kwargs
        self._dsn = dsn
        self._pool = psycopg_pool.AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=pool_size,
            kwargs=kwargs,
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
        self._max_seen_id = 0
        self._others_calls = 0
        self._seen_generation = 0  # the series generation whose deletions this one knows

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
                await self._migrate(conn)
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
                cur = await conn.execute("SELECT value FROM meta WHERE key = 'series_generation'")
                self._seen_generation = int((await cur.fetchone() or ("0",))[0])
                seq = await pg_reads.read_source_seq(conn, self._source_id)
                complete = await pg_reads.read_complete_until(conn, self._source_id)
                cur = await conn.execute(
                    "SELECT s.tenant, s.name, s.tags, g.value, g.ts FROM gauge_current g "
                    "JOIN series s ON s.id = g.series_id WHERE g.source_id = %s",
                    (self._source_id,),
                )
                gauges = {
                    (t, n, tags_from_json(tags)): (float(v), float(ts))
                    for t, n, tags, v, ts in await cur.fetchall()
                }
        for s in series:
            self._max_seen_id = max(self._max_seen_id, s.id)
            key = (s.tenant, s.name, s.tags)
            self._series.ids[key] = s.id
            self._series.types[key] = s.type
        log.info("store: PostgreSQL at %s, as source %r", self.where, self.source)
        return StoredState(
            series, seq, {r: complete.get(r, 0.0) for r in self.resolutions[1:]}, gauges
        )

    async def _own_source(self) -> None:
        """Takes this source for this process, or refuses: two gateways writing as one source
        would each skip the other's snapshots as stored already."""
        if self._owner is not None:  # opened again: the session's lock is given up first
            with contextlib.suppress(psycopg.Error):
                await self._owner.close()
        try:
            self._owner = await psycopg.AsyncConnection.connect(
                self._dsn, autocommit=True, **self._kwargs
            )
            cur = await self._owner.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (SOURCE_LOCK, self._source_id)
            )
            taken = (await cur.fetchone() or (False,))[0]
        except psycopg.Error as e:
            raise StoreError(f"PostgreSQL at {self.where}: {e}") from None
        if not taken:
            raise SchemaError(
                f"another gateway is running as source {self.source!r} on this database: give "
                "each gateway its own storage.postgresql.source"
            )

    async def _migrate(self, conn: psycopg.AsyncConnection) -> None:
        """Creates or upgrades the schema, one gateway at a time; refuses a newer one."""
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        cur = await conn.execute("SELECT to_regclass('meta') IS NOT NULL")
        exists = (await cur.fetchone() or (False,))[0]
        version = 0
        if exists:
            cur = await conn.execute("SELECT value FROM meta WHERE key = 'schema_version'")
            row = await cur.fetchone()
            version = int(row[0]) if row else 0
        steps = migration_steps(version)
        for step in steps:
            await conn.execute(step)
        if steps:
            await conn.execute(
                "INSERT INTO meta VALUES ('schema_version', %s) ON CONFLICT (key) "
                "DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )
            await conn.execute(
                "INSERT INTO meta VALUES ('sketch_format', %s), ('series_generation', '0') "
                "ON CONFLICT (key) DO NOTHING",
                (SKETCH_FORMAT,),
            )
            log.info(
                "store: PostgreSQL schema brought from version %d to %d", version, SCHEMA_VERSION
            )
        cur = await conn.execute("SELECT value FROM meta WHERE key = 'sketch_format'")
        fmt = (await cur.fetchone() or ("",))[0]
        if fmt != SKETCH_FORMAT:
            raise SchemaError(f"sketch format {fmt!r} is not {SKETCH_FORMAT!r}")
        for res in self.resolutions:
            await conn.execute(tier_ddl(res))
            await conn.execute(chunk_ddl(res))

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
            ids = await self._ids_of(conn, keys)
            rows = 0
            for res in self.resolutions:
                cur = await conn.execute(
                    f"DELETE FROM {tier_table(res)} WHERE series_id = ANY(%s)", (ids,)
                )
                rows += max(cur.rowcount, 0)
                cur = await conn.execute(
                    f"DELETE FROM {chunk_table(res)} WHERE series_id = ANY(%s) RETURNING rows",
                    (ids,),
                )
                rows += sum(int(n) for (n,) in await cur.fetchall())
            await conn.execute("DELETE FROM gauge_current WHERE series_id = ANY(%s)", (ids,))
            await _record_deleted(conn, self._source_id, ids)
            await conn.execute("DELETE FROM series WHERE id = ANY(%s)", (ids,))
        return len(ids), rows

    async def _ids_of(self, conn: psycopg.AsyncConnection, keys: Sequence[SeriesKey]) -> list[int]:
        if not keys:
            return []
        cur = await conn.execute(
            "SELECT s.id FROM unnest(%s::text[], %s::text[], %s::text[]) AS u(t, n, g) "
            "JOIN series s ON s.tenant = u.t AND s.name = u.n AND md5(s.tags) = md5(u.g) "
            "AND s.tags = u.g",
            ([k[0] for k in keys], [k[1] for k in keys], [tags_json(k[2]) for k in keys]),
        )
        return [int(r[0]) for r in await cur.fetchall()]

    @contextlib.asynccontextmanager
    async def _series_change(self) -> AsyncIterator[psycopg.AsyncConnection]:
        """A transaction that deletes series: the series lock held exclusively (no flush is
        writing meanwhile), the generation bumped (every gateway reads its ids again)."""
        async with self._connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SERIES_LOCK,))
            await conn.execute(_BUMP_GENERATION)
            yield conn
        self._series.forget()
        self._series.generation = -1

    async def delete_expired(self, resolution: float, before: float) -> int:
        table = tier_table(resolution)
        async with self._connection() as conn, conn.transaction():
            cur = await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (RETENTION_LOCK,))
            if not (await cur.fetchone() or (False,))[0]:
                return 0  # another gateway is at it
            cur = await conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = to_regclass(%s)",
                (table,),
            )
            deleted = 0
            span = partition_span(resolution)
            for (name,) in await cur.fetchall():
                found = re.fullmatch(rf"{table}_p(-?\d+)", name)
                if found is None:
                    continue  # not one of ours (an operator's): left alone
                start = float(found[1])
                if start + span <= before:
                    # Mostly empty: the head's rows of a closed window are sealed into chunks.
                    count = await conn.execute(f"SELECT count(*) FROM {name}")
                    deleted += int((await count.fetchone() or (0,))[0])
                    await conn.execute(f"DROP TABLE {name}")
                    self._partitions.discard((resolution, start))
            cur = await conn.execute(f"DELETE FROM {table} WHERE ts < %s", (before,))
            deleted += max(cur.rowcount, 0)
            # A chunk is kept whole until its window has aged out, as in SQLite.
            cur = await conn.execute(
                f"DELETE FROM {chunk_table(resolution)} WHERE start + %s <= %s RETURNING rows",
                (chunk_span(resolution), before),
            )
            deleted += sum(int(n) for (n,) in await cur.fetchall())
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
        fine = tier_table(self.resolutions[0])
        no_rows = " AND ".join(
            [
                *(
                    f"NOT EXISTS (SELECT 1 FROM {t} p WHERE p.series_id = s.id)"
                    for r in self.resolutions[1:]
                    for t in (tier_table(r), chunk_table(r))
                ),
                f"NOT EXISTS (SELECT 1 FROM {fine} p WHERE p.series_id = s.id AND p.ts >= %s)",
            ]
        )
        sql = f"SELECT id, tenant, name, tags FROM series s WHERE created < %s AND {no_rows}"
        async with self._reading() as conn:
            cur = await conn.execute(sql, (horizon, horizon))
            found = await cur.fetchall()
        ids = [int(r[0]) for r in found if self._last_write.get(int(r[0]), -1.0) < horizon]
        if not ids:
            return []
        stale: list[tuple[int, SeriesKey]] = []
        async with self._connection() as conn, conn.transaction():
            cur = await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (SERIES_LOCK,))
            if not (await cur.fetchone() or (False,))[0]:
                return []  # flushes hold it, or another gateway is at it: the next turn
            cur = await conn.execute(sql + " AND s.id = ANY(%s)", (horizon, horizon, ids))
            stale = [(int(sid), (t, n, tags_from_json(g))) for sid, t, n, g in await cur.fetchall()]
            gone = [sid for sid, _ in stale]
            if gone:
                await conn.execute("DELETE FROM gauge_current WHERE series_id = ANY(%s)", (gone,))
                await conn.execute(_BUMP_GENERATION)
                await _record_deleted(conn, self._source_id, gone)
                await conn.execute("DELETE FROM series WHERE id = ANY(%s)", (gone,))
        if stale:
            self._series.forget()
            self._series.generation = -1
        for sid, _ in stale:
            self._last_write.pop(sid, None)
        return [key for _, key in stale]

    async def series_of_others(self) -> OthersSeries:
        """The series this gateway does not know yet, and those deleted by a generation it has
        not seen. Ids rise, but a transaction may commit after one holding a higher id, so each
        call looks back OTHERS_LOOKBACK ids below the highest seen, and every
        OTHERS_FULL_EVERY-th call reads them all."""
        self._others_calls += 1
        since = 0 if self._others_calls % OTHERS_FULL_EVERY == 0 else self._max_seen_id
        async with self._reading() as conn:
            cur = await conn.execute(
                "SELECT id, tenant, name, tags, type FROM series WHERE id > %s ORDER BY id",
                (max(0, since - OTHERS_LOOKBACK),),
            )
            rows = await cur.fetchall()
            cur = await conn.execute(
                "SELECT generation, tenant, name, tags FROM series_deleted WHERE generation > %s "
                "AND source_id <> %s",  # this gateway forgot its own deletions as it made them
                (self._seen_generation, self._source_id),
            )
            deleted = await cur.fetchall()
        out = []
        for sid, tenant, name, tags, mtype in rows:
            self._max_seen_id = max(self._max_seen_id, int(sid))
            key = (tenant, name, tags_from_json(tags))
            if key not in self._series.ids:
                info = SeriesInfo(int(sid), tenant, name, key[2], MetricType(mtype))
                self._series.ids[key] = info.id
                self._series.types[key] = info.type
                out.append(info)
        gone: list[SeriesKey] = []
        for generation, tenant, name, tags in deleted:
            self._seen_generation = max(self._seen_generation, int(generation))
            key = (tenant, name, tags_from_json(tags))
            self._series.ids.pop(key, None)
            self._series.types.pop(key, None)
            gone.append(key)
        return OthersSeries(out, gone)

    async def claim_idempotency(self, claim: IdempotencyRecord) -> IdempotencyRecord | None:
        """Claims the key for this gateway unless it is answered or claimed by a gateway still
        applying it (abandoned claims are taken over: CLAIM_GRACE)."""
        async with self._connection() as conn:
            while True:  # again only if the record expired between the two statements
                async with conn.transaction():
                    cur = await conn.execute(
                        "INSERT INTO idempotency VALUES (%s, %s, %s, 0, '', %s, %s, %s) "
                        "ON CONFLICT (tenant, key) DO NOTHING",
                        (claim.tenant, claim.key, claim.body_sha256, claim.created,
                         self._source_id, claim.seq),
                    )  # fmt: skip
                    if cur.rowcount == 1:
                        return None
                    cur = await conn.execute(
                        "SELECT i.tenant, i.key, i.body_sha256, i.status, i.response, i.created, "
                        "i.seq, i.status = 0 AND s.flushed_seq >= i.seq "
                        "AND s.flushed_at >= i.created + %s "
                        "FROM idempotency i JOIN sources s ON s.id = i.source_id "
                        "WHERE i.tenant = %s AND i.key = %s FOR UPDATE OF i",
                        (CLAIM_GRACE, claim.tenant, claim.key),
                    )
                    row = await cur.fetchone()
                    if row is None:
                        continue
                    *stored, abandoned = row
                    if not abandoned:
                        return IdempotencyRecord(*stored)
                    await conn.execute(
                        "UPDATE idempotency SET body_sha256 = %s, created = %s, source_id = %s, "
                        "seq = %s WHERE tenant = %s AND key = %s",
                        (claim.body_sha256, claim.created, self._source_id, claim.seq,
                         claim.tenant, claim.key),
                    )  # fmt: skip
                    return None

    async def release_idempotency(self, claim: IdempotencyRecord) -> None:
        async with self._connection() as conn, conn.transaction():
            await conn.execute(
                "DELETE FROM idempotency WHERE tenant = %s AND key = %s AND status = 0 "
                "AND source_id = %s",
                (claim.tenant, claim.key, self._source_id),
            )

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
