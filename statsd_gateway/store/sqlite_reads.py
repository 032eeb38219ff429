"""Reading the SQLite store: the record types rows come back as, and the reads every reader
(the store's own threads, queries, the idempotency ledger) runs on a connection of its own.

Pure functions of a `sqlite3.Connection`: no state, no writes. Bucket rows are read as numpy
columns (`read_columns`), only the columns asked for, never as a Python object per row.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from statsd_gateway import sketch
from statsd_gateway.model import BucketRow, Matcher, MatchOp, MetricType
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
from statsd_gateway.store.schema import tags_from_json, tier_table
from statsd_gateway.store.sqlite_chunks import read_chunk_columns
from statsd_gateway.store.tiers import plan_segments


def complete_key(res: float) -> str:
    return f"complete_until:{tier_table(res)}"


def read_flushed_seq(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT value FROM meta WHERE key='flushed_seq'").fetchone()[0])


def read_complete_until(
    conn: sqlite3.Connection, resolutions: Sequence[float]
) -> dict[float, float]:
    """For each coarse tier: every bucket before this time is written in that tier."""
    out = {}
    for res in resolutions[1:]:
        row = conn.execute("SELECT value FROM meta WHERE key=?", (complete_key(res),)).fetchone()
        out[res] = float(row[0]) if row else 0.0
    return out


def read_series(
    conn: sqlite3.Connection,
    tenant: str,
    name: str | None = None,
    matchers: Sequence[Matcher] = (),
) -> list[SeriesInfo]:
    """The tenant's series (of metric `name`, if given) whose tags pass every matcher, by
    (name, tags). The matchers are answered by the series index (`series_tags`): `=` and `!=`
    in SQL; a regex is matched in Python against the distinct values of its tag (few, as
    against the series), which SQL then selects by. Where an `=` matcher's value is carried
    by few series (of any metric), those are looked up by id instead of probing every series
    of the metric for it."""
    ids = _few_carrying(conn, matchers)
    # With ids, a unary + keeps SQLite from scanning the metric's series by (tenant, name).
    plus = "+" if ids is not None else ""
    where = [f"{plus}s.tenant = ?"]
    args: list[object] = [tenant]
    if name is not None:
        where.append(f"{plus}s.name = ?")
        args.append(name)
    if ids is not None:
        where.append("s.id IN (SELECT value FROM json_each(?))")
        args.append(json.dumps(ids))
    for m in matchers:
        condition = _matcher_sql(conn, tenant, name, m)
        if condition is None:
            return []  # no series can pass
        if condition:
            where.append(condition[0])
            args += condition[1]
    cur = conn.execute(
        f"SELECT s.id, s.tenant, s.name, s.tags, s.type FROM series s "
        f"WHERE {' AND '.join(where)} ORDER BY s.name, s.tags",
        args,
    )
    return [
        SeriesInfo(sid, t, n, tags_from_json(tags), MetricType(mt)) for sid, t, n, tags, mt in cur
    ]


# Up to this many series carrying an `=` matcher's value are looked up by id (a few µs each);
# past it, the metric's series are probed for the value instead (bounded by the metric).
_FEW_CARRYING = 256


def _few_carrying(conn: sqlite3.Connection, matchers: Sequence[Matcher]) -> list[int] | None:
    """The ids of the series carrying the value of the most selective `=` matcher that needs
    its tag, when at most _FEW_CARRYING series (of any metric) do; else None."""
    best: list[int] | None = None
    for m in matchers:
        if m.op is not MatchOp.EQUAL or m.accepts(None):
            continue
        ids = [
            sid
            for (sid,) in conn.execute(
                "SELECT series_id FROM series_tags WHERE key = ? AND value = ? LIMIT ?",
                (m.key, m.value, _FEW_CARRYING + 1),
            )
        ]
        if len(ids) <= _FEW_CARRYING and (best is None or len(ids) < len(best)):
            best = ids
    return best


def _matcher_sql(
    conn: sqlite3.Connection, tenant: str, name: str | None, m: Matcher
) -> tuple[str, list[object]] | tuple[()] | None:
    """A condition on `series s` for one matcher: (SQL, its parameters); () when every series
    passes; None when none can.

    A matcher that passes a series without the tag (Prometheus: its value is "") passes every
    series except those carrying a value it rejects (NOT EXISTS); one that does not (or that
    wants the tag `present`) passes only the series carrying a value it accepts (EXISTS)."""
    takes_absent = m.accepts(None)
    args: list[object] = [m.key]
    if m.op in (MatchOp.EQUAL, MatchOp.NOT_EQUAL):
        # The values that decide are that one value, or every value but it.
        one = (m.op is MatchOp.EQUAL) != takes_absent
        test = "t.value = ?" if one else "t.value != ?"
        args.append(m.value)
    else:
        known = _distinct_values(conn, tenant, name, m.key)
        deciding = [v for v in known if m.accepts(v) != takes_absent]
        if not deciding:
            return () if takes_absent else None
        if len(deciding) == 1:
            test = "t.value = ?"
            args.append(deciding[0])
        else:
            test = "t.value IN (SELECT j.value FROM json_each(?) j)"
            args.append(json.dumps(deciding, ensure_ascii=False))
    # Probed per series of the metric (by series_tags' key): the cost grows with the metric's
    # series, never with how many series of other metrics carry the value.
    probe = (
        f"EXISTS (SELECT 1 FROM series_tags t WHERE t.series_id = s.id AND t.key = ? AND {test})"
    )
    return ("NOT " + probe if takes_absent else probe), args


def _distinct_values(
    conn: sqlite3.Connection, tenant: str, name: str | None, key: str
) -> list[str]:
    """The values tag `key` takes over the tenant's series (of `name`)."""
    where = "t.key = ? AND s.tenant = ?" + (" AND s.name = ?" if name is not None else "")
    cur = conn.execute(
        "SELECT DISTINCT t.value FROM series s JOIN series_tags t ON t.series_id = s.id "
        f"WHERE {where}",
        (key, tenant) if name is None else (key, tenant, name),
    )
    return [v for (v,) in cur]


