"""The PostgreSQL store's chunks: the SQLite store's SGC1 format (store/chunks.py), one blob per
(source, series, chunk window) in `chunks_<resolution>`, read beside the head rows.

Each gateway seals its own source's head rows, a complete window at a time (a window is
complete where its tier is: a coarse tier up to its own `complete_until`, the finest tier up
to the next tier's, or its newest bucket where it is the only tier), SEAL_SERIES series per
transaction: the window's head rows merged with the chunk the window has already (late points
for a sealed window), one chunk per series written, the head rows deleted. The transaction holds
this source's row lock, which every flush of the source takes too, so no flush adds a head row
to the window between the read and the delete. Rows stay keyed by their source, so reads still
plan their tiers per group of sources (pg_reads.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import numpy as np
import psycopg

from statsd_gateway import sketch
from statsd_gateway.model import MetricType, RowBatch, SeriesKey
from statsd_gateway.store.base import Columns, concat_columns
from statsd_gateway.store.chunk_rows import chunk_row_batch, in_range_columns, per_row
from statsd_gateway.store.chunks import chunk_span, encode_chunks
from statsd_gateway.store.chunks_decode import decode_chunks
from statsd_gateway.store.rollup import merge_rows
from statsd_gateway.store.schema import chunk_table, tags_from_json, tier_table

SEAL_SERIES = 500  # series per seal transaction
_DECODE_BATCH = 2048  # chunks decoded per numpy pass
_HEAD = "ts, series_id, count, sum, min, max, last, last_ts, sketch, hll"


def chunk_ddl(resolution: float) -> str:
    table = chunk_table(resolution)
    # The blobs are compressed already: STORAGE EXTERNAL keeps TOAST from trying again.
    return f"""
CREATE TABLE IF NOT EXISTS {table}(
  series_id bigint NOT NULL,
  start double precision NOT NULL,
  source_id integer NOT NULL,
  rows integer NOT NULL,
  data bytea NOT NULL,
  PRIMARY KEY(series_id, start, source_id));
ALTER TABLE {table} ALTER COLUMN data SET STORAGE EXTERNAL;
CREATE INDEX IF NOT EXISTS {table}_source_start ON {table}(source_id, start);
"""


async def read_chunk_columns(
    conn: psycopg.AsyncConnection,
    resolution: float,
    position: dict[int, int],
    sources: Sequence[int] | None,
    since: float,
    until: float,
    *,
    values: Sequence[str],
    sketches: bool,
    hll: bool,
    by_series: bool,
) -> Columns:
    """The chunked rows of the series `position` holds (id -> place), since <= ts < until, of
    the `sources` (None: every source), as Columns."""
    span = chunk_span(resolution)
    only = "" if sources is None else " AND source_id = ANY(%s)"
    cur = await conn.execute(
        f"SELECT series_id, data FROM {chunk_table(resolution)} "
        f"WHERE series_id = ANY(%s) AND start > %s AND start < %s{only}",
        (list(position), since - span, until, *([] if sources is None else [list(sources)])),
    )
    found = await cur.fetchall()
    parts = []
    for i in range(0, len(found), _DECODE_BATCH):
        batch = found[i : i + _DECODE_BATCH]
        decoded = decode_chunks(
            [bytes(data) for _, data in batch], values, sketches=sketches, hll=hll,
            since=since, until=until,
        )  # fmt: skip
        owner = np.asarray([position[sid] for sid, _ in batch], dtype=np.int64)
        parts.append(in_range_columns(decoded, owner, since, until, by_series))
    if not parts:
        return Columns(
            np.empty(0), np.empty(0, dtype=np.int64) if by_series else None,
            {v: np.empty(0) for v in values}, sketch.decode_flat([]),
            np.empty(0, dtype=np.int64), [], np.empty(0, dtype=np.int64),
        )  # fmt: skip
    return concat_columns(parts, values)


async def source_chunk_rows(
    conn: psycopg.AsyncConnection,
    resolution: float,
    source_id: int,
    since: float,
    names: dict[int, tuple[SeriesKey, MetricType]],
) -> RowBatch:
    """This source's chunked rows of tier `resolution` from `since` on (the rollup rebuild)."""
    cur = await conn.execute(
        f"SELECT series_id, data FROM {chunk_table(resolution)} "
        "WHERE source_id = %s AND start > %s",
        (source_id, since - chunk_span(resolution)),
    )
    rows = chunk_row_batch([(sid, bytes(d)) for sid, d in await cur.fetchall()], names.get)
    return rows.take(np.flatnonzero(rows.ts >= since))


def _seal_bound(
    resolutions: Sequence[float], level: int, complete_until: dict[float, float], newest: float
) -> float:
    """Buckets of tier `level` before this are complete (the module's docstring)."""
    if len(resolutions) == 1:
        return newest
    tier = resolutions[level] if level else resolutions[1]
    return complete_until.get(tier, 0.0)


