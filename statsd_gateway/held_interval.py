"""A snapshot's held interval (Snapshot.held, the native core's `Interval`): finished into rows,
read by queries, added to by a late logged body, and turned into accumulators, each exactly as
the accumulators the swap used to make would have been (the eager path: snapshot.merge_entries
at the swap).

Contract:
- Same rows, in the same order. The eager path makes the accumulators in the held table's
  order (an entry's `origin`: its place as swapped out), buckets in the order first seen and,
  within one, series in that order; what a write adds after the swap comes after them, a new
  bucket last. Rows keep that order, because sums over rows add in it (a rollup's merge, the
  scrape's totals, a query's reduction): `eager_order` gives it for the held part and the maps
  together, and `metric_entries` gives a query the order the metric's index would have had.
- A write into a held snapshot (`unhold`) first moves the series-buckets it adds to out of
  the interval into the maps, with their origins in `Snapshot.moved`, so its points land after
  what the core held, as they would have in the accumulators.
- `materialize` turns all of it into accumulators, the maps rebuilt in the eager path's order
  (the flusher does it before setting series aside one by one).
Runs on the event loop, but `held_rows`/`snapshot_rows`, on the flusher's worker (nothing adds
to or discards from a snapshot while the flusher finishes it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from statsd_gateway import sketch
from statsd_gateway.accumulator import MemoryEntry, SeriesAccumulator, finish_rows
from statsd_gateway.model import MetricType, RowBatch
from statsd_gateway.series_registry import SeriesRegistry
from statsd_gateway.snapshot import (
    Buckets,
    HeldInterval,
    MetricIndex,
    Snapshot,
    SnapshotEntry,
    collection_paused,
    merge_entries,
)

# The native core's type codes are MetricType's members in order.
_TYPES = tuple(MetricType)
# Above every origin: what a write added after the swap sorts after what the core held.
_AFTER = 2**62


def unhold(snap: Snapshot, pairs: list[tuple[float, int]], registry: SeriesRegistry) -> None:
    """Before a write adds to these (bucket, series id) pairs: what `held` has of them moves
    into the maps (see the module's contract)."""
    if snap.held is None or not pairs:
        return
    popped, origins = snap.held.pop(pairs)
    if popped:
        with collection_paused():
            merge_entries(snap.buckets, snap.index, popped, registry)
        snap.moved.update(zip([(e[0], e[1]) for e in popped], origins, strict=True))


def materialize(snap: Snapshot, registry: SeriesRegistry) -> None:
    """All of `held` into the maps, rebuilt in the eager path's order."""
    if snap.held is None:
        return
    entries, origins = snap.held.entries()
    old, old_index, moved = snap.buckets, snap.index, snap.moved
    key_of, types = registry.key_of, registry.types
    buckets: Buckets = {}
    index: MetricIndex = {}
    with collection_paused():
        native: list[tuple[int, SnapshotEntry, SeriesAccumulator]] = []
        for entry, origin in zip(entries, origins, strict=True):
            tenant, name, _ = key_of(entry[1])
            acc = SeriesAccumulator.from_native(entry, types[(tenant, name)])
            native.append((origin, (entry[0], entry[1]), acc))
        native += [(origin, (b, sid), old[b][sid]) for (b, sid), origin in moved.items()]
        native.sort(key=lambda item: item[0])
        for _, (b, sid), acc in native:
            buckets.setdefault(b, {})[sid] = acc
            tenant, name, _ = key_of(sid)
            index.setdefault((tenant, name), []).append((b, sid))
        for b, m in old.items():  # what writes added, after
            for sid, acc in m.items():
                if (b, sid) not in moved:
                    buckets.setdefault(b, {})[sid] = acc
        for metric, listed in old_index.items():
            index.setdefault(metric, []).extend(e for e in listed if e not in moved)
    snap.buckets, snap.index, snap.held, snap.moved = buckets, index, None, {}


def snapshot_rows(snap: Snapshot, mapped: RowBatch, registry: SeriesRegistry) -> RowBatch:
    """The rows of a snapshot with a held interval: `mapped` (finish_rows of its maps, in
    their order) and the held part's, in the eager path's order."""
    assert snap.held is not None
    held, origin = held_rows(snap.held, registry)
    if not len(mapped):
        order = eager_order(held.ts, origin)
        # A back-fill's table is in that order already (each batch one time after another).
        in_order = bool((order[1:] > order[:-1]).all())
        return held if in_order else held.take(order)
    assert mapped.series is not None and held.series is not None
    moved = snap.moved
    mapped_origin = np.fromiter(
        (
            moved.get((b, sid), _AFTER + i)
            for i, (b, sid) in enumerate(
                zip(mapped.ts.tolist(), mapped.series.tolist(), strict=True)
            )
        ),
        dtype=np.int64,
        count=len(mapped),
    )
    rows = RowBatch.concat([held, mapped])
    return rows.take(eager_order(rows.ts, np.concatenate([origin, mapped_origin])))


def eager_order(ts: npt.NDArray[np.float64], origin: npt.NDArray[np.int64]) -> npt.NDArray[Any]:
    """Indices putting rows in the eager path's order: buckets by the first row of each (the
    least origin), then within each bucket by origin. A row a write added after the swap has
    an origin of _AFTER plus its place among those."""
    buckets, which = np.unique(ts, return_inverse=True)
    first = np.full(len(buckets), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, which, origin)
    return np.lexsort((origin, first[which]))


def held_rows(
    held: HeldInterval, registry: SeriesRegistry
) -> tuple[RowBatch, npt.NDArray[np.int64]]:
    """(the rows of a held interval, finished in one pass with its sketches binned by the
    core, as finish_rows gives them for the same series-buckets; each row's origin). A value
    the core cannot bin: the reference's finish_rows of the same entries raises the error that
    says which."""
    key_of = registry.key_of
    cols = held.columns()
    if cols is None:
        entries, origins = held.copy(list(held.sids()))
        keys_of = [key_of(e[1]) for e in entries]
        accs = [
            SeriesAccumulator.from_native(e, registry.types[(k[0], k[1])])
            for e, k in zip(entries, keys_of, strict=True)
        ]
        rows = finish_rows([e[0] for e in entries], [e[1] for e in entries], accs, keys_of)
        with_rows = [o for o, e in zip(origins, entries, strict=True) if e[2]]  # finish_rows'
        return rows, np.array(with_rows, dtype=np.int64)
    ts, sid, count, total, mn, mx, last, last_ts, types, has_values = cols[:10]
    keys, counts, bounds, zero, origins, sets = cols[10:]
    n = len(sid) // 8 if len(sid) >= 8 else 0

    def f64(b: bytes) -> npt.NDArray[np.float64]:
        return np.frombuffer(b, np.float64, n).copy()  # a RowBatch's columns are writable

    ids = np.frombuffer(sid, np.int64, n).copy()
    bounds_a = np.frombuffer(bounds, np.int64, 2 * n + 1)
    binned = int(bounds_a[-1])
    hll: list[bytes | None] = [None] * n
    for row, members in sets:
        hll[row] = sketch.hll_from_members(set(members))
    rows = RowBatch(
        ts=f64(ts), keys=list(map(key_of, ids.tolist())),
        types=list(map(_TYPES.__getitem__, np.frombuffer(types, np.uint8, n).tolist())),
        count=f64(count), sum=f64(total), min=f64(mn), max=f64(mx), last=f64(last),
        last_ts=f64(last_ts),
        sketches=sketch.flat_from_arrays(
            np.frombuffer(keys, np.int64, binned), np.frombuffer(counts, np.float64, binned),
            bounds_a, np.frombuffer(zero, np.float64, n),
        ),
        has_sketch=np.frombuffer(has_values, np.uint8, n).astype(np.bool_),
        hll=hll, series=ids,
    )  # fmt: skip
    origin = np.frombuffer(origins, np.int64, n)
    if not rows.count.all():  # no observation (a set's count counts its members): no row
        kept = np.flatnonzero(rows.count)
        rows, origin = rows.take(kept), origin[kept]
    return rows, origin


def metric_entries(
    snap: Snapshot, tenant: str, name: str, sids: list[int], mtype: MetricType | None,
    registry: SeriesRegistry,
) -> list[MemoryEntry]:  # fmt: skip
    """What a held snapshot has of one metric (`sids`: its series), copies, in the order its
    index would have listed them on the eager path: what the core held by origin, then what
    writes added."""
    key_of = registry.key_of
    listed = snap.index.get((tenant, name), ())
    native: list[tuple[int, MemoryEntry]] = []
    if snap.held is not None and sids and mtype is not None:
        entries, origins = snap.held.copy(sids)
        for entry, origin in zip(entries, origins, strict=True):
            acc = SeriesAccumulator.from_native(entry, mtype)
            native.append((origin, (snap.seq, entry[0], entry[1], key_of(entry[1]), acc)))
    added: list[MemoryEntry] = []
    for b, sid in listed:
        kept = snap.buckets.get(b, {}).get(sid)
        if kept is None:  # set aside by the flusher
            continue
        item = (snap.seq, b, sid, key_of(sid), kept.copy())
        if (b, sid) in snap.moved:
            native.append((snap.moved[(b, sid)], item))
        else:
            added.append(item)
    native.sort(key=lambda pair: pair[0])
    return [item for _, item in native] + added
