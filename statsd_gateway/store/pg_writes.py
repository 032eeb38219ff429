"""Writing to the PostgreSQL store: a flush as one transaction, the series it names, and the
bucket rows appended with COPY.

Many gateways write one database at once, so nothing here updates a row another gateway
writes: bucket rows carry this gateway's source id and are appended, never merged in place (a
late point is one more row for its bucket; readers merge rows of a bucket as they merge sources);
the seq, gauges and rollup progress are rows of this source. Series are shared: a new one is
inserted `ON CONFLICT DO NOTHING` in key order (so two gateways inserting the same new series
wait for one another instead of deadlocking) and read back; one stored with another type is a
SeriesTypeConflict, an error of the data that the flusher sets aside, not an outage.

Every flush takes the series lock shared and checks the series generation: whatever deletes
series takes it exclusively and bumps the generation, so no flush writes rows for a series id
deleted under it (its cached ids are dropped and read again).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import psycopg

from statsd_gateway import sketch
from statsd_gateway.errors import StoreError
from statsd_gateway.model import MetricType, RowBatch, SeriesKey
from statsd_gateway.store.base import FlushWrite, IdempotencyRecord
from statsd_gateway.store.pg_schema import SERIES_LOCK
from statsd_gateway.store.schema import tags_json, tier_table

_COPY_COLUMNS = (
    "source_id, series_id, ts, count, sum, min, max, last, last_ts, sketch, hll, written"
)


class SeriesTypeConflict(ValueError):
    """A series stored with one type (by any gateway) written with another."""


class SeriesIds:
    """This gateway's cache of the shared series ids, valid for one series generation."""

    def __init__(self) -> None:
        self.ids: dict[SeriesKey, int] = {}
        self.types: dict[SeriesKey, MetricType] = {}
        self.generation = -1

    def forget(self) -> None:
        """Every id dropped, valid for no generation (the next flush reads them again)."""
        self.ids.clear()
        self.types.clear()
        self.generation = -1


async def begin_flush(
    conn: psycopg.AsyncConnection, source_id: int, nonce: str, cache: SeriesIds
) -> int:
    """Locks this source's row and the series (shared); returns the source's flushed seq.
    Drops the cached ids if series were deleted since they were read. Refuses (StoreError)
    when another process has taken the source since this one opened the store."""
    await conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (SERIES_LOCK,))
    cur = await conn.execute(
        "SELECT s.flushed_seq, s.owner, coalesce((SELECT value FROM meta "
        "WHERE key='series_generation'), '0') FROM sources s WHERE s.id = %s FOR UPDATE",
        (source_id,),
    )
    row = await cur.fetchone()
    if row is None or row[1] != nonce:
        raise StoreError(
            "another gateway process now writes as this one's source (storage.postgresql."
            "source): this one stores nothing more; stop one of them"
        )
    generation = int(row[2])
    if generation != cache.generation:
        cache.forget()
        cache.generation = generation
    return int(row[0])