async def seal_next(
    conn: psycopg.AsyncConnection,
    source_id: int,
    resolutions: Sequence[float],
    complete_until: dict[float, float],
) -> tuple[int, bool]:
    """Seals one unit (a window's head rows of up to SEAL_SERIES series) of this source, the
    oldest complete window first, finest tier first; returns (the buckets moved, whether
    anything was: False once nothing complete is left). Runs in the caller's transaction,
    which holds the source's row lock."""
    for level, res in enumerate(resolutions):
        head = tier_table(res)
        cur = await conn.execute(
            f"SELECT min(ts), max(ts) FROM {head} WHERE source_id = %s", (source_id,)
        )
        oldest, newest = await cur.fetchone() or (None, None)
        if oldest is None:
            continue
        span = chunk_span(res)
        window = math.floor(oldest / span) * span
        bound = _seal_bound(resolutions, level, complete_until, newest + res)
        if window + span > bound:
            continue  # the oldest window with head rows is still open
        cur = await conn.execute(
            f"SELECT DISTINCT series_id FROM {head} WHERE source_id = %s AND ts >= %s "
            "AND ts < %s ORDER BY 1 LIMIT %s",
            (source_id, window, window + span, SEAL_SERIES),
        )
        ids = [int(r[0]) for r in await cur.fetchall()]
        return await _seal_unit(conn, source_id, res, window, ids), True
    return 0, False


async def _seal_unit(
    conn: psycopg.AsyncConnection, source_id: int, res: float, window: float, ids: list[int]
) -> int:
    span = chunk_span(res)
    names = await _names(conn, ids)
    where = "source_id = %s AND series_id = ANY(%s) AND ts >= %s AND ts < %s"
    args = (source_id, ids, window, window + span)
    cur = await conn.execute(
        # In write order, after the chunk's rows: merge_rows keeps the later `last` on a tie.
        f"SELECT {_HEAD} FROM {tier_table(res)} WHERE {where} ORDER BY written, ctid",
        args,
    )
    head = _head_batch(await cur.fetchall(), names)
    cur = await conn.execute(
        f"SELECT series_id, data FROM {chunk_table(res)} "
        "WHERE source_id = %s AND series_id = ANY(%s) AND start = %s",
        (source_id, ids, window),
    )
    old = chunk_row_batch([(sid, bytes(d)) for sid, d in await cur.fetchall()], names.get)
    await conn.execute(f"DELETE FROM {tier_table(res)} WHERE {where}", args)
    if not len(head):
        return 0  # only rows of series deleted meanwhile
    merged = merge_rows(RowBatch.concat([old, head]), res)
    assert merged.series is not None
    merged = merged.take(np.lexsort((merged.ts, merged.series)))
    assert merged.series is not None
    sid = merged.series
    cuts = [0, *(np.flatnonzero(sid[1:] != sid[:-1]) + 1).tolist(), len(merged)]
    blobs = encode_chunks(merged, cuts)
    await conn.execute(
        f"INSERT INTO {chunk_table(res)}(series_id, start, source_id, rows, data) "
        "SELECT i, %s, %s, n, d FROM unnest(%s::int8[], %s::int4[], %s::bytea[]) AS u(i, n, d) "
        "ON CONFLICT (series_id, start, source_id) DO UPDATE SET rows = excluded.rows, "
        "data = excluded.data",
        (
            window,
            source_id,
            [int(sid[a]) for a, _ in pairwise(cuts)],
            [b - a for a, b in pairwise(cuts)],
            blobs,
        ),
    )
    return len(head)


async def _names(
    conn: psycopg.AsyncConnection, ids: list[int]
) -> dict[int, tuple[SeriesKey, MetricType]]:
    cur = await conn.execute(
        "SELECT id, tenant, name, tags, type FROM series WHERE id = ANY(%s)", (ids,)
    )
    return {
        int(sid): ((tenant, name, tags_from_json(tags)), MetricType(mtype))
        for sid, tenant, name, tags, mtype in await cur.fetchall()
    }


def _head_batch(
    raw: list[tuple[Any, ...]], names: dict[int, tuple[SeriesKey, MetricType]]
) -> RowBatch:
    """Head rows (the columns of _HEAD) as a RowBatch with their series ids; rows of a series
    deleted meanwhile left out."""
    raw = [r for r in raw if r[1] in names]
    n = len(raw)

    def col(i: int) -> np.ndarray:
        return np.array([np.nan if r[i] is None else r[i] for r in raw], dtype=np.float64)

    blobs = [None if r[8] is None else bytes(r[8]) for r in raw]
    has = np.array([b is not None for b in blobs], dtype=np.bool_)
    present = [b for b in blobs if b is not None]
    keyed = [names[int(r[1])] for r in raw]
    return RowBatch(
        ts=col(0), keys=[k for k, _ in keyed], types=[t for _, t in keyed],
        count=col(2), sum=col(3), min=col(4), max=col(5), last=col(6), last_ts=col(7),
        sketches=per_row(sketch.decode_flat(present), np.flatnonzero(has), n), has_sketch=has,
        hll=[None if r[9] is None else bytes(r[9]) for r in raw],
        series=np.array([int(r[1]) for r in raw], dtype=np.int64),
    )  # fmt: skip
