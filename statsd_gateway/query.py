"""Query: a validated QuerySpec → store reads + the interval still in memory → a time series.

Semantics (DESIGN.md §2, §4):
- Window buckets are aligned to multiples of the window since the epoch; rows are read from the
  start of the window bucket holding `since`, so every reported bucket is whole. Empty buckets are
  left out. Without a window there is one point, stamped `since`, for the whole range.
- Quantiles merge the DDSketch bins of every matching bucket and series, then clamp the estimate
  into the exact [min, max]; p0 and p100 are the exact min and max.
- The in-memory interval is merged in, minus any snapshot the store already holds (by flush
  sequence number, read in the same read transaction), so nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import re
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from statsd_gateway import sketch
from statsd_gateway.aggregator import IntervalAggregator, finish
from statsd_gateway.config import parse_duration
from statsd_gateway.errors import InvalidArgument, MetricNotFound, QueryTooLarge
from statsd_gateway.model import BucketRow, MetricType, Tags
from statsd_gateway.store import SqliteStore
from statsd_gateway.store.sqlite import (
    read_complete_until,
    read_flushed_seq,
    read_rows,
    read_series,
)

_AGG_RE = re.compile(r"p(100|\d{1,2}(?:\.\d+)?)")
_PLAIN_AGGS = ("count", "sum", "avg", "min", "max", "last", "rate", "distinct")
_RELATIVE_RE = re.compile(r"-(\d+(?:\.\d+)?(?:ms|s|m|h|d))")
# Times a query may name: from the epoch to year ~5138; beyond is a typo, not a range.
_TIME_MAX = 1e11
DEFAULT_RANGE = 3600.0
_SUGGESTED_WINDOWS = (
    ("10s", 10),
    ("1m", 60),
    ("5m", 300),
    ("10m", 600),
    ("30m", 1800),
    ("1h", 3600),
    ("6h", 21600),
    ("1d", 86400),
    ("7d", 604800),
)


@dataclass(frozen=True, slots=True)
class QuerySpec:
    name: str
    agg: str
    quantile: float | None  # 0..1 for pNN aggregations
    tags: Tags
    window: float | None
    window_text: str | None
    since: float
    until: float
    group_by: tuple[str, ...] = ()


def parse_time(text: str, now: float, field: str) -> float:
    """Unix seconds, RFC 3339, `now`, or relative to now (`-15m`); between the epoch and
    _TIME_MAX."""
    t = _parse_time(text.strip(), now, field)
    if not 0 <= t <= _TIME_MAX:
        raise InvalidArgument(f"{field} must lie between 1970 and the year 5000", field)
    return t


def _parse_time(t: str, now: float, field: str) -> float:
    if t == "now":
        return now
    m = _RELATIVE_RE.fullmatch(t)
    if m:
        try:
            return now - parse_duration(m.group(1))
        except ValueError as e:
            raise InvalidArgument(f"{field}: {e}", field) from None
    try:
        v = float(t)
    except ValueError:
        pass
    else:
        if not math.isfinite(v):
            raise InvalidArgument(f"{field} must be a finite time", field)
        return v
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(
            f"{field} must be unix seconds, RFC 3339, 'now' or relative like -15m", field
        ) from None
    if dt.tzinfo is None:
        raise InvalidArgument(f"{field}: an RFC 3339 time needs a UTC offset (or Z)", field)
    return dt.timestamp()


def parse_tag_filter(params: Mapping[str, Any]) -> Tags:
    """`tags=k:v,k2:v2`, `tags={"k": "v"}`, or `tags[k]=v`."""
    pairs: dict[str, str] = {}
    raw = params.get("tags")
    if raw:
        raw = str(raw).strip()
        if raw.startswith("{"):
            try:
                obj = json.loads(raw)
            except ValueError:
                raise InvalidArgument("tags is not a valid JSON object", "tags") from None
            if not isinstance(obj, dict) or not all(isinstance(v, str) for v in obj.values()):
                raise InvalidArgument("tags must map strings to strings", "tags")
            pairs.update(obj)
        else:
            for item in raw.split(","):
                k, sep, v = item.partition(":")
                if not k or not sep:
                    raise InvalidArgument(f"tag filter {item!r} is not key:value", "tags")
                pairs[k] = v
    for k in params:
        if k.startswith("tags[") and k.endswith("]") and len(k) > 6:
            pairs[k[5:-1]] = str(params[k])
    return tuple(sorted(pairs.items()))


def parse_query(params: Mapping[str, Any], now: float, max_points: int) -> QuerySpec:
    name = params.get("name")
    if not name:
        raise InvalidArgument("name is required", "name")
    agg = params.get("agg")
    if not agg:
        raise InvalidArgument("agg is required", "agg")
    quantile: float | None = None
    m = _AGG_RE.fullmatch(agg)
    if m:
        quantile = float(m.group(1)) / 100.0
    elif agg not in _PLAIN_AGGS:
        raise InvalidArgument(
            f"unknown aggregation {agg!r}: use one of {', '.join(_PLAIN_AGGS)} or pNN like p99",
            "agg",
        )
    until = parse_time(params["until"], now, "until") if params.get("until") else now
    if params.get("since"):
        since = parse_time(params["since"], now, "since")
    else:
        since = until - DEFAULT_RANGE
    if since >= until:
        raise InvalidArgument("since must be before until", "since")
    window: float | None = None
    window_text = params.get("window") or None
    if window_text:
        try:
            window = parse_duration(window_text)
        except ValueError as e:
            raise InvalidArgument(str(e), "window") from None
        first = math.floor(since / window) * window
        n = math.ceil((until - first) / window)
        if n > max_points:
            fits = next(
                (
                    text
                    for text, w in _SUGGESTED_WINDOWS
                    if math.ceil((until - math.floor(since / w) * w) / w) <= max_points
                ),
                None,
            )
            hint = f"; window={fits} would fit" if fits else "; narrow since/until"
            raise QueryTooLarge(
                f"the answer would have {n} points per series, more than {max_points}{hint}",
                "window",
            )
    group_by = tuple(k for k in str(params.get("group_by", "")).split(",") if k)
    return QuerySpec(
        name=name,
        agg=agg,
        quantile=quantile,
        tags=parse_tag_filter(params),
        window=window,
        window_text=window_text,
        since=since,
        until=until,
        group_by=group_by,
    )


def _check_agg(spec: QuerySpec, mtype: MetricType) -> None:
    allowed = mtype.aggregations
    wanted = "pNN" if spec.quantile is not None else spec.agg
    if wanted not in allowed:
        raise InvalidArgument(
            f"{spec.agg} is not available for {mtype.value} metrics; "
            f"a {mtype.value} has: {', '.join(allowed)}",
            "agg",
        )


def _matches(tags: Tags, want: Tags) -> bool:
    if not want:
        return True
    have = dict(tags)
    return all(have.get(k) == v for k, v in want)


def _json_number(v: float) -> float | int | None:
    """JSON has no Infinity or NaN (a sum can overflow): those become null."""
    v = float(v)
    if not math.isfinite(v):
        return None
    if v.is_integer() and abs(v) < 2**53:
        return int(v)
    return v


def aggregate(rows: Sequence[BucketRow], spec: QuerySpec, seconds: float) -> float | None:
    """One aggregation other than a quantile (see _quantiles) over the rows of one point."""
    agg = spec.agg
    if agg == "count":
        return sum(r.count for r in rows)
    if agg == "sum":
        return sum(r.sum for r in rows)
    if agg == "avg":
        c = sum(r.count for r in rows)
        return sum(r.sum for r in rows) / c if c else None
    if agg == "rate":
        return sum(r.sum for r in rows) / seconds
    if agg == "min":
        return min((r.min for r in rows if r.min is not None), default=None)
    if agg == "max":
        return max((r.max for r in rows if r.max is not None), default=None)
    if agg == "last":
        # Rows come oldest first (disk, then pending snapshots, then live): on equal
        # timestamps the later row wins.
        best: BucketRow | None = None
        for r in rows:
            if r.last is None or r.last_ts is None:
                continue
            if best is None or r.last_ts >= (best.last_ts or 0.0):
                best = r
        return None if best is None else best.last
    if agg == "distinct":
        blobs = [r.hll for r in rows if r.hll is not None]
        return float(round(sketch.hll_estimate(sketch.hll_merge(blobs)))) if blobs else 0.0
    raise AssertionError(agg)


@dataclass(frozen=True, slots=True)
class Segment:
    """Rows of tier `resolution` with lo <= ts < hi."""

    resolution: float
    lo: float
    hi: float


def plan(
    resolutions: Sequence[float],
    complete_until: dict[float, float],
    window: float | None,
    start: float,
    until: float,
) -> list[Segment]:
    """Which tier serves which part of [start, until): the coarsest tier whose resolution divides
    the window serves the whole buckets it has completed; what is left at either edge goes to
    the next finer eligible tier, and the finest tier serves the rest."""
    coarse = [r for r in reversed(resolutions[1:]) if window is None or _is_multiple(window, r)]
    segments: list[Segment] = []

    def cover(lo: float, hi: float, candidates: list[float]) -> None:
        if lo >= hi:
            return
        if not candidates:
            segments.append(Segment(resolutions[0], lo, hi))
            return
        r, finer = candidates[0], candidates[1:]
        a = math.ceil(lo / r) * r
        b = min(math.floor(hi / r) * r, complete_until.get(r, 0.0))
        if a >= b:
            cover(lo, hi, finer)
            return
        cover(lo, a, finer)
        segments.append(Segment(r, a, b))
        cover(b, hi, finer)

    cover(start, until, coarse)
    return segments


def _is_multiple(a: float, b: float) -> bool:
    q = a / b
    return q >= 1 and abs(q - round(q)) < 1e-9


def _sketch_budget_error(n: int, limit: int, spec: QuerySpec) -> QueryTooLarge:
    span = spec.until - spec.since
    hint = "a coarser window (a multiple of 1m or 1h reads the rollup tiers)"
    if spec.window is None:
        hint = "a window that is a multiple of 1h, which reads the hourly tier"
    return QueryTooLarge(
        f"this query would merge about {n} bucket sketches, more than query.max_sketches "
        f"({limit}); use {hint}, a range shorter than {span:g}s, or a narrower tag filter",
        "window",
    )


class QueryEngine:
    def __init__(
        self,
        store: SqliteStore,
        aggregator: IntervalAggregator,
        *,
        max_sketches: int = 200_000,
    ) -> None:
        self.store = store
        self.aggregator = aggregator
        self.max_sketches = max_sketches

    def metric_type(self, tenant: str, name: str) -> MetricType:
        mtype = self.aggregator.registry.types.get((tenant, name))
        if mtype is None:
            raise MetricNotFound(f"no metric named {name!r}", "name")
        return mtype

    async def collect(
        self, tenant: str, spec: QuerySpec, start: float, sketches: str
    ) -> list[BucketRow]:
        """Every bucket row of the matching series in [start, until): from the tiers the plan
        picks, plus what is still in memory and not yet in the store. `sketches` as for
        read_rows: "skip", "raw" (blobs, for batch quantiles) or "decode"."""
        memory = self.aggregator.collect(tenant, spec.name)
        resolutions = self.store.resolutions

        def read(conn: sqlite3.Connection) -> tuple[int, list[BucketRow]]:
            seq = read_flushed_seq(conn)
            series = read_series(conn, tenant, spec.name)
            series = [s for s in series if _matches(s.tags, spec.tags)]
            segments = plan(
                resolutions,
                read_complete_until(conn, resolutions),
                spec.window,
                start,
                spec.until,
            )
            if sketches != "skip":
                n = len(series) * sum(math.ceil((g.hi - g.lo) / g.resolution) for g in segments)
                if n > self.max_sketches:
                    raise _sketch_budget_error(n, self.max_sketches, spec)
            rows: list[BucketRow] = []
            for g in segments:
                rows.extend(
                    read_rows(
                        conn,
                        series,
                        g.lo,
                        g.hi,
                        g.resolution,
                        sketches=sketches,
                        hll=spec.agg == "distinct",
                    )
                )
            return seq, rows

        seq, rows = await self.store.run_read(read)
        fresh = [
            (ts, key, acc)
            for s, ts, key, acc in memory
            if s > seq and start <= ts < spec.until and _matches(key[2], spec.tags)
        ]
        if fresh:
            batch = await asyncio.to_thread(finish, fresh)
            rows.extend(batch.rows())
        return rows

    async def run(self, tenant: str, spec: QuerySpec) -> dict[str, Any]:
        mtype = self.metric_type(tenant, spec.name)
        _check_agg(spec, mtype)
        finest = self.store.resolutions[0]
        if spec.window is not None and not _is_multiple(spec.window, finest):
            # A finest-tier bucket cannot be split across windows: sums and rates would be wrong.
            up = max(1, math.ceil(spec.window / finest)) * finest
            raise InvalidArgument(
                f"window must be a multiple of the finest storage tier ({finest:g}s); "
                f"window={up:g}s would do",
                "window",
            )
        start = math.floor(spec.since / spec.window) * spec.window if spec.window else spec.since
        rows = await self.collect(
            tenant, spec, start, sketches="skip" if spec.quantile is None else "raw"
        )
        result = await asyncio.to_thread(self._shape, spec, rows)
        return {
            "ok": True,
            "name": spec.name,
            "type": mtype.value,
            "agg": spec.agg,
            "tags": dict(spec.tags),
            "window": spec.window_text,
            "since": _json_number(spec.since),
            "until": _json_number(spec.until),
            **result,
        }

    async def export_sketch(self, tenant: str, spec: QuerySpec) -> dict[str, Any]:
        """The merged DDSketch of the range, as DDSketch protobuf (base64), with the exact
        count, sum, min and max."""
        mtype = self.metric_type(tenant, spec.name)
        if not mtype.has_sketch:
            raise InvalidArgument(
                f"a {mtype.value} metric has no sketch; only gauges, timings, histograms and "
                "distributions do",
                "name",
            )
        rows = await self.collect(tenant, spec, spec.since, sketches="decode")
        merged = sketch.merge(r.sketch for r in rows if r.sketch is not None)
        count = sum(r.count for r in rows)
        return {
            "ok": True,
            "name": spec.name,
            "type": mtype.value,
            "tags": dict(spec.tags),
            "since": _json_number(spec.since),
            "until": _json_number(spec.until),
            "count": _json_number(count),
            "sum": _json_number(sum(r.sum for r in rows)),
            "min": min((r.min for r in rows if r.min is not None), default=None),
            "max": max((r.max for r in rows if r.max is not None), default=None),
            "format": "ddsketch-proto",
            "relative_accuracy": sketch.RELATIVE_ACCURACY,
            "sketch": base64.b64encode(sketch.to_proto(merged)).decode("ascii"),
        }

    def _shape(self, spec: QuerySpec, rows: list[BucketRow]) -> dict[str, Any]:
        groups: dict[Tags, dict[float, list[BucketRow]]] = {}
        w = spec.window
        for r in rows:
            if spec.group_by:
                have = dict(r.key[2])
                g: Tags = tuple((k, have[k]) for k in spec.group_by if k in have)
            else:
                g = ()
            bucket = math.floor(r.ts / w) * w if w else spec.since
            groups.setdefault(g, {}).setdefault(bucket, []).append(r)
        seconds = w if w else spec.until - spec.since
        cells = [(g, ts, groups[g][ts]) for g in sorted(groups) for ts in sorted(groups[g])]
        if spec.quantile is not None:
            values = _quantiles([c[2] for c in cells], spec.quantile)
        else:
            values = [aggregate(c[2], spec, seconds) for c in cells]
        by_group: dict[Tags, list[dict[str, Any]]] = {g: [] for g in groups}
        for (g, ts, _), v in zip(cells, values, strict=True):
            if v is not None:
                by_group[g].append({"timestamp": _json_number(ts), "value": _json_number(v)})
        if not spec.group_by:
            return {"points": by_group.get((), [])}
        return {"series": [{"tags": dict(g), "points": by_group[g]} for g in sorted(groups)]}


def _quantiles(cells: list[list[BucketRow]], q: float) -> list[float | None]:
    """One quantile per cell, over the DDV1 blobs of all cells at once (no object per row),
    each estimate clamped into the cell's exact [min, max]; p0 and p100 are the exact extremes.
    Rows still in memory carry decoded bins: they are encoded to join the batch."""
    blobs: list[bytes] = []
    cell_ids: list[int] = []
    pending: list[sketch.Bins] = []
    pending_cells: list[int] = []
    for i, rows in enumerate(cells):
        for r in rows:
            if r.blob is not None:
                blobs.append(r.blob)
                cell_ids.append(i)
            elif r.sketch is not None:
                pending.append(r.sketch)
                pending_cells.append(i)
    blobs.extend(sketch.encode_many(pending))
    cell_ids.extend(pending_cells)
    values = sketch.cell_quantiles(blobs, np.asarray(cell_ids, dtype=np.int64), len(cells), q)
    out: list[float | None] = []
    for rows, v in zip(cells, values.tolist(), strict=True):
        mn = min((r.min for r in rows if r.min is not None), default=None)
        mx = max((r.max for r in rows if r.max is not None), default=None)
        if mn is None or mx is None:
            out.append(None)
        elif q == 0.0:
            out.append(mn)
        elif q == 1.0:
            out.append(mx)
        else:
            out.append(None if math.isnan(v) else min(max(v, mn), mx))
    return out
