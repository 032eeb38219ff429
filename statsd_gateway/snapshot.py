"""What the aggregator hands the flusher (a Snapshot of one swapped-out interval), the live
sources it merges at swap (the native core), and the memory estimates both are counted by.

Contract: a Snapshot is added to only by HTTP writes logged before its swap; the flusher reads
it off the loop. `merge_entries()` adds a live source's entries to an interval's maps as if
their points had been added after those already there (SeriesAccumulator.merge).
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from statsd_gateway.accumulator import NativeEntry, SeriesAccumulator
from statsd_gateway.model import MetricType, Sample, SeriesKey
from statsd_gateway.series_registry import SeriesRegistry

# Memory per series-bucket (its accumulator, map slot and index entry: ~450 bytes held for a
# counter, measured with tracemalloc, plus ~300 per series in the registry; finishing it into a
# row at flush takes ~460 more, transiently), per value buffered (~32 held, ~57 to bin) and per
# bucket map. Rounded up: the estimate is a bound, not an average.
ENTRY_BYTES = 1024
VALUE_BYTES = 96
BUCKET_BYTES = 512
# A value the native core buffers: 8 bytes in its table and in the array('d') it leaves in,
# ~56 more while the flush bins it.
NATIVE_VALUE_BYTES = 64


def native_bytes(entries: int, values: int) -> int:
    """The estimate for series-buckets the native core held, in its table or merged out of it."""
    return entries * ENTRY_BYTES + values * NATIVE_VALUE_BYTES


class LiveSink(Protocol):
    """Takes admitted samples into a live interval held outside the aggregator (native.py)."""

    def add(self, tenant: str, samples: list[Sample], sids: list[int], now: float) -> None:
        """samples[i] is of series sids[i], its checks passed, received at `now`."""
        ...


class HeldInterval(Protocol):
    """A live source's interval after the swap, still held outside Python (the native core's
    `Interval`): a snapshot keeps it so, and the flush finishes it into rows in one pass,
    without an accumulator per series-bucket."""

    def __len__(self) -> int: ...

    def memory(self) -> tuple[int, int]:
        """(series-buckets, values) held."""
        ...

    def sids(self) -> set[int]: ...

    # Each entry comes with its origin: its place in the interval as swapped out, the order
    # its accumulator would have been made in (held_interval.py keeps rows in that order).
    def copy(self, sids: list[int]) -> tuple[list[NativeEntry], list[int]]:
        """(copies of the entries of these series, their origins)."""
        ...

    def discard(self, sids: list[int]) -> int:
        """Drops these series; returns how many entries."""
        ...

    def pop(self, pairs: list[tuple[float, int]]) -> tuple[list[NativeEntry], list[int]]:
        """(the entries of these (bucket, series id) pairs that are held, their origins),
        removed."""
        ...

    def entries(self) -> tuple[list[NativeEntry], list[int]]:
        """(every entry, their origins); the interval is left empty."""
        ...

    def columns(self) -> tuple[Any, ...] | None:
        """The rows as column buffers with their sketches binned, and their origins
        (`Interval.columns` in sg_interval_module.c), or None if a value cannot be binned."""
        ...


class LiveSource(Protocol):
    """Series-buckets of the live interval held outside the aggregator's maps (native.py)."""

    def take(self) -> tuple[list[HeldInterval], list[tuple[int, float, float]]]:
        """Everything held, one interval per core (the source starts a new interval), and the
        (series id, value, time) of the gauges whose current value changed since the last
        take."""
        ...

    def copy(self, sids: list[int]) -> list[NativeEntry]:
        """Copies of what is held of these series."""
        ...

    def sids(self) -> set[int]: ...

    def discard(self, sids: Iterable[int]) -> int:
        """Drops what is held of these series (and their gauges); returns how many entries."""
        ...

    def memory(self) -> tuple[int, int]:
        """(series-buckets, values) held."""
        ...

    def held(self) -> AbstractContextManager[None]:
        """Nothing is added while inside (a check and the change it decides go together)."""
        ...


