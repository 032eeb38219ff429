"""Per-interval state per series, and the swap that hands a finished interval to the flusher.

Contract:
- `add_samples()` runs on the event loop and never blocks or raises for bad input: it returns the
  rejects by reason. Buckets are aligned to wall-clock multiples of the flush interval; a sample
  with its own timestamp lands in its own bucket.
- HTTP writes are logged before they are applied: `admit()` decides which samples are accepted
  (and reserves their series and types) without adding any, `add_admitted()` adds exactly those
  later, into the snapshot whose seq the log entry names.
- `swap()` moves everything in memory into a numbered Snapshot (the only point where the live maps
  change hands); `finish_snapshot()` turns a snapshot into a RowBatch off the loop; `release()`
  forgets a snapshot once the store holds it. Until then queries still see it (`collect()`).
- The current value of each gauge (what `+N`/`-N` change) moves with the order samples arrive
  in, whatever the wall clock does; a client-timestamped value older than it does not move it.
  Each snapshot carries the current values its interval changed (`Snapshot.gauges`), so the
  store keeps them with the flush that holds them and `restore_gauges()` brings them back at
  start.
- `memory_bytes()` estimates what the live interval and the pending snapshots hold, and what
  writing them will take (the flush's transient arrays): the figure `storage.backfill_memory`
  bounds (backpressure.py).
- The clock is injected: tests own time.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from statsd_gateway import sketch
from statsd_gateway.model import FUTURE_MAX_SECONDS, MetricType, RowBatch, SeriesKey, Tags
from statsd_gateway.protocol import Sample

# Reject reasons raised here (the parser's are in protocol.py).
TYPE_CONFLICT = "type_conflict"
CARDINALITY_LIMIT = "cardinality_limit"
TIMESTAMP_TOO_OLD = "timestamp_too_old"
TIMESTAMP_IN_FUTURE = "timestamp_in_future"
AGGREGATOR_REJECT_REASONS = (
    TYPE_CONFLICT,
    CARDINALITY_LIMIT,
    TIMESTAMP_TOO_OLD,
    TIMESTAMP_IN_FUTURE,
)
# Memory per series-bucket (its Acc, key, map slot: ~380 bytes held, measured with tracemalloc;
# finishing it into a row at flush takes ~460 more, transiently), per value buffered (~32 held,
# ~57 to bin) and per bucket map. Rounded up: the estimate is a bound, not an average.
ENTRY_BYTES = 1024
VALUE_BYTES = 96
BUCKET_BYTES = 512


class Acc:
    """Running aggregate of one series in one bucket."""

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

    def copy(self) -> Acc:
        c = Acc.__new__(Acc)
        c.type, c.count, c.sum, c.min, c.max = self.type, self.count, self.sum, self.min, self.max
        c.last, c.last_ts = self.last, self.last_ts
        c.values = None if self.values is None else list(self.values)
        c.weights = None if self.weights is None else list(self.weights)
        c.members = None if self.members is None else set(self.members)
        return c


Buckets = dict[float, dict[SeriesKey, Acc]]
# (tenant, name) -> the (bucket, series) entries of that metric in one interval: a query reads
# its metric's entries without scanning every series in memory.
MetricIndex = dict[tuple[str, str], list[tuple[float, SeriesKey]]]


@dataclass(slots=True)
class Snapshot:
    seq: int
    buckets: Buckets = field(default_factory=dict)
    # Start of the live interval when this snapshot was swapped out: every bucket that ends at
    # or before it has all its (non-late) points in this snapshot or an earlier one.
    boundary: float = 0.0
    index: MetricIndex = field(default_factory=dict)
    # Current gauge values (value, time) as they stood at the swap, of the gauges changed in it.
    gauges: dict[SeriesKey, tuple[float, float]] = field(default_factory=dict)
    memory_bytes: int = 0  # the aggregator's estimate when it was swapped out

    def series_count(self) -> int:
        return sum(len(m) for m in self.buckets.values())

    def remove(self, entries: Iterable[tuple[float, SeriesKey]]) -> None:
        """Forgets these (bucket, series) entries (the flusher set them aside as unwritable)."""
        for ts, key in entries:
            m = self.buckets.get(ts)
            if m is not None:
                m.pop(key, None)
                if not m:
                    del self.buckets[ts]


class SeriesRegistry:
    """Types per (tenant, name) and known series per tenant, seeded from the store at start."""

    def __init__(self) -> None:
        self.types: dict[tuple[str, str], MetricType] = {}
        self.series: dict[str, set[tuple[str, Tags]]] = {}

    def add(self, tenant: str, name: str, tags: Tags, mtype: MetricType) -> None:
        self.types.setdefault((tenant, name), mtype)
        self.series.setdefault(tenant, set()).add((name, tags))

    def forget(self, keys: Iterable[SeriesKey]) -> None:
        """Series the store deleted (no data within any retention)."""
        names: set[tuple[str, str]] = set()
        for tenant, name, tags in keys:
            self.series.get(tenant, set()).discard((name, tags))
            names.add((tenant, name))
        for tenant, name in names:
            if not any(n == name for n, _ in self.series.get(tenant, ())):
                self.types.pop((tenant, name), None)


class IntervalAggregator:
    def __init__(
        self,
        *,
        interval: float,
        clock: Callable[[], float],
        registry: SeriesRegistry,
        max_series_per_tenant: int,
        max_backdate: float,
        first_seq: int = 1,
    ) -> None:
        self.interval = interval
        self.clock = clock
        self.registry = registry
        self.max_series_per_tenant = max_series_per_tenant
        self.max_backdate = max_backdate
        self._live: Buckets = {}
        self._live_index: MetricIndex = {}
        self._pending: list[Snapshot] = []
        self._next_seq = first_seq
        self._live_bytes = 0
        self._pending_bytes = 0
        # The current value of each gauge and its time: what +N/-N changes apply to.
        self._gauges: dict[SeriesKey, tuple[float, float]] = {}
        self._gauges_changed: dict[SeriesKey, tuple[float, float]] = {}

    def bucket_of(self, t: float) -> float:
        i = self.interval
        b = math.floor(t / i) * i
        return float(round(b, 6))

    def add_samples(
        self,
        tenant: str,
        samples: Iterable[Sample],
        *,
        into: Snapshot | None = None,
        now: float | None = None,
    ) -> list[tuple[int, str]]:
        """Adds samples (to the live interval, or to `into`) as received at `now` (default: the
        clock); returns (index, reason) of each rejected one."""
        if now is None:
            now = self.clock()
        bucket_now = self.bucket_of(now)
        rejects: list[tuple[int, str]] = []
        live, index = (self._live, self._live_index) if into is None else (into.buckets, into.index)
        gauges = self._gauges
        changed = self._gauges_changed if into is None else into.gauges
        current = live.get(bucket_now)
        new_buckets = new_entries = 0
        if current is None:
            current = live[bucket_now] = {}
            new_buckets = 1
        i = -1
        # Hot loop: inlined on purpose; UDP lines pass here one by one.
        for i, (name, tags, mtype, value, rate, ts, delta) in enumerate(samples):
            if ts is None:
                t = now
                b = bucket_now
                m = current
            else:
                if ts > now + FUTURE_MAX_SECONDS:
                    rejects.append((i, TIMESTAMP_IN_FUTURE))
                    continue
                if ts < now - self.max_backdate:
                    rejects.append((i, TIMESTAMP_TOO_OLD))
                    continue
                t = ts
                b = self.bucket_of(ts)
                m = live.get(b)  # type: ignore[assignment]
                if m is None:
                    m = live[b] = {}
                    new_buckets += 1
            key = (tenant, name, tags)
            acc = m.get(key)
            if acc is None:
                reason = self._admit(tenant, name, tags, mtype)
                if reason is not None:
                    rejects.append((i, reason))
                    continue
                acc = m[key] = Acc(mtype)
                entries = index.get((tenant, name))
                if entries is None:
                    entries = index[(tenant, name)] = []
                entries.append((b, key))
                new_entries += 1
            elif acc.type is not mtype:
                rejects.append((i, TYPE_CONFLICT))
                continue
            if mtype is MetricType.SET:
                acc.members.add(str(value))  # type: ignore[union-attr]
                acc.count += 1.0
                continue
            v = float(value)
            if mtype is MetricType.GAUGE:
                cur_v, cur_t = gauges.get(key, (0.0, -math.inf))
                if delta:
                    v = cur_v + v
                # A late absolute value does not move the current one; one received now does,
                # even when the wall clock has stepped back behind the current one's time.
                if delta or ts is None or t >= cur_t:
                    gauges[key] = changed[key] = (v, t if ts is None else max(t, cur_t))
                if t >= acc.last_ts:
                    acc.last, acc.last_ts = v, t
                rate = 1.0
            if rate == 1.0:
                acc.count += 1.0
                acc.sum += v
                if acc.values is not None:
                    acc.values.append(v)
                    if acc.weights is not None:
                        acc.weights.append(1.0)
            else:
                w = 1.0 / rate
                acc.count += w
                acc.sum += v * w
                if acc.values is not None:
                    if acc.weights is None:
                        acc.weights = [1.0] * len(acc.values)
                    acc.values.append(v)
                    acc.weights.append(w)
            if v < acc.min:
                acc.min = v
            if v > acc.max:
                acc.max = v
        self._live_bytes += (
            new_buckets * BUCKET_BYTES
            + new_entries * ENTRY_BYTES
            + (i + 1 - len(rejects)) * VALUE_BYTES
        )
        return rejects

    def admit(
        self, tenant: str, samples: Iterable[Sample], now: float
    ) -> tuple[list[Sample], list[tuple[int, str]], list[SeriesKey]]:
        """The checks of add_samples() for samples received at `now`, without adding anything:
        returns the accepted samples (for add_admitted with the same `now`, so that they land in
        the same buckets however late they are added), (index, reason) of the rejected ones,
        and the series this call registered. The series and types of the accepted ones are
        reserved now, so that a concurrent request is judged against them."""
        accepted: list[Sample] = []
        rejects: list[tuple[int, str]] = []
        new: list[SeriesKey] = []
        for i, sample in enumerate(samples):
            name, tags, mtype, _, _, ts, _ = sample
            if ts is not None and ts > now + FUTURE_MAX_SECONDS:
                rejects.append((i, TIMESTAMP_IN_FUTURE))
                continue
            if ts is not None and ts < now - self.max_backdate:
                rejects.append((i, TIMESTAMP_TOO_OLD))
                continue
            known = self.registry.series.get(tenant)
            fresh = known is None or (name, tags) not in known
            reason = self._admit(tenant, name, tags, mtype)
            if reason is not None:
                rejects.append((i, reason))
                continue
            if fresh:
                new.append((tenant, name, tags))
            accepted.append(sample)
        return accepted, rejects, new

    def add_admitted(
        self, tenant: str, samples: list[Sample], seq: int, now: float
    ) -> list[tuple[int, str]]:
        """Adds samples admit() accepted at `now` to the snapshot `seq` (the live interval, or a
        pending snapshot swapped out since; the flusher writes none while a write holds its
        seq), judged again as at `now` (the time spent logging is no age). A snapshot no longer
        pending (dropped) gives way to the live interval: a later seq, released only once
        written."""
        into = None
        if seq != self._next_seq:
            into = next((s for s in self._pending if s.seq == seq), None)
        return self.add_samples(tenant, samples, into=into, now=now)

    def _admit(self, tenant: str, name: str, tags: Tags, mtype: MetricType) -> str | None:
        reg = self.registry
        known = reg.types.get((tenant, name))
        if known is not None and known is not mtype:
            return TYPE_CONFLICT
        series = reg.series.get(tenant)
        if series is None or (name, tags) not in series:
            if series is not None and len(series) >= self.max_series_per_tenant:
                return CARDINALITY_LIMIT
            reg.add(tenant, name, tags, mtype)
        return None

    def keys_in_memory(self) -> set[SeriesKey]:
        """Every series with a point in the live interval or a snapshot not yet written."""
        out: set[SeriesKey] = set()
        for buckets in [self._live, *(s.buckets for s in self._pending)]:
            for m in buckets.values():
                out.update(m)
        return out

    def discard(self, keys: set[SeriesKey]) -> int:
        """Removes the series from the live interval, every pending snapshot and the gauges'
        current values (an admin delete); returns how many series-buckets were dropped."""
        dropped = 0
        for index in [self._live_index, *(s.index for s in self._pending)]:
            for metric in {(k[0], k[1]) for k in keys} & index.keys():
                # The series may come back into the same bucket: one index entry each.
                index[metric] = [e for e in index[metric] if e[1] not in keys]
        for buckets in [self._live, *(s.buckets for s in self._pending)]:
            for ts in list(buckets):
                m = buckets[ts]
                for key in keys & m.keys():
                    del m[key]
                    dropped += 1
                if not m:
                    del buckets[ts]
        for snap in self._pending:
            for key in keys & snap.gauges.keys():
                del snap.gauges[key]
        self.forget_gauges(keys)
        return dropped

    def forget_gauges(self, keys: Iterable[SeriesKey]) -> None:
        for key in keys:
            self._gauges.pop(key, None)
            self._gauges_changed.pop(key, None)

    def restore_gauges(self, current: dict[SeriesKey, tuple[float, float]]) -> None:
        """At start, before any sample: the current gauge values the store holds."""
        self._gauges.update(current)

    def swap(self) -> Snapshot:
        """Moves the live interval into a new pending snapshot (on the event loop, O(1))."""
        snap = Snapshot(
            self._next_seq,
            self._live,
            self.bucket_of(self.clock()),
            index=self._live_index,
            gauges=self._gauges_changed,
            memory_bytes=self._live_bytes,
        )
        self._next_seq += 1
        self._live = {}
        self._live_index = {}
        self._gauges_changed = {}
        self._pending.append(snap)
        self._pending_bytes += self._live_bytes
        self._live_bytes = 0
        return snap

    def memory_bytes(self) -> int:
        """The estimate of what the live interval and the pending snapshots hold."""
        return self._live_bytes + self._pending_bytes

    @property
    def next_seq(self) -> int:
        """The seq the live interval will carry when swapped."""
        return self._next_seq

    @property
    def pending(self) -> list[Snapshot]:
        return list(self._pending)

    def release(self, snap: Snapshot) -> None:
        self._pending.remove(snap)
        self._pending_bytes -= snap.memory_bytes

    def drop_oldest_pending(self) -> Snapshot:
        snap = self._pending.pop(0)
        self._pending_bytes -= snap.memory_bytes
        return snap

    def collect(self, tenant: str, name: str) -> list[tuple[int, float, SeriesKey, Acc]]:
        """Copies of the in-memory accumulators of one metric, each with the seq of the snapshot
        it belongs to (the live interval carries the next seq). Reads that metric's entries
        through each interval's index: the cost grows with the metric's series in memory, not
        with everything in memory (this runs on the event loop)."""
        out: list[tuple[int, float, SeriesKey, Acc]] = []
        sources = [(s.seq, s.buckets, s.index) for s in self._pending]
        sources.append((self._next_seq, self._live, self._live_index))
        metric = (tenant, name)
        for seq, buckets, index in sources:
            for ts, key in index.get(metric, ()):
                acc = buckets.get(ts, {}).get(key)
                if acc is not None:  # None: set aside by the flusher
                    out.append((seq, ts, key, acc.copy()))
        return out


_NUMBERS = operator.attrgetter("count", "sum", "min", "max", "last", "last_ts")


def finish(entries: list[tuple[float, SeriesKey, Acc]]) -> RowBatch:
    """Accumulators → a RowBatch, binning every sketch value of the batch in one numpy pass.

    Hot per flush (one entry per series): each column is built by one C-level pass (map,
    attrgetter, chain) rather than per-entry Python code."""
    live = [e for e in entries if e[2].count != 0 or e[2].members]
    if not live:
        return RowBatch.from_rows([])
    accs = [e[2] for e in live]
    types = [acc.type for acc in accs]
    # count, sum, min, max, last, last_ts; None (no last) becomes NaN.
    cols = np.array(list(map(_NUMBERS, accs)), dtype=np.float64).T.copy()
    count, total, mn, mx, last, last_ts = cols
    # No value seen (a set's min/max): NaN, as for a missing last.
    mn[np.isinf(mn)] = np.nan
    mx[np.isinf(mx)] = np.nan
    last_ts[np.isnan(last)] = np.nan
    hll: list[bytes | None] = [None] * len(live)
    for i, mtype in enumerate(types):
        if mtype is MetricType.SET:
            hll[i] = sketch.hll_from_members(accs[i].members or ())
    value_lists = [acc.values or () for acc in accs]
    n_values = np.fromiter(map(len, value_lists), dtype=np.int64, count=len(live))
    offsets = np.zeros(n_values.size + 1, dtype=np.int64)
    np.cumsum(n_values, out=offsets[1:])
    values = np.fromiter(
        itertools.chain.from_iterable(value_lists), dtype=np.float64, count=int(offsets[-1])
    )
    weights = None
    if any(acc.weights is not None for acc in accs):
        weights = np.fromiter(
            itertools.chain.from_iterable(
                acc.weights if acc.weights is not None else [1.0] * len(vals)
                for acc, vals in zip(accs, value_lists, strict=True)
            ),
            dtype=np.float64,
            count=int(offsets[-1]),
        )
    return RowBatch(
        ts=np.array([e[0] for e in live], dtype=np.float64), keys=[e[1] for e in live],
        types=types, count=count, sum=total, min=mn, max=mx, last=last, last_ts=last_ts,
        sketches=sketch.bin_flat(values, weights, offsets), has_sketch=n_values > 0, hll=hll,
    )  # fmt: skip


def finish_snapshot(snap: Snapshot) -> RowBatch:
    return finish([(ts, key, acc) for ts, m in snap.buckets.items() for key, acc in m.items()])