async def resolve_series(
    conn: psycopg.AsyncConnection,
    cache: SeriesIds,
    keys: Iterable[tuple[SeriesKey, MetricType]],
    now: float,
    new: dict[SeriesKey, int],
) -> None:
    """Puts the stored id of every key not cached into `new` (inserting the series missing),
    in the transaction of `conn`; raises SeriesTypeConflict naming a series stored with another
    type. `new` joins the cache only once the transaction commits (the caller's job)."""
    wanted: dict[SeriesKey, MetricType] = {}
    for key, mtype in keys:
        known = cache.types.get(key)
        if known is None and key not in new:
            wanted[key] = mtype
        elif known is not None and known is not mtype:
            _conflict(key, known, mtype)
    if not wanted:
        return
    order = sorted(wanted, key=lambda k: (k[0], k[1], tags_json(k[2])))
    await _check_metric_types(conn, {(k[0], k[1]): wanted[k] for k in order})
    tenants = [k[0] for k in order]
    names = [k[1] for k in order]
    tags = [tags_json(k[2]) for k in order]
    types = [wanted[k].value for k in order]
    await conn.execute(
        "INSERT INTO series(tenant, name, tags, type, created) "
        "SELECT t, n, g, y, %s FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[]) "
        "AS u(t, n, g, y) ORDER BY 1, 2, 3 ON CONFLICT (tenant, name, md5(tags)) DO NOTHING",
        (now, tenants, names, tags, types),
    )
    cur = await conn.execute(
        "SELECT s.id, s.type, u.i FROM unnest(%s::text[], %s::text[], %s::text[]) "
        "WITH ORDINALITY AS u(t, n, g, i) JOIN series s ON s.tenant = u.t AND s.name = u.n "
        "AND md5(s.tags) = md5(u.g) AND s.tags = u.g",
        (tenants, names, tags),
    )
    for sid, stored, i in await cur.fetchall():
        key = order[i - 1]
        if stored != wanted[key].value:
            _conflict(key, MetricType(stored), wanted[key])
        new[key] = int(sid)


async def _check_metric_types(
    conn: psycopg.AsyncConnection, metrics: dict[tuple[str, str], MetricType]
) -> None:
    """Records the type of each metric new to the store; raises SeriesTypeConflict where one
    is stored (by any gateway) with another: a metric has one type, whatever its tags."""
    order = sorted(metrics)
    await conn.execute(
        "INSERT INTO metrics SELECT t, n, y FROM unnest(%s::text[], %s::text[], %s::text[]) "
        "AS u(t, n, y) ORDER BY 1, 2 ON CONFLICT (tenant, name) DO NOTHING",
        ([m[0] for m in order], [m[1] for m in order], [metrics[m].value for m in order]),
    )
    cur = await conn.execute(
        "SELECT m.tenant, m.name, m.type FROM unnest(%s::text[], %s::text[]) AS u(t, n) "
        "JOIN metrics m ON m.tenant = u.t AND m.name = u.n",
        ([m[0] for m in order], [m[1] for m in order]),
    )
    for tenant, name, stored in await cur.fetchall():
        if stored != metrics[(tenant, name)].value:
            raise SeriesTypeConflict(
                f"metric {name!r} of tenant {tenant!r} is stored as a {stored} (by this or "
                f"another gateway) and was written as a {metrics[(tenant, name)].value}"
            )


def _conflict(key: SeriesKey, stored: MetricType, written: MetricType) -> None:
    tenant, name, tags = key
    raise SeriesTypeConflict(
        f"series {name!r} {dict(tags)!r} of tenant {tenant!r} is stored as a {stored.value} "
        f"(by this or another gateway) and was written as a {written.value}"
    )


async def copy_rows(
    conn: psycopg.AsyncConnection,
    resolution: float,
    source_id: int,
    rows: RowBatch,
    ids: Sequence[int],
    written: int,
) -> None:
    """Appends the rows (their series ids `ids`) to the tier's table, as flush `written`."""
    n = len(rows)
    if not n:
        return
    blobs: list[bytes | None] = [None] * n
    if rows.has_sketch.any():
        encoded = sketch.encode_flat(rows.sketches)
        blobs = [b if h else None for b, h in zip(encoded, rows.has_sketch.tolist(), strict=True)]
    columns = zip(
        [source_id] * n,
        ids,
        rows.ts.tolist(),
        rows.count.tolist(),
        rows.sum.tolist(),
        rows.nullable("min"),
        rows.nullable("max"),
        rows.nullable("last"),
        rows.nullable("last_ts"),
        blobs,
        rows.hll,
        [written] * n,
        strict=True,
    )
    cur = conn.cursor()
    async with cur.copy(
        f"COPY {tier_table(resolution)} ({_COPY_COLUMNS}) FROM STDIN (FORMAT BINARY)"
    ) as copy:
        copy.set_types(
            ["int4", "int8", "float8", "float8", "float8", "float8", "float8", "float8",
             "float8", "bytea", "bytea", "int8"]
        )  # fmt: skip
        for row in columns:
            await copy.write_row(row)


