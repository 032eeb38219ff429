"""Reading the PostgreSQL store: what every source wrote, merged as one store's answer.

Pure functions of an async connection inside a transaction the caller opened (REPEATABLE READ,
so a read sees one state). Rows of every source are returned together: the query engine merges
rows of one bucket (sums add, sketches and HyperLogLogs merge, `last` by time) whatever wrote
them, so any gateway answers as one that received everything. The flushed seq answered is this
gateway's own, the one its memory continues.

Tiers are planned per group of sources whose rollups are complete equally far: each group's
rows come from the tiers its own progress allows, so a gateway whose rollups lag (or that
stopped for good, mid-bucket) is read from its finer tiers there, never missed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

import psycopg

from statsd_gateway import sketch
from statsd_gateway.model import (
    BucketRow,
    Matcher,
    MetricType,
    RowBatch,
    SeriesKey,
    matches_all,
)
from statsd_gateway.store.base import (
    NUMERIC_COLUMNS,
    Columns,
    IdempotencyRecord,
    RowRead,
    SeriesInfo,
    StoredRows,
    columns_from_tuples,
    concat_columns,
)
from statsd_gateway.store.pg_chunks import read_chunk_columns, source_chunk_rows
from statsd_gateway.store.schema import tags_from_json, tier_table
from statsd_gateway.store.tiers import Segment, plan_segments


async def read_source_seq(conn: psycopg.AsyncConnection, source_id: int) -> int:
    cur = await conn.execute("SELECT flushed_seq FROM sources WHERE id = %s", (source_id,))
    row = await cur.fetchone()
    return 0 if row is None else int(row[0])


async def read_series_generation(conn: psycopg.AsyncConnection) -> int:
    cur = await conn.execute("SELECT value FROM meta WHERE key = 'series_generation'")
    return int((await cur.fetchone() or ("0",))[0])


async def read_gauges(
    conn: psycopg.AsyncConnection, source_id: int
) -> dict[SeriesKey, tuple[float, float]]:
    """This source's current gauges: (value, time) by series."""
    cur = await conn.execute(
        "SELECT s.tenant, s.name, s.tags, g.value, g.ts FROM gauge_current g "
        "JOIN series s ON s.id = g.series_id WHERE g.source_id = %s",
        (source_id,),
    )
    return {
        (t, n, tags_from_json(tags)): (float(v), float(ts))
        for t, n, tags, v, ts in await cur.fetchall()
    }


async def read_complete_until(conn: psycopg.AsyncConnection, source_id: int) -> dict[float, float]:
    cur = await conn.execute(
        "SELECT resolution, until FROM complete_until WHERE source_id = %s", (source_id,)
    )
    return {float(r): float(u) for r, u in await cur.fetchall()}


async def read_series(
    conn: psycopg.AsyncConnection,
    tenant: str,
    name: str | None = None,
    matchers: Sequence[Matcher] = (),
) -> list[SeriesInfo]:
    """The tenant's series (of `name`) passing every matcher, by name, then tags."""
    sql = "SELECT id, tenant, name, tags, type FROM series WHERE tenant = %s"
    args: list[object] = [tenant]
    if name is not None:
        sql += " AND name = %s"
        args.append(name)
    cur = await conn.execute(sql + " ORDER BY name, tags", args)
    out = []
    for sid, t, n, tags, mtype in await cur.fetchall():
        parsed = tags_from_json(tags)
        if matches_all(parsed, matchers):
            out.append(SeriesInfo(int(sid), t, n, parsed, MetricType(mtype)))
    return out


async def read_all_series(conn: psycopg.AsyncConnection) -> list[SeriesInfo]:
    cur = await conn.execute("SELECT id, tenant, name, tags, type FROM series ORDER BY id")
    return [
        SeriesInfo(int(sid), t, n, tags_from_json(tags), MetricType(mtype))
        for sid, t, n, tags, mtype in await cur.fetchall()
    ]


async def read_tag_values(
    conn: psycopg.AsyncConnection, tenant: str, key: str, name: str | None
) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for s in await read_series(conn, tenant, name):
        value = dict(s.tags).get(key)
        if value is not None:
            counts[value] += 1
    return dict(counts)


async def read_idempotency(
    conn: psycopg.AsyncConnection, tenant: str, key: str
) -> IdempotencyRecord | None:
    cur = await conn.execute(
        "SELECT tenant, key, body_sha256, status, response, created, seq FROM idempotency "
        "WHERE tenant = %s AND key = %s",
        (tenant, key),
    )
    row = await cur.fetchone()
    return None if row is None else IdempotencyRecord(*row)


async def _source_groups(
    conn: psycopg.AsyncConnection,
) -> list[tuple[dict[float, float], list[int]]]:
    """The sources, grouped by how far each coarse tier is complete for them."""
    cur = await conn.execute(
        "SELECT s.id, c.resolution, c.until FROM sources s "
        "LEFT JOIN complete_until c ON c.source_id = s.id"
    )
    progress: dict[int, dict[float, float]] = {}
    for sid, res, until in await cur.fetchall():
        tiers = progress.setdefault(int(sid), {})
        if res is not None:
            tiers[float(res)] = float(until)
    groups: dict[frozenset[tuple[float, float]], list[int]] = {}
    for sid, tiers in progress.items():
        groups.setdefault(frozenset(tiers.items()), []).append(sid)
    return [(dict(k), sorted(v)) for k, v in groups.items()]


