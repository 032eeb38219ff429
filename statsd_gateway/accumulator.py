"""What one series holds over one bucket while it is in memory, and how those accumulators become
the RowBatch that leaves the aggregator.

Contract:
- `SeriesAccumulator` is mutated only by the aggregator, on the event loop. Whatever leaves
  memory is a copy of it (`copy()`, on the loop) or a snapshot that nothing adds to any more.
- `finish_rows()` turns accumulators into one RowBatch (one row each, sketch values binned in
  one numpy pass, or by the native core where any is in one of its arrays: the same bins). It
  reads only what it is given: it runs off the loop (the flush worker, a query's thread).
- `MemoryRows` is what a query gets of the interval still in memory: copies taken on the loop,
  finished off it by its one method, `rows()`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import operator
from array import array
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from statsd_gateway import sketch
from statsd_gateway.model import MetricType, RowBatch, SeriesKey, Tags


class SeriesAccumulator:
    """The running aggregate of one series over one bucket: count and sum (sample-rate
    weighted), the raw min and max, the latest gauge value with its time, the values (and their
    weights, once a sample rate < 1 arrives) of a sketch-backed type, and a set's members.
    `type` is its series' type, fixed when it is created."""

    __slots__ = (
        "count",
        "last",
        "last_ts",
        "max",
        "members",
        "min",
        "sum",
        "type",
        "values",
        "weights",
    )

    def __init__(self, mtype: MetricType) -> None:
        self.type = mtype
        self.count = 0.0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.last: float | None = None
        self.last_ts = -math.inf
        self.values: list[float] | None = [] if mtype.has_sketch else None
        self.weights: list[float] | None = None  # only once a sample rate < 1 arrives
        self.members: set[str] | None = set() if mtype is MetricType.SET else None

    def copy(self) -> SeriesAccumulator:
        c = SeriesAccumulator.__new__(SeriesAccumulator)
        c.type, c.count, c.sum, c.min, c.max = self.type, self.count, self.sum, self.min, self.max
        c.last, c.last_ts = self.last, self.last_ts
        # A slice copies a list as a list and an array('d') (the native core's) as an array.
        c.values = None if self.values is None else self.values[:]
        c.weights = None if self.weights is None else self.weights[:]
        c.members = None if self.members is None else set(self.members)
        return c

    @classmethod
    def from_native(cls, entry: NativeEntry, mtype: MetricType) -> SeriesAccumulator:
        """The accumulator of one series-bucket the native core held: its values stay in an
        array('d') (8 bytes each), which appends as a list does."""
        c = cls.__new__(cls)
        c.type = mtype
        _, _, c.count, c.sum, c.min, c.max, c.last, c.last_ts, values, weights, members, _ = entry
        c.values = values  # type: ignore[assignment]
        c.weights = weights  # type: ignore[assignment]
        c.members = None if members is None else set(members)
        return c

    def merge(self, other: SeriesAccumulator, *, last_arrived_first: bool = False) -> None:
        """Adds what `other` saw of the same series-bucket after what this one saw (the native
        core's part of an interval, after the Python path's). Its gauge value replaces this
        one's if it is as recent, unless `last_arrived_first` (two native cores' values of the
        same time: the one that arrived last stays)."""
        self.count += other.count
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        if other.last is not None and (
            other.last_ts > self.last_ts
            or (other.last_ts == self.last_ts and not last_arrived_first)
        ):
            self.last, self.last_ts = other.last, other.last_ts
        if self.values is not None and other.values is not None:
            if other.weights is not None and self.weights is None:
                self.weights = _ones_like(self.values)
            if self.weights is not None:
                self.weights.extend(other.weights or _ones_like(other.values))
            self.values.extend(other.values)
        if self.members is not None and other.members is not None:
            self.members |= other.members


def _ones_like(values: Sequence[float]) -> list[float]:
    """Weights of 1 for `values`, in the same kind of container: the native core's arrays stay
    arrays when two cores' entries merge, so that the flush still bins them in C."""
    if type(values) is array:
        return array("d", [1.0]) * len(values)  # type: ignore[return-value]
    return [1.0] * len(values)


