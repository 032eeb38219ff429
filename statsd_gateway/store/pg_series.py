"""The series that gateways on one PostgreSQL share: learning those others made, deleting
series so that every gateway forgets them, and finding the stale ones.

Series ids rise, so a gateway learns new series by reading ids above the highest it has seen;
a transaction may commit after one holding a higher id, so each read looks back a margin, and
every so often reads them all. Whatever deletes series bumps the series generation (every
flush sees it and drops its cached ids: pg_writes.begin_flush) and logs the keys it deleted
under that generation in `series_deleted`, which the other gateways read to forget them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from statsd_gateway.model import MetricType, SeriesKey
from statsd_gateway.store.base import OthersSeries, SeriesInfo
from statsd_gateway.store.pg_schema import SERIES_LOCK
from statsd_gateway.store.pg_writes import SeriesIds
from statsd_gateway.store.schema import chunk_table, tags_from_json, tags_json, tier_table

BUMP_GENERATION = (
    "UPDATE meta SET value = (value::bigint + 1)::text WHERE key = 'series_generation'"
)
# How far below the highest id seen each read looks, and how often it reads every series.
OTHERS_LOOKBACK = 10_000
OTHERS_FULL_EVERY = 30


async def record_deleted(conn: psycopg.AsyncConnection, source_id: int, ids: list[int]) -> None:
    """The keys of series about to be deleted, under the generation just made (the caller
    bumped it in this transaction), for the other gateways to forget."""
    await conn.execute(
        "INSERT INTO series_deleted SELECT (SELECT value::bigint FROM meta "
        "WHERE key = 'series_generation'), %s, tenant, name, tags FROM series "
        "WHERE id = ANY(%s)",
        (source_id, ids),
    )


async def _drop_series(conn: psycopg.AsyncConnection, source_id: int, ids: list[int]) -> None:
    """Series `ids` gone, but for their bucket rows: their gauges, and they themselves, their
    keys logged for the other gateways (the caller bumped the generation)."""
    await conn.execute("DELETE FROM gauge_current WHERE series_id = ANY(%s)", (ids,))
    await record_deleted(conn, source_id, ids)
    await conn.execute("DELETE FROM series WHERE id = ANY(%s)", (ids,))


async def series_ids_of(conn: psycopg.AsyncConnection, keys: Sequence[SeriesKey]) -> list[int]:
    if not keys:
        return []
    cur = await conn.execute(
        "SELECT s.id FROM unnest(%s::text[], %s::text[], %s::text[]) AS u(t, n, g) "
        "JOIN series s ON s.tenant = u.t AND s.name = u.n AND md5(s.tags) = md5(u.g) "
        "AND s.tags = u.g",
        ([k[0] for k in keys], [k[1] for k in keys], [tags_json(k[2]) for k in keys]),
    )
    return [int(r[0]) for r in await cur.fetchall()]


async def delete_series(
    conn: psycopg.AsyncConnection, source_id: int, resolutions: Sequence[float], ids: list[int]
) -> int:
    """Deletes series `ids` with every row and chunk of theirs, from every gateway, in the
    caller's transaction (which holds the series lock and bumped the generation); the bucket
    rows deleted."""
    rows = 0
    for res in resolutions:
        cur = await conn.execute(f"DELETE FROM {tier_table(res)} WHERE series_id = ANY(%s)", (ids,))
        rows += max(cur.rowcount, 0)
        cur = await conn.execute(
            f"DELETE FROM {chunk_table(res)} WHERE series_id = ANY(%s) RETURNING rows", (ids,)
        )
        rows += sum(int(n) for (n,) in await cur.fetchall())
    await _drop_series(conn, source_id, ids)
    return rows


def stale_series_sql(resolutions: Sequence[float]) -> str:
    """Series created before the horizon (both parameters) with no row or chunk in a coarse
    tier nor a row in the finest since the horizon, from any gateway."""
    fine = tier_table(resolutions[0])
    no_rows = " AND ".join(
        [
            *(
                f"NOT EXISTS (SELECT 1 FROM {t} p WHERE p.series_id = s.id)"
                for r in resolutions[1:]
                for t in (tier_table(r), chunk_table(r))
            ),
            f"NOT EXISTS (SELECT 1 FROM {fine} p WHERE p.series_id = s.id AND p.ts >= %s)",
        ]
    )
    return f"SELECT id, tenant, name, tags FROM series s WHERE created < %s AND {no_rows}"


async def delete_stale(
    conn: psycopg.AsyncConnection, source_id: int, sql: str, horizon: float, ids: list[int]
) -> list[tuple[int, SeriesKey]] | None:
    """Of the candidates `ids`, deletes those still stale (`sql`: stale_series_sql), in the
    caller's transaction, if the series lock is free (None when flushes hold it or another
    gateway is at it: the next turn). Stale series have no rows left to delete."""
    cur = await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (SERIES_LOCK,))
    if not (await cur.fetchone() or (False,))[0]:
        return None
    cur = await conn.execute(sql + " AND s.id = ANY(%s)", (horizon, horizon, ids))
    stale = [(int(sid), (t, n, tags_from_json(g))) for sid, t, n, g in await cur.fetchall()]
    gone = [sid for sid, _ in stale]
    if gone:
        await conn.execute(BUMP_GENERATION)
        await _drop_series(conn, source_id, gone)
    return stale


class OthersWatch:
    """What one gateway has learnt of the series the others made and deleted."""

    def __init__(self) -> None:
        self.max_seen_id = 0
        self.seen_generation = 0  # the series generation whose deletions this one knows
        self._reads = 0

    def saw(self, series: Sequence[SeriesInfo], generation: int) -> None:
        """What the gateway read of the series at open."""
        self.max_seen_id = max([self.max_seen_id, *(s.id for s in series)])
        self.seen_generation = generation

    async def read(
        self, conn: psycopg.AsyncConnection, source_id: int
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """The rows of series and of deletions to look at, in the caller's transaction; `apply`
        them once it has committed (a read that fails leaves this watch as it was, so the
        next asks again)."""
        self._reads += 1
        since = 0 if self._reads % OTHERS_FULL_EVERY == 0 else self.max_seen_id
        cur = await conn.execute(
            "SELECT id, tenant, name, tags, type FROM series WHERE id > %s ORDER BY id",
            (max(0, since - OTHERS_LOOKBACK),),
        )
        rows = await cur.fetchall()
        cur = await conn.execute(
            "SELECT generation, tenant, name, tags FROM series_deleted WHERE generation > %s "
            "AND source_id <> %s",  # a gateway forgets its own deletions as it makes them
            (self.seen_generation, source_id),
        )
        return rows, await cur.fetchall()

    def apply(
        self, rows: list[tuple[Any, ...]], deleted: list[tuple[Any, ...]], cache: SeriesIds
    ) -> OthersSeries:
        """The series of `rows` not in `cache` yet, and those `deleted`; `cache` learns both."""
        added = []
        for sid, tenant, name, tags, mtype in rows:
            self.max_seen_id = max(self.max_seen_id, int(sid))
            key = (tenant, name, tags_from_json(tags))
            if key not in cache.ids:
                info = SeriesInfo(int(sid), tenant, name, key[2], MetricType(mtype))
                cache.ids[key] = info.id
                cache.types[key] = info.type
                added.append(info)
        gone: list[SeriesKey] = []
        for generation, tenant, name, tags in deleted:
            self.seen_generation = max(self.seen_generation, int(generation))
            key = (tenant, name, tags_from_json(tags))
            cache.ids.pop(key, None)
            cache.types.pop(key, None)
            gone.append(key)
        return OthersSeries(added, gone)
