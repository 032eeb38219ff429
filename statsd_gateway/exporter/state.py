"""What the scrape shows of a tenant's metrics, kept up to date from every flush written.

A drop-in for statsd_exporter's `/metrics` (docs/PROMETHEUS.md, "The scrape"):
- a counter is the sum of its increments since the daemon started (Prometheus sees a reset at
  a restart, as with statsd_exporter);
- a gauge is its latest value;
- a set is the distinct members of its latest bucket (a gauge);
- a timing, histogram or distribution is a summary: its count and sum since start, and
  quantiles (0.5, 0.9 and 0.99, or its mapping rule's) over the last 10 minutes, from the
  DDSketches of its buckets, merged in five 2-minute slots that age out as statsd_exporter's
  summaries do (so a quantile covers 8 to 10 minutes and the slot under way); or, where its
  mapping rule says `observer_type: histogram`, a histogram of the rule's buckets, counted
  since start from its sketches merged since start;
- a series whose rule has a `ttl` leaves the scrape once it has had no row for that long
  (the first scrape after that forgets it); a series that comes back, or one whose type
  changes, starts again from nothing: its count, sum, quantiles and buckets alike.

`add()` takes each RowBatch the flusher has written (on the flush worker thread); `snapshot()`
copies what a scrape renders (exposition.py, protobuf.py), under the same lock, off the loop.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from statsd_gateway import sketch
from statsd_gateway.mapping_file import SeriesOptions
from statsd_gateway.model import MetricType, RowBatch, SeriesKey

QUANTILES = (0.5, 0.9, 0.99)
QUANTILE_WINDOW = 600.0
QUANTILE_SLOTS = 5
# Sketches by series: the keys, and one FlatBins item each, in that order.
Merged = tuple[list[SeriesKey], sketch.FlatBins]


@dataclass(slots=True)
class SeriesState:
    type: MetricType
    updated: float  # daemon time of its last row
    count: float = 0.0  # counters: the increments' sum is `total`; summaries: observations
    total: float = 0.0
    value: float = math.nan  # gauges and sets
    value_ts: float = -math.inf
    options: SeriesOptions | None = None  # of the mapping rule that made it (or the defaults)
    members: bytes | None = None  # sets: the HyperLogLog of the bucket at value_ts

    def copy(self) -> SeriesState:
        return SeriesState(
            self.type, self.updated, self.count, self.total, self.value, self.value_ts,
            self.options, self.members,
        )  # fmt: skip

    @property
    def is_histogram(self) -> bool:
        """Shown as a histogram (its rule says so), not as a summary."""
        o = self.options
        return o is not None and o.observer_type == "histogram" and is_observer(self.type)

    @property
    def quantiles(self) -> tuple[float, ...]:
        o = self.options
        return tuple(q for q, _ in o.quantiles) if o is not None and o.quantiles else QUANTILES


def is_observer(mtype: MetricType) -> bool:
    """statsd_exporter's observers: the types kept in a sketch, gauges aside."""
    return mtype.has_sketch and mtype is not MetricType.GAUGE


@dataclass(frozen=True, slots=True)
class Scrape:
    """What one scrape renders: each series' state (copied), the quantiles of the summaries
    (each series' own quantiles, in order) and the bins of the histograms since start."""

    series: dict[SeriesKey, SeriesState]
    quantiles: dict[SeriesKey, tuple[float, ...]]
    since_start: dict[SeriesKey, sketch.Bins]


