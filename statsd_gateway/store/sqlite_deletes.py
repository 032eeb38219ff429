"""The SQL of the SQLite store's deletes (retention, an admin delete, stale series), each a pure
function of a connection; the writer runs them inside its transactions and keeps its own
bookkeeping (series ids, last writes) in step."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from statsd_gateway.model import SeriesKey
from statsd_gateway.store.schema import chunk_table, tags_json, tier_table

# Rows of the finest tier deleted per transaction, about: flushes wait no longer than that.
_FINE_BATCH = 20000
# Series per transaction in a coarse tier, and per IN list (SQLite caps a statement's
# parameters).
_SERIES_BATCH = 500


def expired_batch(
    conn: sqlite3.Connection, res: float, finest: bool, before: float, cursor: int
) -> tuple[str, tuple[Any, ...], int] | None:
    """The next short delete of tier `res` rows older than `before`: (sql, args, next cursor;
    -1 when it is the last), or None when nothing is left. The finest tier (time-major)
    deletes a range at its B-tree's left edge, about one bucket of series at a time (the cursor
    is unused: the edge moves by itself); coarse tiers (series-major) seek per series, 500
    series at a time."""
    table = tier_table(res)
    if finest:
        row = conn.execute(
            f"SELECT ts FROM {table} WHERE ts < ? ORDER BY ts LIMIT 1 OFFSET {_FINE_BATCH}",
            (before,),
        ).fetchone()
        sql, args, nxt = f"DELETE FROM {table} WHERE ts < ?", (before,), -1
        if row is not None:  # more than a batch: up to that bucket, then again
            sql, args, nxt = f"DELETE FROM {table} WHERE ts <= ?", (row[0],), 0
    else:
        ids = [
            r[0]
            for r in conn.execute(
                f"SELECT id FROM series WHERE id > ? ORDER BY id LIMIT {_SERIES_BATCH}", (cursor,)
            )
        ]
        if not ids:
            return None
        marks = ",".join("?" * len(ids))
        sql = f"DELETE FROM {table} WHERE series_id IN ({marks}) AND ts < ?"
        args, nxt = (*ids, before), ids[-1]
    return sql, args, nxt


def series_ids_of(conn: sqlite3.Connection, keys: Sequence[SeriesKey]) -> list[int]:
    """The stored ids of those of `keys` that are stored."""
    ids = []
    for tenant, name, tags in keys:
        row = conn.execute(
            "SELECT id FROM series WHERE tenant=? AND name=? AND tags=?",
            (tenant, name, tags_json(tags)),
        ).fetchone()
        if row is not None:
            ids.append(int(row[0]))
    return ids


def delete_series_rows(
    c: sqlite3.Connection, ids: Sequence[int], resolutions: Sequence[float]
) -> int:
    """Deletes the series `ids`, their rows in every tier and their gauges' current values;
    returns the rows deleted."""
    rows = 0
    for start in range(0, len(ids), _SERIES_BATCH):
        part = list(ids[start : start + _SERIES_BATCH])
        marks = ",".join("?" * len(part))
        for res in resolutions:
            rows += c.execute(
                f"DELETE FROM {tier_table(res)} WHERE series_id IN ({marks})", part
            ).rowcount
        c.execute(f"DELETE FROM gauge_current WHERE series_id IN ({marks})", part)
        c.execute(f"DELETE FROM series WHERE id IN ({marks})", part)
    return rows


def stale_candidates(
    conn: sqlite3.Connection, resolutions: Sequence[float], horizon: float
) -> list[tuple[int, str, str, str]]:
    """Series created before `horizon` with no row or chunk in any coarse tier: (id,
    tenant, name, tags JSON). None without coarse tiers."""
    coarse = [tier_table(r) for r in resolutions[1:]]
    coarse += [chunk_table(r) for r in resolutions[1:]]
    if not coarse:
        return []
    no_rows = " AND ".join(f"NOT EXISTS (SELECT 1 FROM {t} WHERE series_id = s.id)" for t in coarse)
    return conn.execute(
        f"SELECT id, tenant, name, tags FROM series s WHERE created < ? AND {no_rows}",
        (horizon,),
    ).fetchall()