# What the native core hands over of one series-bucket (sg_module.c's entry_of): bucket, series
# id, count, sum, min, max, last (None: no gauge value), last_ts, values, weights, set members,
# and when `last` arrived (an order shared by every core: sg_core.h's sg_next_last_seq).
NativeEntry = tuple[
    float, int, float, float, float, float, float | None, float,
    "array[float] | None", "array[float] | None", list[str] | None, int,
]  # fmt: skip

_NUMBERS = operator.attrgetter("count", "sum", "min", "max", "last", "last_ts")
_TYPE = operator.attrgetter("type")
_WEIGHTS = operator.attrgetter("weights")

# The native core's binning of its own value arrays (native.py sets it where the core is
# built): bin_flat's bins, bit for bit, computed in C without the GIL (sg_bins.h). Values in
# Python lists (the pure-Python path) are binned by bin_flat, the reference.
NativeBinning = Callable[
    [Sequence["array[float]"], Sequence["array[float] | None"] | None],
    tuple[bytes, bytes, bytes, bytes] | None,
]
native_binning: NativeBinning | None = None


def empty_rows() -> RowBatch:
    """A batch of no rows, as the aggregator hands them out (with its `series` column)."""
    return dataclasses.replace(RowBatch.from_rows([]), series=np.empty(0, dtype=np.int64))


def finish_rows(
    ts: Sequence[float],
    ids: Sequence[int],
    accs: Sequence[SeriesAccumulator],
    keys: Sequence[SeriesKey],
) -> RowBatch:
    """Accumulators → a RowBatch: row i is accs[i], of series ids[i] (key keys[i]) in the
    bucket starting at ts[i]. An accumulator that saw no observation gives no row.

    Hot per flush (one entry per series): each column is built by one C-level pass (map,
    attrgetter, chain) rather than per-entry Python code."""
    if not accs:
        return empty_rows()
    types = list(map(_TYPE, accs))
    # count, sum, min, max, last, last_ts; None (no last) becomes NaN.
    cols = np.array(list(map(_NUMBERS, accs)), dtype=np.float64).T.copy()
    count = cols[0]
    if not count.all():  # a set's count counts its members: none is "no observation" too
        at = np.flatnonzero(count).tolist()
        return finish_rows(
            [ts[i] for i in at], [ids[i] for i in at], [accs[i] for i in at], [keys[i] for i in at]
        )
    count, total, mn, mx, last, last_ts = cols
    # No value seen (a set's min/max): NaN, as for a missing last.
    mn[np.isinf(mn)] = np.nan
    mx[np.isinf(mx)] = np.nan
    last_ts[np.isnan(last)] = np.nan
    hll: list[bytes | None] = [None] * len(accs)
    if MetricType.SET in types:
        for i, mtype in enumerate(types):
            if mtype is MetricType.SET:
                hll[i] = sketch.hll_from_members(accs[i].members or ())
    value_lists = [acc.values or () for acc in accs]
    n_values = np.fromiter(map(len, value_lists), dtype=np.int64, count=len(accs))
    bins = _native_bins(accs)
    if bins is None:
        bins = _python_bins(accs, value_lists, n_values)
    return RowBatch(
        ts=np.array(ts, dtype=np.float64), keys=list(keys), types=types, count=count, sum=total,
        min=mn, max=mx, last=last, last_ts=last_ts, sketches=bins, has_sketch=n_values > 0,
        hll=hll, series=np.array(ids, dtype=np.int64),
    )  # fmt: skip


def _python_bins(
    accs: Sequence[SeriesAccumulator],
    value_lists: Sequence[Sequence[float]],
    n_values: np.ndarray,
) -> sketch.FlatBins:
    """bin_flat of every accumulator's values (and weights), the reference."""
    offsets = np.zeros(n_values.size + 1, dtype=np.int64)
    np.cumsum(n_values, out=offsets[1:])
    values = _flat_values(value_lists, int(offsets[-1]))
    weights = None
    if any(map(_WEIGHTS, accs)):  # a weights list is never empty once there is one
        weights = np.fromiter(
            itertools.chain.from_iterable(
                acc.weights if acc.weights is not None else [1.0] * len(vals)
                for acc, vals in zip(accs, value_lists, strict=True)
            ),
            dtype=np.float64,
            count=int(offsets[-1]),
        )
    return sketch.bin_flat(values, weights, offsets)