class ScrapeState:
    def __init__(
        self,
        tenant: str,
        clock: Callable[[], float],
        *,
        options_of: Callable[[SeriesKey], SeriesOptions | None] = lambda key: None,
    ) -> None:
        self.tenant = tenant
        self.clock = clock
        self.options_of = options_of  # asked once per series, the first time it is seen
        self._lock = threading.Lock()
        self._series: dict[SeriesKey, SeriesState] = {}
        # The sketches of the summaries, one FlatBins item per series in each 2-minute slot:
        # the closed slots, their merge (made again when one opens or ages out, not at each
        # scrape), and the slot under way (each flush merged into it as it comes).
        self._slot_width = QUANTILE_WINDOW / QUANTILE_SLOTS
        self._closed: deque[tuple[int, Merged]] = deque()
        self._closed_merged: Merged | None = None
        self._open_slot = -1
        self._open: Merged | None = None
        self._since_start: Merged | None = None  # the histograms' sketches since start

    def add(self, rows: RowBatch) -> None:
        """The rows of one flush (all tenants; this tenant's are taken)."""
        mine = [i for i, key in enumerate(rows.keys) if key[0] == self.tenant]
        if not mine:
            return
        now = self.clock()
        with self._lock:
            self._rotate(now)
            summaries: list[int] = []
            histograms: list[int] = []
            remade: set[SeriesKey] = set()
            for i in mine:
                key, mtype = rows.keys[i], rows.types[i]
                state = self._series.get(key)
                if state is None or state.type is not mtype or _expired(state, now):
                    if state is not None:  # another type, or back after its ttl (with no
                        # scrape in between to forget it): what the old one had is not its
                        remade.add(key)
                        summaries = [j for j in summaries if rows.keys[j] != key]
                        histograms = [j for j in histograms if rows.keys[j] != key]
                    state = self._series[key] = SeriesState(
                        mtype, now, options=self.options_of(key)
                    )
                state.updated = now
                self._fold(state, rows, i)
                if is_observer(mtype) and rows.has_sketch[i]:
                    (histograms if state.is_histogram else summaries).append(i)
            if remade:
                self._forget(remade)
            if summaries:
                self._open = _folded(self._open, rows, summaries)
            if histograms:
                self._since_start = _folded(self._since_start, rows, histograms)

    @staticmethod
    def _fold(state: SeriesState, rows: RowBatch, i: int) -> None:
        mtype = state.type
        if mtype is MetricType.COUNTER:
            state.total += float(rows.sum[i])
        elif mtype is MetricType.GAUGE:
            ts = float(rows.last_ts[i])
            if not math.isnan(ts) and ts >= state.value_ts:
                state.value, state.value_ts = float(rows.last[i]), ts
        elif mtype is MetricType.SET:
            # A later flush may bring more members of the same bucket (late points): they
            # join its members, as the store merges them.
            ts = float(rows.ts[i])
            blob = rows.hll[i]
            if blob is not None and ts >= state.value_ts:
                if ts == state.value_ts:
                    blob = sketch.hll_merge_pair(state.members, blob) or blob
                state.members, state.value_ts = blob, ts
                state.value = float(round(sketch.hll_estimate(blob)))
        else:
            state.count += float(rows.count[i])
            state.total += float(rows.sum[i])

    def _rotate(self, now: float) -> None:
        slot = math.floor(now / self._slot_width)
        changed = False
        if slot != self._open_slot:
            if self._open:
                self._closed.append((self._open_slot, self._open))
                changed = True
            self._open, self._open_slot = None, slot
        while self._closed and self._closed[0][0] <= slot - QUANTILE_SLOTS:
            self._closed.popleft()
            changed = True
        if changed:
            parts = [m for _, m in self._closed]
            self._closed_merged = _merged(parts) if parts else None

    def forget(self, keys: Iterable[SeriesKey]) -> None:
        """Series gone from the store (deleted, through this gateway or another on the same
        store, or forgotten as stale): gone from the scrape with their sketches; one that
        comes back starts from nothing."""
        gone = set(keys)
        with self._lock:
            for key in gone:
                self._series.pop(key, None)
            self._forget(gone)

    def _forget(self, keys: set[SeriesKey]) -> None:
        """Drops the sketches of series forgotten or made again: since start, and in every
        quantile slot (so a series that comes back starts from nothing, as its count does)."""
        self._since_start = _without(self._since_start, keys)
        self._open = _without(self._open, keys)
        closed = [(slot, _without(m, keys)) for slot, m in self._closed]
        if any(m is not was for (_, m), (_, was) in zip(closed, self._closed, strict=True)):
            self._closed = deque((slot, m) for slot, m in closed if m is not None)
            # Their merge less the keys is the merge of the slots less the keys (merging
            # again would take 100 ms at 10,000 series; a delete runs on the loop).
            self._closed_merged = _without(self._closed_merged, keys)

    def snapshot(self) -> Scrape:
        """The series to render (those past their TTL forgotten, with their sketches) and the
        summaries' quantiles. Runs off the loop."""
        now = self.clock()
        with self._lock:
            self._rotate(now)
            expired = {k for k, s in self._series.items() if _expired(s, now)}
            for key in expired:
                del self._series[key]
            if expired:
                self._forget(expired)
            series = {k: s.copy() for k, s in self._series.items()}
            parts = [m for m in (self._closed_merged, self._open) if m is not None]
            since_start = self._since_start
        bins: dict[SeriesKey, sketch.Bins] = {}
        if since_start is not None:
            keys, flat = since_start
            bins = {k: flat.bins(i) for i, k in enumerate(keys) if k in series}
        return Scrape(series, _quantiles(parts, series), bins)


