"""How SQLite merges a bucket row into one already stored: an upsert whose conflict clause adds
counts and sums, combines min and max, keeps the `last` of the latest time, and merges sketches
and HyperLogLogs with the SQL functions the writer registers (`dd_merge`, `hll_merge`). This is
the SQLite backend's own business: other backends merge their own way (store/base.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import numpy as np

from statsd_gateway import sketch
from statsd_gateway.model import RowBatch

_ALL_COLUMNS = ("ts", "series_id", "count", "sum", "min", "max", "last", "last_ts", "sketch", "hll")
# Rows with neither `last` (gauges) nor `hll` (sets) bind these only: each bound parameter
# costs, and a flush binds one row per series.
_NARROW_COLUMNS = ("ts", "series_id", "count", "sum", "min", "max", "sketch")


def _upsert_sql(table: str, columns: Sequence[str] = _ALL_COLUMNS) -> str:
    return f"""
INSERT INTO {table}({", ".join(columns)})
VALUES ({", ".join("?" * len(columns))})
ON CONFLICT DO UPDATE SET
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


def upsert_rows(conn: sqlite3.Connection, table: str, rows: RowBatch, ids: Sequence[int]) -> None:
    """Merges `rows` (their series ids `ids`) into `table`, binding only the columns a row
    uses."""
    n = len(rows)
    blobs: list[bytes | None] = [None] * n
    if rows.has_sketch.any():
        encoded = sketch.encode_flat(rows.sketches)
        has = rows.has_sketch.tolist()
        blobs = [b if h else None for b, h in zip(encoded, has, strict=True)]
    wide = ~(np.isnan(rows.last) & np.isnan(rows.last_ts))
    if any(h is not None for h in rows.hll):
        wide |= np.array([h is not None for h in rows.hll], dtype=np.bool_)
    ts, count, total = rows.ts.tolist(), rows.count.tolist(), rows.sum.tolist()
    mn, mx = rows.nullable("min"), rows.nullable("max")
    if not wide.any():
        params = zip(ts, ids, count, total, mn, mx, blobs, strict=True)
        conn.executemany(_upsert_sql(table, _NARROW_COLUMNS), params)
        return
    last, last_ts = rows.nullable("last"), rows.nullable("last_ts")
    full = zip(ts, ids, count, total, mn, mx, last, last_ts, blobs, rows.hll, strict=True)
    if wide.all():
        conn.executemany(_upsert_sql(table), full)
        return
    is_wide = wide.tolist()
    rows_all = list(full)
    narrow = [r[:6] + r[8:9] for r, w in zip(rows_all, is_wide, strict=True) if not w]
    conn.executemany(_upsert_sql(table, _NARROW_COLUMNS), narrow)
    conn.executemany(_upsert_sql(table), [r for r, w in zip(rows_all, is_wide, strict=True) if w])
