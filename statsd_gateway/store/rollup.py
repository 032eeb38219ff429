"""In-memory rollups of the coarse tiers (research note §4, "in-memory, recommended").

Every flush writes its rows into the finest tier. The same rows are folded here into the open
buckets of the next tier; a bucket is written once complete (its end is at or before the flush
boundary), and its merged row is then folded into the next tier up, and so on. So each coarse row
is the exact merge of the finer rows it covers: counts and sums add, min and max combine, `last`
takes the latest timestamp, sketches and HyperLogLogs merge.

Open buckets are never written: after a restart they are rebuilt from the tier below, which holds
everything they covered (`rebuild`). Late points for a bucket already written are folded as usual
and, their bucket being complete, written at once and merged into the row on disk.

Only the store's writer thread touches a TierRollup.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from statsd_gateway import sketch
from statsd_gateway.model import BucketRow, SeriesKey

OpenBuckets = dict[tuple[float, SeriesKey], list[BucketRow]]
RollupState = tuple[list[OpenBuckets], dict[float, float]]


class TierRollup:
    def __init__(self, resolutions: Sequence[float], complete_until: dict[float, float]) -> None:
        """`resolutions`: every tier, finest first; `complete_until`: per coarse tier, as stored."""
        self.coarse = tuple(resolutions[1:])
        self.complete_until = {r: complete_until.get(r, 0.0) for r in self.coarse}
        self._open: list[OpenBuckets] = [{} for _ in self.coarse]

    def fold(self, rows: Sequence[BucketRow], level: int = 0) -> None:
        """Adds rows of the tier below coarse tier `level` to its open buckets."""
        if level >= len(self.coarse):
            return
        res = self.coarse[level]
        open_ = self._open[level]
        for r in rows:
            b = math.floor(r.ts / res) * res
            parts = open_.get((b, r.key))
            # A new list, never an append: save() keeps shallow copies of the open buckets.
            open_[(b, r.key)] = [r] if parts is None else [*parts, r]

    def complete(self, boundary: float) -> dict[float, list[BucketRow]]:
        """Closes every bucket that ends at or before `boundary`, tier by tier upwards; returns
        the merged rows to write, per tier, each of which also feeds the next tier."""
        completed: dict[float, list[BucketRow]] = {}
        for level, res in enumerate(self.coarse):
            until = max(self.complete_until[res], math.floor(boundary / res) * res)
            self.complete_until[res] = until
            open_ = self._open[level]
            done = [k for k in open_ if k[0] + res <= until]
            if not done:
                continue
            merged = merge_parts([(k[0], open_.pop(k)) for k in done])
            completed[res] = merged
            self.fold(merged, level + 1)
        return completed

    def save(self) -> RollupState:
        """A copy of the state to restore() if the write of what fold/complete produced fails.
        Shallow: fold() and complete() replace the lists they change instead of mutating them."""
        return [dict(o) for o in self._open], dict(self.complete_until)

    def restore(self, state: RollupState) -> None:
        opened, until = state
        self._open = [dict(o) for o in opened]
        self.complete_until = dict(until)

    def open_buckets(self) -> int:
        return sum(len(o) for o in self._open)


def merge_parts(groups: Sequence[tuple[float, list[BucketRow]]]) -> list[BucketRow]:
    """One row per group (bucket start, the rows of one series it covers), sketches merged in
    one vectorised pass over all groups."""
    out: list[BucketRow] = []
    sketch_items: list[sketch.Bins] = []
    sketch_groups: list[int] = []
    with_sketch: list[int] = []
    for ts, parts in groups:
        first = parts[0]
        row = BucketRow(
            ts=ts,
            key=first.key,
            type=first.type,
            count=sum(p.count for p in parts),
            sum=sum(p.sum for p in parts),
            min=min((p.min for p in parts if p.min is not None), default=None),
            max=max((p.max for p in parts if p.max is not None), default=None),
        )
        latest = None
        for p in parts:  # on equal timestamps the later part wins, as in the store's upsert
            if p.last_ts is not None and (latest is None or p.last_ts >= (latest.last_ts or 0)):
                latest = p
        if latest is not None:
            row.last, row.last_ts = latest.last, latest.last_ts
        hlls = [p.hll for p in parts if p.hll is not None]
        if hlls:
            row.hll = hlls[0] if len(hlls) == 1 else sketch.hll_merge(hlls)
        bins = [p.sketch for p in parts if p.sketch is not None]
        if len(bins) == 1:
            row.sketch = bins[0]
        elif bins:
            with_sketch.append(len(out))
            sketch_items.extend(bins)
            sketch_groups.extend([len(with_sketch) - 1] * len(bins))
        out.append(row)
    if with_sketch:
        merged = sketch.merge_groups(sketch_items, np.asarray(sketch_groups, dtype=np.int64))
        for i, b in zip(with_sketch, merged, strict=True):
            out[i].sketch = b
    return out
