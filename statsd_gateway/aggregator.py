"""Per-interval state per series, and the swap that hands a finished interval to the flusher.

Contract:
- `add_samples()` runs on the event loop and never blocks or raises for bad input: it returns the
  rejects by reason. Buckets are aligned to wall-clock multiples of the flush interval; a sample
  with its own timestamp lands in its own bucket. A series is admitted (given its id, or
  refused) by the series registry (series_registry.py); the interval's maps key by that id.
- HTTP writes are logged before they are applied: `admit()` decides which samples are accepted
  (and reserves their series and types) without adding any, `add_admitted()` adds exactly those
  later, into the snapshot whose seq the log entry names.
- `swap()` moves everything in memory into a numbered Snapshot (the only point where the live maps
  change hands); `release()` forgets a snapshot once the store holds it.
- Only RowBatches leave: `snapshot_rows()` finishes a snapshot off the loop (on the flusher's
  worker), and `metric_in_memory()` copies, on the loop, what a query reads of one metric (the
  live interval and the snapshots not yet released) into a MemoryRows that finishes it off the
  loop (accumulator.py).
- The current value of each gauge (what `+N`/`-N` change) moves with the order samples arrive
  in, whatever the wall clock does; a client-timestamped value older than it does not move it.
  Each snapshot carries the current values its interval changed (`Snapshot.gauges`), so the
  store keeps them with the flush that holds them and `restore_gauges()` brings them back at
  start.
- `memory_bytes()` estimates what the live interval and the pending snapshots hold, and what
  writing them will take (the flush's transient arrays): the figure `storage.backfill_memory`
  bounds (backpressure.py).
- A live source (`LiveSource`: the native core, native.py) holds series-buckets of the live
  interval outside Python: swap() keeps what one core alone held as it is (`Snapshot.held`,
  held_interval.py) or merges what several held into the snapshot, a query reads a copy of
  its metric's part, and keys_in_memory(), discard() and memory_bytes() count it in.
- The clock is injected: tests own time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from itertools import repeat

from statsd_gateway import held_interval
from statsd_gateway.accumulator import (
    MemoryEntry,
    MemoryRows,
    SeriesAccumulator,
    finish_rows,
)
from statsd_gateway.model import FUTURE_MAX_SECONDS, MetricType, RowBatch, Sample, SeriesKey
from statsd_gateway.series_registry import CARDINALITY_LIMIT, TYPE_CONFLICT, SeriesRegistry
from statsd_gateway.snapshot import (
    BUCKET_BYTES,
    ENTRY_BYTES,
    VALUE_BYTES,
    Buckets,
    HeldInterval,
    LiveSink,
    LiveSource,
    MetricIndex,
    Snapshot,
    SnapshotEntry,
    collection_paused,
    merge_entries,
    native_bytes,
)

# Reject reasons raised here and at admission (the parser's are in protocol.py).
TIMESTAMP_TOO_OLD = "timestamp_too_old"
TIMESTAMP_IN_FUTURE = "timestamp_in_future"
AGGREGATOR_REJECT_REASONS = (
    TYPE_CONFLICT,
    CARDINALITY_LIMIT,
    TIMESTAMP_TOO_OLD,
    TIMESTAMP_IN_FUTURE,
)


class IntervalAggregator:
    """The live interval's series-buckets and the snapshots swapped out of it until the store
    holds them (see the module's contract). Runs on the event loop, but for snapshot_rows()."""

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
        # The current value of each gauge and its time: what +N/-N changes apply to. Keyed by
        # series key, as the store reads and writes them (restore_gauges, Snapshot.gauges).
        self._gauges: dict[SeriesKey, tuple[float, float]] = {}
        self._gauges_changed: dict[SeriesKey, tuple[float, float]] = {}
        self.sources: list[LiveSource] = []
        # Where samples for the live interval go instead of the maps here (native.py), if set.
        self.sink: LiveSink | None = None

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
        clock); returns (index, reason) of each rejected one. With a live sink (the native
        core), what goes to the live interval is checked here and added there."""
        if now is None:
            now = self.clock()
        if into is None and self.sink is not None:
            accepted, sids, refused, _ = self._checked(tenant, samples, now)
            if accepted:
                self.sink.add(tenant, accepted, sids, now)
            return refused
        bucket_now = self.bucket_of(now)
        rejects: list[tuple[int, str]] = []
        live, index = (self._live, self._live_index) if into is None else (into.buckets, into.index)
        gauges = self._gauges
        changed = self._gauges_changed if into is None else into.gauges
        ids = self.registry.ids_of(tenant)
        admit = self.registry.admit
        max_series = self.max_series_per_tenant
        current = live.get(bucket_now)
        new_buckets = new_entries = 0
        if current is None:
            current = live[bucket_now] = {}
            new_buckets = 1
        i = -1
        # Hot loop: inlined on purpose; UDP lines pass here one by one. Enum members are locals
        # (an attribute read of the class each time costs more than the id lookup).
        set_type, gauge_type = MetricType.SET, MetricType.GAUGE
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
            sid = ids.get((name, tags))
            acc = None if sid is None else m.get(sid)
            if acc is None:
                # New in this bucket (once per series and interval): admitted by the registry.
                admitted = admit(tenant, name, tags, mtype, max_series)
                if isinstance(admitted, str):
                    rejects.append((i, admitted))
                    continue
                sid = admitted
                acc = m[sid] = SeriesAccumulator(mtype)
                entries = index.get((tenant, name))
                if entries is None:
                    entries = index[(tenant, name)] = []
                entries.append((b, sid))
                new_entries += 1
            elif acc.type is not mtype:
                rejects.append((i, TYPE_CONFLICT))
                continue
            if mtype is set_type:
                acc.members.add(str(value))  # type: ignore[union-attr]
                acc.count += 1.0
                continue
            v = float(value)
            if mtype is gauge_type:
                key = (tenant, name, tags)
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
        accepted, _, rejects, new = self._checked(tenant, samples, now)
        return accepted, rejects, new

    def _checked(
        self, tenant: str, samples: Iterable[Sample], now: float
    ) -> tuple[list[Sample], list[int], list[tuple[int, str]], list[SeriesKey]]:
        """admit(), with the series id of each accepted sample."""
        accepted: list[Sample] = []
        sids: list[int] = []
        rejects: list[tuple[int, str]] = []
        new: list[SeriesKey] = []
        for i, sample in enumerate(samples):
            answer = self.admit_one(tenant, sample, now)
            if isinstance(answer, str):
                rejects.append((i, answer))
                continue
            sid, fresh = answer
            if fresh:
                new.append((tenant, sample.name, sample.tags))
            accepted.append(sample)
            sids.append(sid)
        return accepted, sids, rejects, new

    def admit_one(self, tenant: str, sample: Sample, now: float) -> tuple[int, bool] | str:
        """admit() of one sample: (its series id, whether this call registered the series), or
        the reason it is refused."""
        ts = sample.timestamp
        if ts is not None and ts > now + FUTURE_MAX_SECONDS:
            return TIMESTAMP_IN_FUTURE
        if ts is not None and ts < now - self.max_backdate:
            return TIMESTAMP_TOO_OLD
        name, tags = sample.name, sample.tags
        fresh = (name, tags) not in self.registry.ids_of(tenant)
        admitted = self.registry.admit(tenant, name, tags, sample.type, self.max_series_per_tenant)
        if isinstance(admitted, str):
            return admitted
        return admitted, fresh

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
        if into is not None and into.held is not None:
            ids = self.registry.ids_of(tenant)
            pairs = [
                (self.bucket_of(now if x.timestamp is None else x.timestamp), sid)
                for x in samples
                if (sid := ids.get((x.name, x.tags))) is not None
            ]
            held_interval.unhold(into, pairs, self.registry)
        return self.add_samples(tenant, samples, into=into, now=now)

    def keys_in_memory(self) -> set[SeriesKey]:
        """Every series with a point in the live interval or a snapshot not yet written."""
        ids: set[int] = set()
        for buckets in [self._live, *(s.buckets for s in self._pending)]:
            for m in buckets.values():
                ids.update(m)
        for source in self.sources:
            ids |= source.sids()
        for snap in self._pending:
            if snap.held is not None:
                ids |= snap.held.sids()
        return set(map(self.registry.key_of, ids))

    @contextmanager
    def live_held(self) -> Iterator[None]:
        """Nothing is added by a live source while inside: what keys_in_memory() says holds
        until the series it leaves out are forgotten (on the event loop, briefly)."""
        with ExitStack() as stack:
            for source in self.sources:
                stack.enter_context(source.held())
            yield

    def discard(self, keys: set[SeriesKey]) -> int:
        """Removes the series from the live interval, every pending snapshot and the gauges'
        current values (an admin delete, before the registry forgets them); returns how many
        series-buckets were dropped."""
        ids = {sid for sid in map(self.registry.id_of, keys) if sid is not None}
        dropped = sum(source.discard(ids) for source in self.sources)
        dropped += sum(s.held.discard(list(ids)) for s in self._pending if s.held is not None)
        for index in [self._live_index, *(s.index for s in self._pending)]:
            for metric in {(k[0], k[1]) for k in keys} & index.keys():
                # The series may come back into the same bucket: one index entry each.
                index[metric] = [e for e in index[metric] if e[1] not in ids]
        for buckets in [self._live, *(s.buckets for s in self._pending)]:
            for ts in list(buckets):
                m = buckets[ts]
                for sid in ids & m.keys():
                    del m[sid]
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

    def current_gauge(self, key: SeriesKey) -> tuple[float, float]:
        """The current value of a gauge and its time ((0, -inf) for one never seen)."""
        return self._gauges.get(key, (0.0, -math.inf))

    def restore_gauges(self, current: dict[SeriesKey, tuple[float, float]]) -> None:
        """At start, before any sample: the current gauge values the store holds."""
        self._gauges.update(current)

    def swap(self) -> Snapshot:
        """Moves the live interval into a new pending snapshot (on the event loop). Where one
        core alone held anything and the maps here are empty (the native path's usual case),
        its interval is kept as it is (`Snapshot.held`), O(1); otherwise what the live sources
        held is merged into the maps first, an accumulator per series-bucket."""
        held: HeldInterval | None = None
        taken = []
        for source in self.sources:
            intervals, gauges = source.take()
            self._merge_gauges(gauges)
            taken.append([i for i in intervals if len(i)])
        if sum(map(len, taken)) == 1 and not self._live:
            held = next(i[0] for i in taken if i)
            self._live_bytes += native_bytes(*held.memory())
        else:
            with collection_paused():
                for intervals in taken:  # each source's cores in one merge: see merge_entries
                    entries = [e for interval in intervals for e in interval.entries()[0]]
                    self._live_bytes += merge_entries(
                        self._live, self._live_index, entries, self.registry
                    )
        snap = Snapshot(
            self._next_seq,
            self._live,
            self.bucket_of(self.clock()),
            index=self._live_index,
            gauges=self._gauges_changed,
            memory_bytes=self._live_bytes,
            held=held,
        )
        self._next_seq += 1
        self._live = {}
        self._live_index = {}
        self._gauges_changed = {}
        self._pending.append(snap)
        self._pending_bytes += self._live_bytes
        self._live_bytes = 0
        return snap

    def _merge_gauges(self, gauges: list[tuple[int, float, float]]) -> None:
        """The current values a live source's interval changed."""
        key_of = self.registry.key_of
        for sid, v, t in gauges:
            key = key_of(sid)
            self._gauges[key] = self._gauges_changed[key] = (v, t)

    def memory_bytes(self) -> int:
        """The estimate of what the live interval and the pending snapshots hold."""
        held = self._live_bytes + self._pending_bytes
        for source in self.sources:
            entries, values = source.memory()
            held += native_bytes(entries, values)
        return held

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

    def snapshot_rows(self, snap: Snapshot) -> RowBatch:
        """The rows of a snapshot, off the loop: nothing adds to a swapped-out snapshot while
        the flusher finishes it, and the registry keeps every series memory holds."""
        ts: list[float] = []
        ids: list[int] = []
        accs: list[SeriesAccumulator] = []
        for b, m in snap.buckets.items():
            ts.extend(repeat(b, len(m)))
            ids.extend(m)
            accs.extend(m.values())
        rows = finish_rows(ts, ids, accs, list(map(self.registry.key_of, ids)))
        if snap.held is None or not len(snap.held):
            return rows
        return held_interval.snapshot_rows(snap, rows, self.registry)

    def unfinishable(self, snap: Snapshot) -> list[tuple[SnapshotEntry, Exception]]:
        """The entries of a snapshot that cannot be finished into a row, each with its error,
        found by finishing each on its own (off the loop; only after the whole snapshot failed
        to finish, so its cost matters little). What `held` has must be materialized first."""
        assert snap.held is None, "materialize the snapshot first"
        found: list[tuple[SnapshotEntry, Exception]] = []
        for b, m in snap.buckets.items():
            for sid, acc in m.items():
                try:
                    finish_rows([b], [sid], [acc], [self.registry.key_of(sid)])
                except Exception as e:
                    found.append(((b, sid), e))
        return found

    def metric_in_memory(self, tenant: str, name: str) -> MemoryRows:
        """What memory holds of one metric (the live interval and the pending snapshots, in that
        order of theirs), for a query to finish off the loop. Runs on the loop: it reads the
        metric's entries through each interval's index, so its cost follows that metric's
        series in memory, and copies their accumulators (nothing else is done here); a held
        interval and a live core are scanned whole for them (in C)."""
        out: list[MemoryEntry] = []
        key_of = self.registry.key_of
        held = [s for s in self._pending if s.held is not None] or self.sources
        sids = list(self.registry.ids_of_metric(tenant, name)) if held else []
        mtype = self.registry.types.get((tenant, name))
        for snap in self._pending:
            out += held_interval.metric_entries(snap, tenant, name, sids, mtype, self.registry)
        for ts, sid in self._live_index.get((tenant, name), ()):
            acc = self._live.get(ts, {}).get(sid)
            if acc is not None:
                out.append((self._next_seq, ts, sid, key_of(sid), acc.copy()))
        for source in self.sources if sids and mtype is not None else ():
            for entry in source.copy(sids):
                acc = SeriesAccumulator.from_native(entry, mtype)  # type: ignore[arg-type]
                out.append((self._next_seq, entry[0], entry[1], key_of(entry[1]), acc))
        return MemoryRows(out)