def _native_bins(accs: Sequence[SeriesAccumulator]) -> sketch.FlatBins | None:
    """The bins of every accumulator's values by the native core, where it is built; None
    otherwise, or if a value is not finite (bin_flat then raises the error that says so). The
    native core's entries hold array('d'); among them, the Python path's lists (a body applied
    after a swap took the reference's path) are copied into one, so that a few of them do not
    send the whole flush through numpy. Lists alone (the pure-Python path) stay bin_flat's:
    the reference."""
    binning = native_binning
    # The slots are typed as lists; the native core's are arrays.
    held: list[Any] = [acc.values for acc in accs]
    if binning is None or not any(type(v) is array for v in held):
        return None
    values: list[array[float]] = []
    weights: list[array[float] | None] = []
    weighted = False
    for acc, v in zip(accs, held, strict=True):
        w: Any = acc.weights
        try:
            if not v:
                v = _NO_VALUES
            elif type(v) is not array:
                v = array("d", v)
            if w is not None and type(w) is not array:
                w = array("d", w)
        except (TypeError, OverflowError):  # bin_flat says what is wrong
            return None
        weighted = weighted or w is not None
        values.append(v)
        weights.append(w)
    out = binning(values, weights if weighted else None)
    if out is None:
        return None
    keys, counts, bounds, zero = out
    return sketch.flat_from_arrays(
        np.frombuffer(keys, dtype=np.int64), np.frombuffer(counts, dtype=np.float64),
        np.frombuffer(bounds, dtype=np.int64), np.frombuffer(zero, dtype=np.float64),
    )  # fmt: skip


_NO_VALUES: array[float] = array("d")


def _flat_values(value_lists: Sequence[Sequence[float]], n: int) -> np.ndarray:
    """Every accumulator's values in one float64 array. The native core's arrays are joined as
    memory (one copy); Python lists are read through one iterator."""
    if not any(type(v) is array for v in value_lists):
        return np.fromiter(itertools.chain.from_iterable(value_lists), dtype=np.float64, count=n)
    if all(type(v) is array or not v for v in value_lists):
        return np.frombuffer(b"".join(v for v in value_lists if v), dtype=np.float64)  # type: ignore[misc]
    parts = [np.asarray(v, np.float64) for v in value_lists if len(v)]
    return np.concatenate(parts)


# (seq of its snapshot, bucket, series id, series key, a copy of its accumulator)
MemoryEntry = tuple[int, float, int, SeriesKey, SeriesAccumulator]


class MemoryRows:
    """One metric's series-buckets in memory (the live interval and the snapshots not yet
    released), copied on the event loop when a query starts, before it reads the store.

    Each copy carries the seq of its snapshot (the live interval's: the seq it will get when
    swapped), so that a snapshot flushed between the copy and the store read is left out by
    its seq, neither counted twice nor missed. `rows()` does the rest off the loop; `len()` is
    how many series-buckets were copied (none: no thread is worth starting)."""

    __slots__ = ("_entries",)

    def __init__(self, entries: list[MemoryEntry]) -> None:
        self._entries = entries

    def __len__(self) -> int:
        return len(self._entries)

    def rows(
        self, after_seq: int, start: float, until: float, keep: Callable[[Tags], bool]
    ) -> RowBatch:
        """The rows of the snapshots with a seq above `after_seq` (those the store does not
        hold yet), of buckets with start <= ts < until, of the series whose tags pass `keep`;
        in snapshot order, oldest first."""
        picked = [
            e for e in self._entries if e[0] > after_seq and start <= e[1] < until and keep(e[3][2])
        ]
        return finish_rows(
            [e[1] for e in picked], [e[2] for e in picked], [e[4] for e in picked],
            [e[3] for e in picked],
        )  # fmt: skip
