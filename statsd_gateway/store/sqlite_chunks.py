"""The SQLite store's chunks: reading them, sealing head rows into them, dropping them.

Each tier has a head table (`points_<res>`, one row per series and bucket, written by every
flush and merged into by late points) and a chunk table (`chunks_<res>`, one SGC1 blob per
series and chunk window; store/chunks.py). The writer seals in short units: the head rows of one
window that are complete (a bucket is complete once its tier is: the finest tier up to the next
tier's `complete_until`, or its newest bucket where it is the only tier, a coarse tier up to its
own `complete_until`; counted in steps of SEAL_STEP_SECONDS, so that the open window is sealed
a step at a time too) for a range of series ids are merged, with the window's chunk if one
exists (its earlier steps, or late points for a sealed window), into one chunk per series,
written, and deleted from the head, in one transaction. So a bucket is in
the head or in its chunk, or in both while late points wait for the next unit, and a read takes
both: every consumer merges the rows of a bucket (store/base.py).

Pure functions of a connection, run by the writer (seal, retention, deletes) or a reader.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable, Sequence
from itertools import pairwise
from operator import itemgetter
from typing import Any

import numpy as np
import numpy.typing as npt

from statsd_gateway import sketch
from statsd_gateway.model import MetricType, RowBatch, SeriesKey
from statsd_gateway.store.base import Columns, SeriesInfo, concat_columns
from statsd_gateway.store.chunk_rows import chunk_row_batch, in_range_columns, per_row
from statsd_gateway.store.chunks import SKETCH_BLOCK, buckets_per_chunk, chunk_span, encode_chunks
from statsd_gateway.store.chunks_decode import decode_chunks
from statsd_gateway.store.rollup import merge_rows
from statsd_gateway.store.schema import chunk_table, tags_from_json, tier_table

# Series ids per seal unit: one transaction reads and rewrites about this many series' window.
SEAL_SERIES = 500
# Chunks decoded per numpy pass: bounds a read's transient arrays (<= 360 rows per chunk).
_DECODE_BATCH = 2048
_IN_BATCH = 500  # ids per IN list (SQLite caps a statement's parameters)

_I64 = npt.NDArray[np.int64]
# The open window of a tier is sealed in steps of this many seconds (at least a bucket): what is
# complete of it moves into its chunk (rewritten each step), so that a tier's head holds about
# this much of the open window rather than all of it (reads of the head build a Python tuple a
# row; a chunk decodes in numpy).
SEAL_STEP_SECONDS = 600.0
# Where sealing stands: (tier index, window start, next series id, seal the window's buckets
# before this time); None: look afresh.
SealCursor = tuple[int, float, int, float] | None
_ALL = ("ts", "series_id", "count", "sum", "min", "max", "last", "last_ts", "sketch", "hll")


# -- reads -----------------------------------------------------------------------------------


def read_chunk_columns(
    conn: sqlite3.Connection,
    series: Sequence[SeriesInfo],
    since: float,
    until: float,
    resolution: float,
    *,
    values: Sequence[str],
    sketches: bool,
    hll: bool,
    by_series: bool,
) -> Columns:
    """The chunked rows of tier `resolution` of the given series with since <= ts < until, as
    Columns (only the columns asked for decoded; the chunks touching the range only)."""
    span = chunk_span(resolution)
    position = {s.id: i for i, s in enumerate(series)}
    ids = list(position)
    blobs: list[bytes] = []
    owners: list[int] = []
    for i in range(0, len(ids), _IN_BATCH):
        part = ids[i : i + _IN_BATCH]
        marks = ",".join("?" * len(part))
        for sid, data in conn.execute(
            f"SELECT series_id, data FROM {chunk_table(resolution)} "
            f"WHERE series_id IN ({marks}) AND start > ? AND start < ?",
            (*part, since - span, until),
        ):
            blobs.append(data)
            owners.append(position[sid])
    parts = []
    for i in range(0, len(blobs), _DECODE_BATCH):
        batch = blobs[i : i + _DECODE_BATCH]
        decoded = decode_chunks(batch, values, sketches=sketches, hll=hll, since=since, until=until)
        owner = np.asarray(owners[i : i + _DECODE_BATCH], dtype=np.int64)
        parts.append(in_range_columns(decoded, owner, since, until, by_series))
    return concat_columns(parts, values)


def chunk_batch(
    conn: sqlite3.Connection, resolution: float, where: str, args: tuple[Any, ...],
    key_of: Callable[[int], tuple[SeriesKey, MetricType] | None],
) -> RowBatch:  # fmt: skip
    """The rows of the chunks `WHERE <where>` of tier `resolution` as a RowBatch (series ids
    in `series`; `key_of` names each id, None for a series deleted meanwhile)."""
    found = conn.execute(
        f"SELECT series_id, data FROM {chunk_table(resolution)} WHERE {where}", args
    ).fetchall()
    return chunk_row_batch(found, key_of)


# -- sealing ---------------------------------------------------------------------------------


def seal_step_of(resolution: float) -> float:
    """The step the open window of tier `resolution` is sealed in: SEAL_STEP_SECONDS in whole
    buckets (at least one), or the whole window where it holds no more than one sketch block
    (the hourly tier's day: its head never holds more than a block, and a read of one of its
    buckets from a chunk would decode the block's every sketch)."""
    if buckets_per_chunk(resolution) <= SKETCH_BLOCK:
        return chunk_span(resolution)
    return resolution * max(1, int(SEAL_STEP_SECONDS // resolution))


def sealable_until(
    conn: sqlite3.Connection, resolution: float, newest: bool, complete_until: float
) -> float:
    """Buckets before this are complete in tier `resolution` and may be sealed, in steps of
    seal_step_of(): up to `complete_until` (a coarse tier's own; for the finest tier the next
    tier's, since every bucket before it was flushed), or with `newest` (the finest tier when it
    is the only one) up to its newest bucket. The flush boundary is what counts where it is
    known: a client timestamp ahead of the clock would otherwise seal what is still being
    filled."""
    step = seal_step_of(resolution)
    until = math.floor(complete_until / step) * step
    if newest:
        row = conn.execute(f"SELECT max(ts) FROM {tier_table(resolution)}").fetchone()
        if row[0] is not None:
            until = max(until, math.floor(row[0] / step) * step)
    return float(until)


def first_sealable(
    conn: sqlite3.Connection, resolutions: Sequence[float], complete_until: dict[float, float]
) -> SealCursor:
    """Where sealing starts: the oldest window holding head rows that are complete (a whole
    window, or the complete steps of the open one), finest tier first, from the smallest
    series id."""
    alone = len(resolutions) == 1
    for level, res in enumerate(resolutions):
        (oldest,) = conn.execute(f"SELECT min(ts) FROM {tier_table(res)}").fetchone()
        if oldest is None:
            continue
        span = chunk_span(res)
        window = math.floor(oldest / span) * span
        # The finest tier is complete where the next one is: its rows were all flushed.
        tier = res if level or alone else resolutions[1]
        upto = min(window + span, sealable_until(conn, res, alone, complete_until.get(tier, 0.0)))
        if oldest < upto:
            (first,) = conn.execute("SELECT coalesce(min(id), 0) FROM series").fetchone()
            return level, window, int(first), upto
    return None


def series_names(
    conn: sqlite3.Connection, where: str, args: tuple[object, ...]
) -> dict[int, tuple[SeriesKey, MetricType]]:
    """The key and type of the series `WHERE <where>`, by id."""
    return {
        sid: ((tenant, name, tags_from_json(tags)), MetricType(mtype))
        for sid, tenant, name, tags, mtype in conn.execute(
            f"SELECT id, tenant, name, tags, type FROM series WHERE {where}", args
        )
    }


def _head_where(
    resolution: float, finest: bool, window: float, upto: float
) -> tuple[str, tuple[Any, ...]]:
    """The head rows of `window` before `upto` for ids in [?, ?): the finest tier (keyed
    time-major) by its bucket times, each a seek to the id range; a coarse one (series-major)
    by the id range."""
    if finest:
        times = [window + k * resolution for k in range(buckets_per_chunk(resolution))]
        times = [t for t in times if t < upto]
        marks = ",".join("?" * len(times))
        return f"ts IN ({marks}) AND series_id >= ? AND series_id < ?", tuple(times)
    return "series_id >= ? AND series_id < ? AND ts >= ? AND ts < ?", ()


def seal_unit(
    conn: sqlite3.Connection,
    resolution: float,
    finest: bool,
    window: float,
    ids: tuple[int, int],
    key_of: Callable[[int], tuple[SeriesKey, MetricType] | None],
    head_rows: Callable[[str, tuple[Any, ...]], RowBatch],
    *,
    upto: float,
    sweep: bool = False,
) -> int:
    """Seals the head rows of `window` before `upto` of series ids in [lo, hi) (every id with
    `sweep`, by a range of times: what bucket times the finest tier's seek missed) into their
    chunks, merged with what each chunk holds already; returns the buckets moved. Run inside
    the writer's transaction."""
    upto = min(upto, window + chunk_span(resolution))
    lo, hi = ids
    if sweep:
        where, args = "ts >= ? AND ts < ?", (window, upto)
    else:
        where, times = _head_where(resolution, finest, window, upto)
        args = (*times, lo, hi) if finest else (lo, hi, window, upto)
    head = head_rows(where, args)
    if not len(head):  # nothing, or only rows of series deleted meanwhile
        conn.execute(f"DELETE FROM {tier_table(resolution)} WHERE {where}", args)
        return 0
    assert head.series is not None
    touched = np.unique(head.series).tolist()
    old = [
        chunk_batch(conn, resolution, f"series_id IN ({','.join('?' * len(part))}) AND start = ?",
                    (*part, window), key_of)
        for part in (touched[i : i + _IN_BATCH] for i in range(0, len(touched), _IN_BATCH))
    ]  # fmt: skip
    merged = merge_rows(RowBatch.concat([*old, head]), resolution)
    assert merged.series is not None
    order = np.lexsort((merged.ts, merged.series))
    merged = merged.take(order)
    assert merged.series is not None
    sid = merged.series
    cuts = [0, *(np.flatnonzero(sid[1:] != sid[:-1]) + 1).tolist(), len(merged)]
    table = chunk_table(resolution)
    blobs = encode_chunks(merged, cuts)
    conn.executemany(
        f"INSERT OR REPLACE INTO {table}(series_id, start, rows, data) VALUES (?, ?, ?, ?)",
        [
            (int(sid[a]), window, b - a, blob)
            for (a, b), blob in zip(pairwise(cuts), blobs, strict=True)
        ],
    )
    conn.execute(f"DELETE FROM {tier_table(resolution)} WHERE {where}", args)
    return len(head)


def head_row_batch(
    conn: sqlite3.Connection,
    resolution: float,
    where: str,
    args: tuple[Any, ...],
    key_of: Callable[[int], tuple[SeriesKey, MetricType] | None],
) -> RowBatch:
    """The head rows `WHERE <where>` of tier `resolution`, as a RowBatch with their series ids
    (rows of a series deleted meanwhile are left out). Column by column, no object per row
    beyond sqlite3's own tuples."""
    raw = conn.execute(
        f"SELECT {', '.join(_ALL)} FROM {tier_table(resolution)} WHERE {where}", args
    ).fetchall()
    sids = [r[1] for r in raw]
    names = [key_of(sid) for sid in sids]
    if None in names:
        raw = [r for r, k in zip(raw, names, strict=True) if k is not None]
        names = [k for k in names if k is not None]
    n = len(raw)

    def col(i: int) -> npt.NDArray[np.float64]:
        return np.fromiter(map(itemgetter(i), raw), dtype=np.float64, count=n)

    blobs = list(map(itemgetter(8), raw))
    has = np.fromiter((b is not None for b in blobs), dtype=np.bool_, count=n)
    present = [b for b in blobs if b is not None] if not has.all() else blobs
    return RowBatch(
        ts=col(0), keys=[k[0] for k in names], types=[k[1] for k in names],  # type: ignore[index]
        count=col(2), sum=col(3), min=col(4), max=col(5), last=col(6), last_ts=col(7),
        sketches=per_row(sketch.decode_flat(present), np.flatnonzero(has), n), has_sketch=has,
        hll=list(map(itemgetter(9), raw)),
        series=np.fromiter(map(itemgetter(1), raw), dtype=np.int64, count=n),
    )  # fmt: skip


# -- retention and deletes -------------------------------------------------------------------


def delete_expired_chunks(conn: sqlite3.Connection, resolution: float, before: float) -> int:
    """Drops the tier's chunks whose whole window is older than `before`; returns the buckets
    they held. A chunk straddling `before` is kept whole until its window has aged out."""
    table = chunk_table(resolution)
    cutoff = before - chunk_span(resolution)
    (n,) = conn.execute(
        f"SELECT coalesce(sum(rows), 0) FROM {table} WHERE start <= ?", (cutoff,)
    ).fetchone()
    if n:
        conn.execute(f"DELETE FROM {table} WHERE start <= ?", (cutoff,))
    return int(n)


def delete_series_chunks(
    conn: sqlite3.Connection, ids: Sequence[int], resolutions: Sequence[float]
) -> int:
    """Deletes the chunks of the series `ids` in every tier; returns the buckets they held."""
    n = 0
    for i in range(0, len(ids), _IN_BATCH):
        part = list(ids[i : i + _IN_BATCH])
        marks = ",".join("?" * len(part))
        for res in resolutions:
            table = chunk_table(res)
            (k,) = conn.execute(
                f"SELECT coalesce(sum(rows), 0) FROM {table} WHERE series_id IN ({marks})", part
            ).fetchone()
            if k:
                conn.execute(f"DELETE FROM {table} WHERE series_id IN ({marks})", part)
                n += int(k)
    return n


def buckets_in_chunks(conn: sqlite3.Connection, resolution: float) -> int:
    (n,) = conn.execute(f"SELECT coalesce(sum(rows), 0) FROM {chunk_table(resolution)}").fetchone()
    return int(n)


def rows_between(conn: sqlite3.Connection, resolution: float, lo: float, hi: float) -> int:
    """Head rows of the tier with lo <= ts < hi (progress of a conversion)."""
    (n,) = conn.execute(
        f"SELECT count(*) FROM {tier_table(resolution)} WHERE ts >= ? AND ts < ?", (lo, hi)
    ).fetchone()
    return int(n)
