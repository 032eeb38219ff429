"""In-memory rollups of the coarse tiers (research note §4, "in-memory, recommended").

Every flush writes its rows into the finest tier. The same rows are folded here into the open
buckets of the next tier; a bucket is written once complete (its end is at or before the flush
boundary), and its merged row is then folded into the next tier up, and so on. So each coarse row
is the exact merge of the finer rows it covers: counts and sums add, min and max combine, `last`
takes the latest timestamp, sketches and HyperLogLogs merge.

Rows stay columnar (RowBatch): folding a flush appends its batch, completing a bucket merges the
batches in one vectorised pass (`merge_rows`), and a tier holding many batches merges them early
into one (the hour tier would otherwise keep 60 minute batches).

Open buckets are never written: after a restart they are rebuilt from the tier below, which holds
everything they covered (Flusher.rebuild_rollups). Late points for a bucket already written are
folded as usual and, their bucket being complete, written at once and merged into the row on disk.

Only the flusher touches a TierRollup: on its worker thread, or on the event loop while that
worker is idle (a flush restoring the state it saved; an admin delete holds the flusher paused).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from statsd_gateway import sketch
from statsd_gateway.model import RowBatch, SeriesKey

# Per coarse tier, the batches folded into its open buckets, oldest first.
OpenBatches = list[list[RowBatch]]
RollupState = tuple[OpenBatches, dict[float, float]]
# Past this many batches open in one tier, they are merged into one (bounds memory and spreads
# the hour's merge over the hour).
_COMPACT_AFTER = 8


class TierRollup:
    """The open buckets of every coarse tier, and how far each tier is complete: fed the finest
    tier's rows of each flush (`fold`), it hands back the coarse rows a flush completes
    (`complete`), each the exact merge of the rows it covers; `save`/`restore` undo a fold whose
    write failed."""

    def __init__(self, resolutions: Sequence[float], complete_until: dict[float, float]) -> None:
        """`resolutions`: every tier, finest first; `complete_until`: per coarse tier, as stored."""
        self.coarse = tuple(resolutions[1:])
        self.complete_until = {r: complete_until.get(r, 0.0) for r in self.coarse}
        self._open: OpenBatches = [[] for _ in self.coarse]

    def fold(self, rows: RowBatch, level: int = 0) -> None:
        """Adds rows of the tier below coarse tier `level` to its open buckets."""
        if level >= len(self.coarse) or not len(rows):
            return
        # A new list, never an append: save() keeps shallow copies of the open buckets.
        batches = [*self._open[level], rows]
        if len(batches) > _COMPACT_AFTER:
            res = self.coarse[level]
            batches = [merge_rows(RowBatch.concat(batches), res)]
        self._open[level] = batches

    def complete(self, boundary: float) -> dict[float, RowBatch]:
        """Closes every bucket that ends at or before `boundary`, tier by tier upwards; returns
        the merged rows to write, per tier, each of which also feeds the next tier."""
        completed: dict[float, RowBatch] = {}
        for level, res in enumerate(self.coarse):
            until = max(self.complete_until[res], math.floor(boundary / res) * res)
            self.complete_until[res] = until
            batches = self._open[level]
            # Most flushes complete nothing: check before concatenating.
            if not batches or min(float(b.ts.min()) for b in batches) // res * res + res > until:
                continue
            rows = RowBatch.concat(batches)
            done = _bucket_of(rows.ts, res) + res <= until
            if not done.any():
                continue
            if done.all():
                self._open[level] = []
            else:
                self._open[level] = [rows.take(np.flatnonzero(~done))]
                rows = rows.take(np.flatnonzero(done))
            merged = merge_rows(rows, res)
            completed[res] = merged
            self.fold(merged, level + 1)
        return completed

    def discard(self, keys: set[SeriesKey]) -> None:
        """Drops the open buckets of these series (an admin delete)."""
        for level, batches in enumerate(self._open):
            kept = []
            for b in batches:
                keep = np.fromiter((k not in keys for k in b.keys), dtype=np.bool_, count=len(b))
                if keep.any():  # complete() takes every open batch to hold rows
                    kept.append(b if keep.all() else b.take(np.flatnonzero(keep)))
            self._open[level] = kept

    def save(self) -> RollupState:
        """A copy of the state to restore() if the write of what fold/complete produced fails.
        Shallow: fold() and complete() replace the lists they change instead of mutating them."""
        return [list(o) for o in self._open], dict(self.complete_until)

    def restore(self, state: RollupState) -> None:
        opened, until = state
        self._open = [list(o) for o in opened]
        self.complete_until = dict(until)

    def open_buckets(self) -> int:
        """Open (bucket, series) pairs over every coarse tier."""
        n = 0
        for res, batches in zip(self.coarse, self._open, strict=True):
            if batches:
                rows = RowBatch.concat(batches)
                n += len(set(zip(_bucket_of(rows.ts, res).tolist(), rows.keys, strict=True)))
        return n


def _bucket_of(ts: npt.NDArray[np.float64], res: float) -> npt.NDArray[np.float64]:
    out: npt.NDArray[np.float64] = np.floor(ts / res) * res
    return out


def merge_rows(rows: RowBatch, res: float) -> RowBatch:
    """One row per (bucket of width `res`, series): counts and sums add (in row order), min and
    max combine, `last` is that of the row with the latest last_ts (on equal timestamps the
    later row, as in the store's upsert), sketches and HyperLogLogs merge."""
    n = len(rows)
    if n == 0:
        return rows
    series = dict(zip(dict.fromkeys(rows.keys), itertools.count()))
    sid = np.fromiter(map(series.__getitem__, rows.keys), dtype=np.int64, count=n)
    bucket = _bucket_of(rows.ts, res)
    b_idx = np.rint(bucket / res).astype(np.int64)
    b_min = int(b_idx.min())
    width = int(b_idx.max()) - b_min + 1
    # Group per (series, bucket), numbered in order of first appearance.
    _, first, inv = np.unique(sid * width + (b_idx - b_min), return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    group = rank[inv.reshape(-1)]
    n_g = int(order.size)
    heads = first[order]

    count = np.bincount(group, weights=rows.count, minlength=n_g).astype(np.float64)
    total = np.bincount(group, weights=rows.sum, minlength=n_g).astype(np.float64)
    mn = np.full(n_g, np.nan)
    np.fmin.at(mn, group, rows.min)
    mx = np.full(n_g, np.nan)
    np.fmax.at(mx, group, rows.max)
    last = np.full(n_g, np.nan)
    last_ts = np.full(n_g, np.nan)
    has_last = ~np.isnan(rows.last_ts)
    if has_last.any():
        idx = np.flatnonzero(has_last)
        # Sorted by group, then last_ts, then row: the last of each group wins.
        o = idx[np.lexsort((idx, rows.last_ts[idx], group[idx]))]
        g_o = group[o]
        tail = np.flatnonzero(np.append(g_o[1:] != g_o[:-1], True))
        last[g_o[tail]] = rows.last[o[tail]]
        last_ts[g_o[tail]] = rows.last_ts[o[tail]]
    hll: list[bytes | None] = [None] * n_g
    with_hll = [i for i, h in enumerate(rows.hll) if h is not None]
    if with_hll:
        parts: dict[int, list[bytes]] = {}
        for i in with_hll:
            blob = rows.hll[i]
            assert blob is not None
            parts.setdefault(int(group[i]), []).append(blob)
        for gid, blobs in parts.items():
            hll[gid] = blobs[0] if len(blobs) == 1 else sketch.hll_merge(blobs)
    has_sketch = np.bincount(group, weights=rows.has_sketch, minlength=n_g) > 0
    at = heads.tolist()
    return RowBatch(
        ts=bucket[heads], keys=[rows.keys[i] for i in at], types=[rows.types[i] for i in at],
        count=count, sum=total, min=mn, max=mx, last=last, last_ts=last_ts,
        sketches=sketch.merge_flat(rows.sketches, group, n_g), has_sketch=has_sketch, hll=hll,
        series=None if rows.series is None else rows.series[heads],
    )  # fmt: skip