_SELECT = "SELECT ts, series_id, count, sum, min, max, last, last_ts, sketch, hll FROM "


def read_columns(
    conn: sqlite3.Connection,
    series: Sequence[SeriesInfo],
    since: float,
    until: float,
    resolution: float = 10.0,
    *,
    values: Sequence[str] = NUMERIC_COLUMNS,
    sketches: bool = False,
    hll: bool = False,
    by_series: bool = True,
) -> Columns:
    """The rows of tier `resolution` of the given series with since <= ts < until, as
    Columns. Only the numeric columns named in `values` are read, the sketch and HyperLogLog
    blobs only when asked, and the rows' series only `by_series`: every column read costs a
    Python object per row in sqlite3."""
    unknown = [v for v in values if v not in NUMERIC_COLUMNS]
    if unknown:
        raise ValueError(f"not a numeric column: {', '.join(unknown)}")
    position = {s.id: i for i, s in enumerate(series)}
    ids = list(position)
    names = [
        "ts",
        *(["series_id"] if by_series else []),
        *values,
        *(["sketch"] if sketches else []),
        *(["hll"] if hll else []),
    ]
    select = f"SELECT {', '.join(names)} FROM {tier_table(resolution)}"
    raw: list[tuple[Any, ...]] = []
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        marks = ",".join("?" * len(chunk))
        cur = conn.execute(
            f"{select} WHERE ts >= ? AND ts < ? AND series_id IN ({marks})",
            (since, until, *chunk),
        )
        raw += cur.fetchall()
    return columns_from_tuples(raw, names, values, position)


def read_rows_where(
    conn: sqlite3.Connection, table: str, where: str, args: tuple[object, ...]
) -> list[BucketRow]:
    by_id = {
        sid: SeriesInfo(sid, t, n, tags_from_json(tags), MetricType(mt))
        for sid, t, n, tags, mt in conn.execute("SELECT id, tenant, name, tags, type FROM series")
    }
    return _to_rows(conn.execute(f"{_SELECT}{table} WHERE {where}", args).fetchall(), by_id)


def _to_rows(raw: list[tuple[Any, ...]], by_id: dict[int, SeriesInfo]) -> list[BucketRow]:
    sketches = sketch.decode_many([r[8] for r in raw if r[8] is not None])
    it = iter(sketches)
    keys = {sid: ((s.tenant, s.name, s.tags), s.type) for sid, s in by_id.items()}
    out = []
    for ts, sid, count, total, mn, mx, last, last_ts, blob, hll in raw:
        decoded = None if blob is None else next(it)
        known = keys.get(sid)
        if known is None:
            continue  # a series deleted meanwhile
        key, mtype = known
        out.append(BucketRow(ts, key, mtype, count, total, mn, mx, last, last_ts, decoded, hll))
    return out


def read_idempotency(conn: sqlite3.Connection, tenant: str, key: str) -> IdempotencyRecord | None:
    row = conn.execute(
        "SELECT body_sha256, status, response, created FROM idempotency WHERE tenant=? AND key=?",
        (tenant, key),
    ).fetchone()
    if row is None:
        return None
    return IdempotencyRecord(tenant, key, row[0], int(row[1]), row[2], float(row[3]))


def read_stored_rows(
    conn: sqlite3.Connection, request: RowRead, resolutions: Sequence[float]
) -> StoredRows:
    """A RowRead in one read transaction: the flushed seq, the matching series, and their rows
    from the tiers plan_segments picks."""
    seq = read_flushed_seq(conn)
    series = read_series(conn, request.tenant, request.name, request.matchers)
    segments = plan_segments(
        resolutions,
        read_complete_until(conn, resolutions),
        request.window,
        request.start,
        request.until,
    )
    if request.sketch_budget is not None:
        request.sketch_budget(len(series) * sum(g.buckets for g in segments))
    parts = []
    r = request
    for g in segments:
        # Sealed rows first, then the head's: a late point merges after what it joins.
        for read in (read_chunk_columns, read_columns):
            parts.append(
                read(
                    conn,
                    series,
                    g.lo,
                    g.hi,
                    g.resolution,
                    values=r.values,
                    sketches=r.sketches,
                    hll=r.hll,
                    by_series=r.by_series,
                )
            )
    return StoredRows(seq, series, concat_columns(parts, request.values))


def read_tag_values(
    conn: sqlite3.Connection, tenant: str, key: str, name: str | None
) -> dict[str, int]:
    """The values of tag `key` over the tenant's series (of `name`), each with how many
    series carry it, from the series index."""
    where = "t.key = ? AND s.tenant = ?" + (" AND s.name = ?" if name is not None else "")
    cur = conn.execute(
        "SELECT t.value, count(*) FROM series s JOIN series_tags t ON t.series_id = s.id "
        f"WHERE {where} GROUP BY t.value",
        (key, tenant) if name is None else (key, tenant, name),
    )
    return {value: int(n) for value, n in cur}