async def write_flush_rows(
    conn: psycopg.AsyncConnection,
    source_id: int,
    resolutions: Sequence[float],
    flush: FlushWrite,
    ids: Mapping[SeriesKey, int],
    now: float,
) -> None:
    """Everything of the flush but its seq, in the transaction of `conn` (`ids`: every series
    it names)."""
    tiers: dict[float, RowBatch] = {resolutions[0]: flush.rows, **flush.rollups}
    written = 0
    if any(len(rows) for rows in tiers.values()):
        # Taken under the source's row lock (begin_flush): this source's flushes number in
        # the order they commit. A flush holds one row per series and bucket, so one number
        # orders it against every other.
        cur = await conn.execute("SELECT nextval('write_order')")
        written = int((await cur.fetchone() or (0,))[0])
    for res, rows in tiers.items():
        await copy_rows(conn, res, source_id, rows, [ids[k] for k in rows.keys], written)
    if flush.complete_until:
        await conn.execute(
            "INSERT INTO complete_until SELECT %s, r, u FROM unnest(%s::float8[], %s::float8[]) "
            "AS x(r, u) ON CONFLICT (source_id, resolution) DO UPDATE SET until = excluded.until",
            (source_id, list(flush.complete_until), list(flush.complete_until.values())),
        )
    if flush.gauges:
        await conn.execute(
            "INSERT INTO gauge_current SELECT %s, i, v, t "
            "FROM unnest(%s::int8[], %s::float8[], %s::float8[]) AS x(i, v, t) "
            "ON CONFLICT (source_id, series_id) DO UPDATE SET value = excluded.value, "
            "ts = excluded.ts",
            (
                source_id,
                [ids[k] for k in flush.gauges],
                [v for v, _ in flush.gauges.values()],
                [t for _, t in flush.gauges.values()],
            ),
        )
    await store_idempotency(conn, source_id, flush.idempotency)
    if flush.idempotency_expire_before is not None:
        await conn.execute(
            "DELETE FROM idempotency WHERE created < %s",
            (flush.idempotency_expire_before,),
        )
    await conn.execute("UPDATE sources SET flushed_at = %s WHERE id = %s", (now, source_id))


async def store_idempotency(
    conn: psycopg.AsyncConnection, source_id: int, records: Sequence[IdempotencyRecord]
) -> None:
    """The records answered, completing this gateway's claims on their keys (a key answered
    by another gateway already keeps that answer)."""
    if not records:
        return
    await conn.execute(
        "INSERT INTO idempotency AS i "
        "SELECT t, k, d, s, r, c, %s, q FROM unnest(%s::text[], %s::text[], %s::text[], "
        "%s::int4[], %s::text[], %s::float8[], %s::int8[]) AS x(t, k, d, s, r, c, q) "
        "ON CONFLICT (tenant, key) DO UPDATE SET status = excluded.status, "
        "response = excluded.response WHERE i.status = 0 AND i.source_id = excluded.source_id",
        (
            source_id,
            [r.tenant for r in records],
            [r.key for r in records],
            [r.body_sha256 for r in records],
            [r.status for r in records],
            [r.response for r in records],
            [r.created for r in records],
            [r.seq for r in records],
        ),
    )


def flush_keys(flush: FlushWrite) -> list[tuple[SeriesKey, MetricType]]:
    """Every series a flush writes, with its type."""
    out: list[tuple[SeriesKey, MetricType]] = []
    for rows in (flush.rows, *flush.rollups.values()):
        out += zip(rows.keys, rows.types, strict=True)
    out += ((k, MetricType.GAUGE) for k in flush.gauges)
    return out
