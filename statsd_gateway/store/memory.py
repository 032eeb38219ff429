"""MemoryStore: the Store protocol (store/base.py) over Python dicts, for unit tests.

It keeps the protocol's rules the way the SQLite store does — a flush is all-or-nothing, a
bucket already stored is merged with, a seq already stored is ignored, reads see one state —
so a test of the flusher, the query engine or retention can run against it without a file and
without reaching into a backend's internals. `outage`: set it to an exception and every write
raises it (a store that is down), until it is set back to None. Nothing is persisted.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from statsd_gateway import sketch
from statsd_gateway.model import BucketRow, Matcher, RowBatch, SeriesKey, matches_all
from statsd_gateway.store.base import (
    NUMERIC_COLUMNS,
    Columns,
    FlushWrite,
    IdempotencyRecord,
    OthersSeries,
    RowRead,
    SeriesInfo,
    StoredRows,
    StoredState,
    T,
)
from statsd_gateway.store.tiers import plan_segments

# Per tier: (series id, bucket start) -> the bucket's row.
_Tier = dict[tuple[int, float], BucketRow]


@dataclass
class _State:
    series: dict[SeriesKey, SeriesInfo] = field(default_factory=dict)
    created: dict[int, float] = field(default_factory=dict)
    tiers: dict[float, _Tier] = field(default_factory=dict)
    flushed_seq: int = 0
    complete_until: dict[float, float] = field(default_factory=dict)
    gauges: dict[SeriesKey, tuple[float, float]] = field(default_factory=dict)
    idempotency: dict[tuple[str, str], IdempotencyRecord] = field(default_factory=dict)

    def copy(self) -> _State:
        return _State(
            dict(self.series),
            dict(self.created),
            {res: dict(rows) for res, rows in self.tiers.items()},
            self.flushed_seq,
            dict(self.complete_until),
            dict(self.gauges),
            dict(self.idempotency),
        )


class MemoryStore:
    """`resolutions` are the tiers' bucket widths, finest first; `clock` stamps series."""

    def __init__(
        self,
        *,
        resolutions: Sequence[float] = (10.0, 60.0, 3600.0),
        read_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.resolutions = tuple(resolutions)
        self.read_timeout = read_timeout
        self._clock = clock
        self._s = _State(
            tiers={r: {} for r in self.resolutions},
            complete_until={r: 0.0 for r in self.resolutions[1:]},
        )
        self._last_write: dict[int, float] = {}
        self.outage: Exception | None = None
        self.writes = 0  # committed write_flush calls (tests count them)

    @property
    def gone(self) -> str | None:
        return None

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> StoredState:
        s = self._s
        return StoredState(
            list(s.series.values()), s.flushed_seq, dict(s.complete_until), dict(s.gauges)
        )

    async def close(self, timeout: float | None = None) -> None:
        return None

    async def ensure_in_place(self, *, recreate: bool = False) -> None:
        return None

    # -- writes ----------------------------------------------------------------------------

    def _check_up(self) -> None:
        if self.outage is not None:
            raise self.outage

    async def write_flush(self, flush: FlushWrite, *, trial: bool = False) -> bool:
        self._check_up()
        if flush.seq is not None and flush.seq <= self._s.flushed_seq:
            return False
        staged = self._s.copy()
        touched = self._merge(staged, self.resolutions[0], flush.rows)
        for res, rows in flush.rollups.items():
            touched += self._merge(staged, res, rows)
        staged.complete_until.update(flush.complete_until)
        staged.gauges.update(flush.gauges)
        for r in flush.idempotency:
            staged.idempotency.setdefault((r.tenant, r.key), replace(r, seq=0))
        if flush.idempotency_expire_before is not None:
            cut = flush.idempotency_expire_before
            staged.idempotency = {k: r for k, r in staged.idempotency.items() if r.created >= cut}
        if flush.seq is not None:
            staged.flushed_seq = flush.seq
        if not trial:
            self._s = staged
            now = self._clock()
            self._last_write.update(dict.fromkeys(touched, now))
            self.writes += 1
        return True

    async def write_rollups(
        self, rollups: Mapping[float, RowBatch], complete_until: Mapping[float, float]
    ) -> None:
        self._check_up()
        staged = self._s.copy()
        for res, rows in rollups.items():
            self._merge(staged, res, rows)
        staged.complete_until.update(complete_until)
        self._s = staged

    def _merge(self, state: _State, res: float, rows: RowBatch) -> list[int]:
        tier = state.tiers[res]
        ids = []
        wanted = None if rows.series is None else rows.series.tolist()
        taken: set[int] | None = None  # the stored ids, gathered at the first new series
        top = 0
        for n, row in enumerate(rows.rows()):
            info = state.series.get(row.key)
            if info is None:
                if taken is None:
                    taken = {i.id for i in state.series.values()}
                    top = max(taken, default=0)
                sid = top + 1  # as SQLite numbers a row without one
                if wanted is not None and wanted[n] not in taken:
                    sid = wanted[n]  # the registry's id, as the SQLite store keeps it
                taken.add(sid)
                top = max(top, sid)
                info = state.series[row.key] = SeriesInfo(sid, *row.key, row.type)
                state.created[sid] = self._clock()
            ids.append(info.id)
            old = tier.get((info.id, row.ts))
            tier[(info.id, row.ts)] = row if old is None else _merged(old, row)
        return ids

    async def delete_series(self, keys: Sequence[SeriesKey]) -> tuple[int, int]:
        self._check_up()
        staged = self._s.copy()
        ids = {staged.series[k].id for k in keys if k in staged.series}
        rows = 0
        for res, tier in staged.tiers.items():
            kept = {k: r for k, r in tier.items() if k[0] not in ids}
            rows += len(tier) - len(kept)
            staged.tiers[res] = kept
        self._forget(staged, [k for k in keys if k in staged.series])
        self._s = staged
        return len(ids), rows

    async def delete_expired(self, resolution: float, before: float) -> int:
        self._check_up()
        staged = self._s.copy()
        tier = staged.tiers[resolution]
        kept = {k: r for k, r in tier.items() if k[1] >= before}
        staged.tiers[resolution] = kept
        self._s = staged
        return len(tier) - len(kept)

    async def seal_chunks(self, on_sealed: Callable[[int], None] | None = None) -> int:
        return 0  # rows stay one per bucket here: there is nothing to seal

    async def forget_stale_series(self, horizon: float) -> list[SeriesKey]:
        self._check_up()
        if not self.resolutions[1:]:
            return []
        staged = self._s.copy()
        with_rows = {sid for res in self.resolutions[1:] for sid, _ in staged.tiers[res]}
        stale = [
            key
            for key, info in staged.series.items()
            if staged.created[info.id] < horizon
            and info.id not in with_rows
            and self._last_write.get(info.id, -1.0) < horizon
        ]
        self._forget(staged, stale)
        self._s = staged
        return stale

    def _forget(self, state: _State, keys: Sequence[SeriesKey]) -> None:
        """Drops the stored series `keys` and everything kept about them beside their rows."""
        for key in keys:
            sid = state.series.pop(key).id
            state.created.pop(sid, None)
            state.gauges.pop(key, None)
            self._last_write.pop(sid, None)

    # -- reads -----------------------------------------------------------------------------

    async def flushed_seq(self) -> int:
        return self._s.flushed_seq

    async def read_for_rebuild(self, resolution: float, since: float) -> RowBatch:
        rows = [r for (_, ts), r in sorted(self._s.tiers[resolution].items()) if ts >= since]
        return RowBatch.from_rows(rows)

    async def series(
        self, tenant: str, name: str | None = None, matchers: Sequence[Matcher] = ()
    ) -> list[SeriesInfo]:
        return [
            s
            for s in sorted(self._s.series.values(), key=_listing_order)
            if s.tenant == tenant and (name is None or s.name == name)
            if matches_all(s.tags, matchers)
        ]

    async def tag_values(self, tenant: str, key: str, name: str | None = None) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in await self.series(tenant, name):
            value = dict(s.tags).get(key)
            if value is not None:
                counts[value] = counts.get(value, 0) + 1
        return counts

    async def idempotency_record(self, tenant: str, key: str) -> IdempotencyRecord | None:
        return self._s.idempotency.get((tenant, key))

    async def claim_idempotency(self, claim: IdempotencyRecord) -> IdempotencyRecord | None:
        return await self.idempotency_record(claim.tenant, claim.key)  # one gateway: no claims

    async def release_idempotency(self, claim: IdempotencyRecord) -> None:
        return None

    async def series_of_others(self) -> OthersSeries:
        return OthersSeries()  # one gateway owns the store

    async def read_rows_then(self, request: RowRead, then: Callable[[StoredRows], T]) -> T:
        return await asyncio.to_thread(then, await self.read_rows(request))

    async def read_rows(self, request: RowRead) -> StoredRows:
        s = self._s  # one state for the whole read: writes replace it, never change it
        series = [
            i
            for i in sorted(s.series.values(), key=_listing_order)
            if i.tenant == request.tenant and i.name == request.name
            if matches_all(i.tags, request.matchers)
        ]
        position = {info.id: n for n, info in enumerate(series)}
        segments = plan_segments(
            self.resolutions, s.complete_until, request.window, request.start, request.until
        )
        if request.sketch_budget is not None:
            request.sketch_budget(len(series) * sum(g.buckets for g in segments))
        picked: list[tuple[int, BucketRow]] = []
        for g in segments:
            rows = [
                (position[sid], r)
                for (sid, ts), r in s.tiers[g.resolution].items()
                if sid in position and g.lo <= ts < g.hi
            ]
            picked += sorted(rows, key=lambda pr: (pr[1].ts, pr[0]))
        return StoredRows(s.flushed_seq, series, _columns(picked, request))


def _listing_order(info: SeriesInfo) -> tuple[str, str]:
    """The order the SQLite store lists series in (`ORDER BY name, tags`): its tags column is
    this JSON text, and SQLite compares text by its UTF-8 bytes, which order as Python
    compares code points."""
    tags = json.dumps(dict(info.tags), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return info.name, tags


def _columns(picked: list[tuple[int, BucketRow]], request: RowRead) -> Columns:
    rows = [r for _, r in picked]

    def column(name: str) -> npt.NDArray[np.float64]:
        values = [getattr(r, name) for r in rows]
        return np.array([math.nan if v is None else v for v in values], dtype=np.float64)

    unknown = [v for v in request.values if v not in NUMERIC_COLUMNS]
    if unknown:
        raise ValueError(f"not a numeric column: {', '.join(unknown)}")
    sketch_rows = (
        [i for i, r in enumerate(rows) if r.sketch is not None] if request.sketches else []
    )
    hll_rows = [i for i, r in enumerate(rows) if r.hll is not None] if request.hll else []
    return Columns(
        ts=np.array([r.ts for r in rows], dtype=np.float64),
        series=np.array([p for p, _ in picked], dtype=np.int64) if request.by_series else None,
        values={v: column(v) for v in request.values},
        sketches=sketch.flat_from_bins([rows[i].sketch for i in sketch_rows]),  # type: ignore[misc]
        sketch_rows=np.array(sketch_rows, dtype=np.int64),
        hlls=[rows[i].hll for i in hll_rows],  # type: ignore[misc]
        hll_rows=np.array(hll_rows, dtype=np.int64),
    )


def _merged(old: BucketRow, new: BucketRow) -> BucketRow:
    """A late row merged into the stored one, as the SQLite upsert merges it."""
    last, last_ts = old.last, old.last_ts
    if new.last_ts is not None and (old.last_ts is None or new.last_ts >= old.last_ts):
        last = new.last if new.last is not None else old.last
        last_ts = new.last_ts
    sketches = [b for b in (old.sketch, new.sketch) if b is not None]
    hlls = [h for h in (old.hll, new.hll) if h is not None]
    return BucketRow(
        old.ts,
        old.key,
        old.type,
        old.count + new.count,
        old.sum + new.sum,
        _pick(min, old.min, new.min),
        _pick(max, old.max, new.max),
        last,
        last_ts,
        sketch.merge(sketches) if len(sketches) == 2 else (sketches[0] if sketches else None),
        sketch.hll_merge(hlls) if len(hlls) == 2 else (hlls[0] if hlls else None),
    )


def _pick(fn: Callable[[float, float], float], a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return float(fn(a, b))
