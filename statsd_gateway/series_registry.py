"""Every series the daemon knows, with its integer id, and admission: whether a new series may
be added at all.

Contract:
- Each series (tenant, name, tags) gets an int id when it is first admitted; the registry is
  seeded at start with the store's series and their ids (`seed()`), and new ids continue above
  the largest ever known, so that a store may key its rows by the same ids. An id is stable
  while its series is known and never given to another series in the same run (a series
  forgotten and sent again gets a new one).
- The type of a metric (tenant, name) is fixed by its first series; a series of another type
  is refused (`type_conflict`). A tenant has at most `max_series` series (`cardinality_limit`).
- It is the one place that maps an id to its key (`key_of()`), and so to its metric's type, and
  to the options of the mapping rule that made the series (`options_of()`: what the Prometheus
  scrape reads), asked of `describe` when a series is admitted without them.
- Mutated under its lock: on the event loop, and by the native core's reader threads (their
  resolver admits a new series while the loop may admit another: the GIL alone would let two
  admissions of one series interleave and give it two ids). `key_of()` is a single dict read,
  safe from the flush worker and query threads; an id is looked up there only while memory
  holds its series, which is never forgotten meanwhile (`forget()`'s precondition).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence

from statsd_gateway.mapping_file import SeriesOptions
from statsd_gateway.model import MetricType, SeriesKey, Tags

# Reject reasons raised at admission (the aggregator's own are in aggregator.py).
TYPE_CONFLICT = "type_conflict"
CARDINALITY_LIMIT = "cardinality_limit"


class SeriesRegistry:
    """Series ids, metric types and per-tenant cardinality, seeded from the store at start.

    `series[tenant]` maps (name, tags) to the series id: the aggregator's hot loop reads it
    directly. `types[(tenant, name)]` is each metric's type. Treat both as read-only outside
    this class."""

    def __init__(self) -> None:
        self.types: dict[tuple[str, str], MetricType] = {}
        self.series: dict[str, dict[tuple[str, Tags], int]] = {}
        self._keys: dict[int, SeriesKey] = {}
        # (tenant, name) -> that metric's tag sets and ids: a metric's series without walking
        # every series of its tenant (the catalog, forget).
        # (A list, and the key tuple shared with `types`: the index costs ~100 bytes a series.)
        self._by_metric: dict[tuple[str, str], list[Tags]] = {}
        # ... and their ids, in the same order (a query copies a metric's series out of the
        # native cores by id: ~8 bytes a series).
        self._ids_by_metric: dict[tuple[str, str], list[int]] = {}
        self._next_id = 1
        # How many forget() calls removed a series: an id judged before a change of it may be
        # gone (the HTTP points a write-ahead log entry holds are judged again then).
        self.forgets = 0
        # Called with the ids of the series forget() removed (the native core's caches).
        self.on_forget: list[Callable[[list[int]], None]] = []
        # The mapping rule's options of a series being admitted, if a rule made it (the
        # parser's mapped_options); kept by id, only for series a rule made.
        self.describe: Callable[[str, Tags], SeriesOptions | None] | None = None
        self._options: dict[int, SeriesOptions] = {}
        # Taken by every mutation; never held while waiting for anything else (the hooks run
        # after it is released: they take the native cores' mutexes).
        self._lock = threading.Lock()

    def seed(self, sid: int, key: SeriesKey, mtype: MetricType) -> None:
        """A series the store holds, with the store's id for it (at start, before any sample)."""
        with self._lock:
            self._seed(sid, key, mtype)

    def _seed(self, sid: int, key: SeriesKey, mtype: MetricType) -> None:
        tenant, name, tags = key
        if (tenant, name) not in self.types:
            metric = (tenant, name)
            self.types[metric] = mtype
            self._by_metric[metric] = []
            self._ids_by_metric[metric] = []
        self.series.setdefault(tenant, {})[(name, tags)] = sid
        self._by_metric[(tenant, name)].append(tags)
        self._ids_by_metric[(tenant, name)].append(sid)
        self._keys[sid] = key
        self._next_id = max(self._next_id, sid + 1)

    def learn(self, key: SeriesKey, mtype: MetricType) -> None:
        """A series another gateway stored in a shared store, under an id of this registry's
        (the store's may be one this registry gave another series); no limit applies, and one
        whose metric has another type here is left out."""
        with self._lock:
            self._admit(*key, mtype, max_series=2**62)

    def admit(
        self, tenant: str, name: str, tags: Tags, mtype: MetricType, max_series: int
    ) -> int | str:
        """The id of the series (registered now if it is new), or the reason it is refused."""
        with self._lock:
            return self._admit(tenant, name, tags, mtype, max_series)

    def _admit(
        self, tenant: str, name: str, tags: Tags, mtype: MetricType, max_series: int
    ) -> int | str:
        known = self.types.get((tenant, name))
        if known is not None and known is not mtype:
            return TYPE_CONFLICT
        ids = self.ids_of(tenant)
        sid = ids.get((name, tags))
        if sid is not None:
            # A series seeded from the store gets its options when a line names it again.
            if self.describe is not None and sid not in self._options:
                self._describe(sid, name, tags)
            return sid
        if len(ids) >= max_series:
            return CARDINALITY_LIMIT
        sid = self._next_id
        self._next_id += 1
        ids[(name, tags)] = sid
        if self.describe is not None:
            self._describe(sid, name, tags)
        self._keys[sid] = (tenant, name, tags)
        if known is None:
            metric = (tenant, name)
            self.types[metric] = mtype
            self._by_metric[metric] = [tags]
            self._ids_by_metric[metric] = [sid]
        else:
            self._by_metric[(tenant, name)].append(tags)
            self._ids_by_metric[(tenant, name)].append(sid)
        return sid

    def _describe(self, sid: int, name: str, tags: Tags) -> None:
        assert self.describe is not None
        options = self.describe(name, tags)
        if options is not None:
            self._options[sid] = options

    def options_of(self, sid: int) -> SeriesOptions | None:
        """The options of the mapping rule that made the series when it was admitted (the
        first time in this run); None for a series no rule made (the scrape then takes the
        mapping file's defaults)."""
        return self._options.get(sid)

    def ids_of(self, tenant: str) -> dict[tuple[str, Tags], int]:
        """The tenant's (name, tags) → id map, live (created empty if the tenant has none)."""
        ids = self.series.get(tenant)
        if ids is None:
            ids = self.series[tenant] = {}
        return ids

    def id_of(self, key: SeriesKey) -> int | None:
        tenant, name, tags = key
        return self.series.get(tenant, {}).get((name, tags))

    def series_of(self, tenant: str, name: str) -> Sequence[Tags]:
        """The tag sets of one metric's series; read-only."""
        return self._by_metric.get((tenant, name), ())

    def ids_of_metric(self, tenant: str, name: str) -> Sequence[int]:
        """The ids of one metric's series, as series_of() orders them; read-only."""
        return self._ids_by_metric.get((tenant, name), ())

    def metrics_of(self, tenant: str) -> list[str]:
        """The names of the tenant's metrics."""
        return [n for t, n in list(self.types) if t == tenant]  # a reader may admit meanwhile

    def key_of(self, sid: int) -> SeriesKey:
        return self._keys[sid]

    def series_count(self) -> int:
        """How many series are known, all tenants together."""
        return len(self._keys)

    def forget(self, keys: Iterable[SeriesKey]) -> None:
        """Series the store deleted (no data within any retention, or an admin delete). Only
        series nothing in memory holds may be forgotten: their ids are not looked up again."""
        with self._lock:
            ids = self._forget(keys)
        if ids:
            self.forgets += 1
            for hook in self.on_forget:
                hook(ids)

    def _forget(self, keys: Iterable[SeriesKey]) -> list[int]:
        gone: dict[tuple[str, str], set[Tags]] = {}
        ids: list[int] = []
        for tenant, name, tags in keys:
            sid = self.series.get(tenant, {}).pop((name, tags), None)
            if sid is not None:
                del self._keys[sid]
                self._options.pop(sid, None)
                ids.append(sid)
                gone.setdefault((tenant, name), set()).add(tags)
        gone_ids = set(ids)
        for metric, tag_sets in gone.items():  # one pass per metric, however many go
            kept = [t for t in self._by_metric.get(metric, ()) if t not in tag_sets]
            if kept:
                self._by_metric[metric] = kept
                self._ids_by_metric[metric] = [
                    i for i in self._ids_by_metric.get(metric, ()) if i not in gone_ids
                ]
            else:
                self._by_metric.pop(metric, None)
                self._ids_by_metric.pop(metric, None)
                self.types.pop(metric, None)
        return ids