# How each column of a bucket is merged over its rows: counts and sums add, extremes combine,
# `last` is that of the latest time (the later written on a tie, as SQLite's upsert keeps it;
# rows of schema 1, all written 0, by their place in the heap), the blobs are gathered for the
# caller to merge.
_MERGED = {
    "ts": "ts",
    "series_id": "series_id",
    "count": "sum(count)",
    "sum": "sum(sum)",
    "min": "min(min)",
    "max": "max(max)",
    "last": "(array_agg(last ORDER BY last_ts DESC, written DESC, ctid DESC) "
    "FILTER (WHERE last IS NOT NULL AND last_ts IS NOT NULL))[1]",
    "last_ts": "max(last_ts)",
    "sketch": "array_agg(sketch) FILTER (WHERE sketch IS NOT NULL)",
    "hll": "array_agg(hll) FILTER (WHERE hll IS NOT NULL)",
}


async def read_stored_rows(
    conn: psycopg.AsyncConnection,
    source_id: int,
    request: RowRead,
    resolutions: Sequence[float],
) -> StoredRows:
    """A RowRead: this source's flushed seq, the matching series, every source's rows."""
    r = request
    unknown = [v for v in r.values if v not in NUMERIC_COLUMNS]
    if unknown:
        raise ValueError(f"not a numeric column: {', '.join(unknown)}")
    seq = await read_source_seq(conn, source_id)
    series = await read_series(conn, r.tenant, r.name, r.matchers)
    groups = await _source_groups(conn)
    # Sources whose progress gives the same plan are read together (a source that lags by a
    # bucket of the hourly tier differs only for queries reaching into that hour).
    by_plan: dict[tuple[Segment, ...], list[int]] = {}
    for tiers, sources in groups:
        plan = tuple(plan_segments(resolutions, tiers, r.window, r.start, r.until))
        by_plan.setdefault(plan, []).extend(sources)
    plans = list(by_plan.items())
    if r.sketch_budget is not None:
        # Every source may hold a sketch of every bucket of a series: all are merged.
        r.sketch_budget(
            len(series) * sum(sum(g.buckets for g in plan) * len(src) for plan, src in plans)
        )
    names = [
        "ts",
        *(["series_id"] if r.by_series else []),
        *r.values,
        *(["sketch"] if r.sketches else []),
        *(["hll"] if r.hll else []),
    ]
    select = ", ".join(_MERGED[c] for c in names)
    position = {s.id: i for i, s in enumerate(series)}
    ids = list(position)
    parts: list[Columns] = []
    for plan, sources in plans:
        only = "" if len(plans) == 1 else " AND source_id = ANY(%s)"
        for g in plan:
            if not ids:
                break
            # Sealed rows first, then the head's (a late point merges after what it joins).
            parts.append(
                await read_chunk_columns(
                    conn, g.resolution, position, sources if only else None, g.lo, g.hi,
                    values=r.values, sketches=r.sketches, hll=r.hll, by_series=r.by_series,
                )
            )  # fmt: skip
            # Head rows of one bucket (one per source, and late points) merged into one, as
            # SQLite merges them on write.
            cur = await conn.execute(
                f"SELECT {select} FROM {tier_table(g.resolution)} "
                f"WHERE series_id = ANY(%s) AND ts >= %s AND ts < %s{only} GROUP BY series_id, ts",
                (ids, g.lo, g.hi, *([sources] if only else [])),
            )
            raw = await cur.fetchall()
            parts.append(columns_from_tuples(raw, names, r.values, position, blob_lists=True))
    if not parts:
        parts.append(columns_from_tuples([], names, r.values, position, blob_lists=True))
    return StoredRows(seq, series, concat_columns(parts, r.values))


async def read_rebuild_rows(
    conn: psycopg.AsyncConnection, source_id: int, resolution: float, since: float
) -> RowBatch:
    """This source's rows of tier `resolution` from `since` on (its open rollups, at start)."""
    cur = await conn.execute(
        "SELECT p.ts, s.tenant, s.name, s.tags, s.type, p.count, p.sum, p.min, p.max, p.last, "
        f"p.last_ts, p.sketch, p.hll FROM {tier_table(resolution)} p "
        "JOIN series s ON s.id = p.series_id WHERE p.source_id = %s AND p.ts >= %s "
        "ORDER BY p.written, p.ctid",  # merged in write order: `last` on equal times
        (source_id, since),
    )
    raw = await cur.fetchall()
    names = {s.id: ((s.tenant, s.name, s.tags), s.type) for s in await read_all_series(conn)}
    sealed = await source_chunk_rows(conn, resolution, source_id, since, names)
    decoded = iter(sketch.decode_many([r[11] for r in raw if r[11] is not None]))
    rows = [
        BucketRow(
            ts,
            (tenant, name, tags_from_json(tags)),
            MetricType(mtype),
            count,
            total,
            mn,
            mx,
            last,
            last_ts,
            None if blob is None else next(decoded),
            hll,
        )
        for ts, tenant, name, tags, mtype, count, total, mn, mx, last, last_ts, blob, hll in raw
    ]
    return RowBatch.concat([replace(sealed, series=None), RowBatch.from_rows(rows)])
