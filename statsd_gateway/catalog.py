"""What a tenant has, and the admin delete: its metrics by name (filtered by a glob), a
metric's tag values ranked by how many series carry them, and the deletion of a metric's
series with their history.

Reads the series registry (every series the daemon knows: seeded from the store at start, added
to at admission), one metric's series at a time through its per-metric index; a delete reaches
the store, the open rollups and memory, with no flush running.
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from statsd_gateway.aggregator import IntervalAggregator
from statsd_gateway.errors import MetricNotFound
from statsd_gateway.flusher import Flusher
from statsd_gateway.model import SeriesKey, Tags
from statsd_gateway.series_registry import SeriesRegistry
from statsd_gateway.store.base import Store


class MetricCatalog:
    """What a tenant has (metrics, a metric's tag values), read from the series registry, and
    the admin delete of a metric's series everywhere they are held (see the module)."""

    def __init__(
        self,
        registry: SeriesRegistry,
        aggregator: IntervalAggregator,
        store: Store,
        flusher: Flusher,
        *,
        on_deleted: Callable[[set[SeriesKey]], None] = lambda keys: None,
    ) -> None:
        self._registry = registry
        self._aggregator = aggregator
        self._store = store
        self._flusher = flusher
        self._on_deleted = on_deleted  # what else holds series: the exporter's scrape

    def metrics_of(self, tenant: str, match: str | None = None) -> list[dict[str, Any]]:
        """The tenant's metrics (those whose name matches the glob `match`, if given) with
        their type, tag keys and the aggregations a query may ask of them, by name."""
        wanted = None if match is None else glob_regex(match)
        tag_keys: dict[str, set[str]] = {}
        for name in self._registry.metrics_of(tenant):
            if wanted is None or wanted.fullmatch(name):
                keys = tag_keys[name] = set()
                for tags in self._registry.series_of(tenant, name):
                    keys.update(k for k, _ in tags)
        return [
            {
                "name": name,
                "type": (kind := self._registry.types[(tenant, name)]).value,
                "tag_keys": sorted(keys),
                "aggregations": list(kind.aggregations),
            }
            for name, keys in sorted(tag_keys.items())
        ]

    async def delete_metric(self, tenant: str, name: str, tags: Tags) -> dict[str, int]:
        """Deletes the metric's series that carry `tags` (all of them without), their history
        in every tier and what memory holds of them, and frees their cardinality slots."""
        if (tenant, name) not in self._registry.types:
            raise MetricNotFound(f"no metric named {name!r}", "name")
        keys = {
            (tenant, name, t)
            for t in self._registry.series_of(tenant, name)
            if dict(tags).items() <= dict(t).items()
        }
        async with self._flusher.paused():  # a flush in progress would write them back
            series, rows = await self._store.delete_series(list(keys))
            await self._flusher.discard_rollups(keys)
            with self._aggregator.live_held():  # no StatsD point of theirs lands in between
                in_memory = self._aggregator.discard(keys)
                self._registry.forget(keys)
            self._on_deleted(keys)
        # Their points may still be in the write-ahead log, which a crash would replay: a flush
        # now writes what memory holds without them and releases the log up to here.
        await self._flusher.flush(force=True)
        return {"series": len(keys), "stored_series": series, "rows": rows, "in_memory": in_memory}

    def tags_of(self, tenant: str, name: str, limit: int) -> list[dict[str, Any]]:
        """Each tag key of a metric with its values, the values carried by the most series
        first (ties by value), at most `limit` of them per key; `truncated` says more exist."""
        if (tenant, name) not in self._registry.types:
            raise MetricNotFound(f"no metric named {name!r}", "name")
        by_key: dict[str, Counter[str]] = {}
        for tags in self._registry.series_of(tenant, name):  # that metric's series only
            for k, v in tags:
                by_key.setdefault(k, Counter())[v] += 1
        out = []
        for key in sorted(by_key):
            ranked = sorted(by_key[key].items(), key=lambda kv: (-kv[1], kv[0]))
            out.append(
                {
                    "key": key,
                    "values": [{"value": v, "series": n} for v, n in ranked[:limit]],
                    "truncated": len(ranked) > limit,
                }
            )
        return out


def glob_regex(pattern: str) -> re.Pattern[str]:
    """`*` (any run of characters) and `?` (one character); everything else is literal.

    Built by fnmatch.translate, whose regex cannot backtrack catastrophically (a naive `.*`
    per star takes seconds for `*a*a*a*a*a*a*a*a*b` against a long name, on the event loop);
    `[` is escaped first, so fnmatch's character sets never apply."""
    return re.compile(fnmatch.translate(pattern.replace("[", "[[]")))