# bucket start -> series id -> its accumulator
Buckets = dict[float, dict[int, SeriesAccumulator]]
# (tenant, name) -> the (bucket, series id) entries of that metric in one interval: a query
# reads its metric's entries without scanning every series in memory.
MetricIndex = dict[tuple[str, str], list[tuple[float, int]]]
# (bucket, series id): one series-bucket of a snapshot (what the flusher sets aside).
SnapshotEntry = tuple[float, int]


@dataclass(slots=True)
class Snapshot:
    """One swapped-out interval, numbered by `seq`, waiting to be written. Nothing adds to it
    but HTTP writes logged before the swap (add_admitted); the flusher reads it off the loop."""

    seq: int
    buckets: Buckets = field(default_factory=dict)
    # Start of the live interval when this snapshot was swapped out: every bucket that ends at
    # or before it has all its (non-late) points in this snapshot or an earlier one.
    boundary: float = 0.0
    index: MetricIndex = field(default_factory=dict)
    # Current gauge values (value, time) as they stood at the swap, of the gauges changed in it.
    gauges: dict[SeriesKey, tuple[float, float]] = field(default_factory=dict)
    memory_bytes: int = 0  # the aggregator's estimate when it was swapped out
    # Series-buckets a live source held, kept outside Python until the flush finishes them; none
    # is also in `buckets` (a write into this snapshot moves the ones it adds to there first,
    # with their origins in `moved`: held_interval.py).
    held: HeldInterval | None = None
    moved: dict[SnapshotEntry, int] = field(default_factory=dict)

    def series_count(self) -> int:
        held = 0 if self.held is None else len(self.held)
        return held + sum(len(m) for m in self.buckets.values())

    def remove(self, entries: Iterable[SnapshotEntry]) -> None:
        """Forgets these (bucket, series id) entries (the flusher set them aside as
        unwritable)."""
        for ts, sid in entries:
            m = self.buckets.get(ts)
            if m is not None:
                m.pop(sid, None)
                if not m:
                    del self.buckets[ts]


def merge_entries(
    live: Buckets, index: MetricIndex, entries: list[NativeEntry], registry: SeriesRegistry
) -> int:
    """A live source's entries into an interval's maps; returns the memory estimate they add.

    Hot at every swap (a back-fill's interval holds a series-bucket per point): each series'
    type and index list are looked up once, not once per bucket. Call it inside
    collection_paused(), with the take() that made the entries."""
    key_of, types = registry.key_of, registry.types
    from_native = SeriesAccumulator.from_native
    values = buckets = 0
    # When the gauge value kept so far for a series-bucket arrived, where several cores had one.
    arrived: dict[tuple[float, int], int] = {}
    seen: dict[int, tuple[MetricType, list[SnapshotEntry]]] = {}
    for entry in entries:
        b, sid = entry[0], entry[1]
        known = seen.get(sid)
        if known is None:
            tenant, name, _ = key_of(sid)
            entries_of = index.get((tenant, name))
            if entries_of is None:
                entries_of = index[(tenant, name)] = []
            known = seen[sid] = (types[(tenant, name)], entries_of)
        acc = from_native(entry, known[0])
        if acc.values is not None:
            values += len(acc.values)
        m = live.get(b)
        if m is None:
            m = live[b] = {}
            buckets += 1
        have = m.get(sid)
        if have is not None:
            first = False
            if acc.last is not None:
                seq = entry[11]
                first = seq < arrived.get((b, sid), -1)
                if acc.last_ts > have.last_ts or (acc.last_ts == have.last_ts and not first):
                    arrived[(b, sid)] = seq
            have.merge(acc, last_arrived_first=first)
            continue
        if acc.last is not None:
            arrived[(b, sid)] = entry[11]
        m[sid] = acc
        known[1].append((b, sid))
    return buckets * BUCKET_BYTES + native_bytes(len(entries), values)


@contextmanager
def collection_paused() -> Iterator[None]:
    """The cycle collector off while a swap makes an accumulator per series-bucket: they form
    no cycles, and each collection would walk every one made so far (a third of a back-fill's
    swap, measured)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()