def _expired(state: SeriesState, now: float) -> bool:
    ttl = None if state.options is None else state.options.ttl
    return ttl is not None and ttl > 0 and now - state.updated > ttl


def _without(have: Merged | None, keys: set[SeriesKey]) -> Merged | None:
    """`have` without the items of `keys` (itself if it has none of them; None if empty)."""
    if have is None:
        return None
    have_keys, flat = have
    keep = [i for i, k in enumerate(have_keys) if k not in keys]
    if len(keep) == len(have_keys):
        return have
    if not keep:
        return None
    return [have_keys[i] for i in keep], sketch.flat_take(flat, keep)


def _folded(have: Merged | None, rows: RowBatch, items: list[int]) -> Merged:
    """`have` with the sketches of rows `items` merged in, one item per series."""
    part = ([rows.keys[i] for i in items], sketch.flat_take(rows.sketches, items))
    return _merged([have, part] if have else [part])


def _merged(parts: list[Merged]) -> Merged:
    """The items of `parts` merged into one per series."""
    index: dict[SeriesKey, int] = {}
    groups = [index.setdefault(k, len(index)) for keys, _ in parts for k in keys]
    flat = sketch.flat_concat([f for _, f in parts])
    return list(index), sketch.merge_flat(flat, np.asarray(groups, dtype=np.int64), len(index))


def _quantiles(
    parts: list[Merged], series: dict[SeriesKey, SeriesState]
) -> dict[SeriesKey, tuple[float, ...]]:
    """Each summary's quantiles (its own, in order), one cell_quantiles per distinct q."""
    if not parts:
        return {}
    every = [k for ks, _ in parts for k in ks]
    index = {k: i for i, k in enumerate(dict.fromkeys(every))}
    groups = np.fromiter(map(index.__getitem__, every), dtype=np.int64, count=len(every))
    keys, flat = list(index), sketch.flat_concat([f for _, f in parts])
    rules = {series[k].quantiles for k in keys if k in series}
    wanted = sorted({q for qs in rules for q in qs})
    # One window over one cell per series: the window kernel merges each series' items
    # (the closed slots' merge, the open slot) and ranks them at once, per q.
    zero, one = np.zeros(1, dtype=np.int64), np.ones(1, dtype=np.int64)
    cell = np.zeros(len(groups), dtype=np.int64)
    per_q: dict[float, list[float]] = {}
    for q in wanted:
        got = sketch.window_quantiles(flat, groups, cell, len(keys), 1, zero, one, q)
        if got is None:  # weighted counts: the exact path
            merged = _merged(parts)[1]
            cells = np.arange(len(keys), dtype=np.int64)
            per_q[q] = sketch.cell_quantiles(merged, cells, len(keys), q).tolist()
        else:
            per_q[q] = got[:, 0].tolist()
    if len(rules) == 1:  # the usual case: every summary with the same quantiles
        (qs,) = rules
        rows = zip(keys, zip(*(per_q[q] for q in qs), strict=True), strict=True)
        return {k: v for k, v in rows if k in series}
    return {
        k: tuple(per_q[q][i] for q in series[k].quantiles)
        for i, k in enumerate(keys)
        if k in series
    }
