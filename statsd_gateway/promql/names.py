"""StatsD names as Prometheus sees them: metric and label names escaped as statsd_exporter
escapes them, and the index that takes a PromQL name back to the StatsD metrics it stands for.

- A name is escaped character by character: each character outside `[a-zA-Z0-9_]` becomes `_`,
  and a name starting with a digit gets a leading `_` (`api.latency` → `api_latency`,
  `5xx.count` → `_5xx_count`). Tag keys become label names the same way.
- A metric with a sketch (timing, histogram, distribution) also answers to `<name>_bucket`,
  `<name>_count` and `<name>_sum`, the series a Prometheus histogram has (`VIEWS`).
- `{__name__="api.latency"}` selects the StatsD name as sent, as `api_latency` does.
- Two StatsD names that escape alike (`api.latency`, `api_latency`) are a clash: selecting the
  escaped name is refused with a message naming both (the raw `{__name__=…}` still selects
  each), never merged. Tag keys that escape alike on one metric (`http.method`, `http_method`)
  are refused the same way when a query touches that metric.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from statsd_gateway.errors import Unprocessable
from statsd_gateway.model import MetricType, Tags

_INVALID = re.compile(r"[^a-zA-Z0-9_]")
# The series of a Prometheus histogram, and what each holds of one of our sketched metrics:
# "" the whole distribution (a native histogram), the others a classic histogram's parts.
VIEWS = ("", "_bucket", "_count", "_sum")
# The label of a classic histogram's bucket boundary.
LE = "le"


def escape(name: str) -> str:
    """The Prometheus name of a StatsD metric name or tag key (statsd_exporter's escaping)."""
    out = _INVALID.sub("_", name)
    if out[:1].isdigit():
        out = "_" + out
    return out


@dataclass(frozen=True, slots=True)
class Metric:
    """One StatsD metric as a PromQL name selects it: `view` is "" for the metric itself, or
    the classic histogram series (`_bucket`, `_count`, `_sum`) of a sketched metric."""

    name: str
    type: MetricType
    view: str = ""


class NameIndex:
    """A tenant's metric names, escaped: a snapshot of `types` ((name → type) of the tenant's
    metrics) when it was built."""

    def __init__(self, types: dict[str, MetricType]) -> None:
        self.types = types
        by_escaped: dict[str, list[str]] = {}
        for name in types:
            by_escaped.setdefault(escape(name), []).append(name)
        self._by_escaped = {k: sorted(v) for k, v in by_escaped.items()}

    @property
    def size(self) -> int:
        return len(self.types)

    def prometheus_names(self) -> list[str]:
        """Every name PromQL can select, the histogram views included, sorted."""
        out = set(self._by_escaped)
        for escaped, names in self._by_escaped.items():
            if any(is_histogram(self.types[n]) for n in names):
                out.update(escaped + v for v in VIEWS[1:])
        return sorted(out)

    def lookup(self, prom_name: str) -> Metric | None:
        """The metric (or histogram view) an escaped name stands for; None if none does.
        Raises Unprocessable where two StatsD names escape to it."""
        names = self._by_escaped.get(prom_name)
        if names:
            return Metric(_one(prom_name, names), self.types[names[0]])
        for view in VIEWS[1:]:
            stem = prom_name.removesuffix(view)
            if stem != prom_name and (names := self._by_escaped.get(stem)):
                name = _one(stem, names)
                mtype = self.types[name]
                if is_histogram(mtype):
                    return Metric(name, mtype, view)
        return None

    def raw(self, name: str) -> Metric | None:
        """The metric of a StatsD name as sent (`{__name__="api.latency"}`)."""
        mtype = self.types.get(name)
        return None if mtype is None else Metric(name, mtype)

    def matching(self, accepts: Callable[[str], bool], *, strict: bool) -> list[Metric]:
        """Every metric whose escaped name passes `accepts` (a regex or negative `__name__`
        matcher, or none at all, sees the names Prometheus shows, not the histogram views), by
        name. An escaped name two StatsD metrics share raises Unprocessable if it passes and
        `strict` (a query), else both are listed (the series index)."""
        out: list[Metric] = []
        for escaped, names in sorted(self._by_escaped.items()):
            if accepts(escaped):
                chosen = [_one(escaped, names)] if strict else names
                out.extend(Metric(n, self.types[n]) for n in chosen)
        return out


def is_histogram(mtype: MetricType) -> bool:
    """The types PromQL sees as histograms: those whose values are sketched, but gauges."""
    return mtype.has_sketch and mtype is not MetricType.GAUGE


def _one(escaped: str, names: list[str]) -> str:
    if len(names) > 1:
        listed = ", ".join(f'{{__name__="{n}"}}' for n in names)
        raise Unprocessable(
            f"{escaped} stands for {len(names)} StatsD metrics ({', '.join(names)}); "
            f"select one by its name as sent: {listed}"
        )
    return names[0]


def label_keys(series: Iterable[Tags], metric: str) -> dict[str, str]:
    """Label name → tag key, over the tags of a metric's series. Raises Unprocessable where
    two tag keys escape to one label name (or one escapes to `__name__` or `le`)."""
    out: dict[str, str] = {}
    for tags in series:
        for key, _ in tags:
            label = escape(key)
            have = out.setdefault(label, key)
            if have != key:
                raise Unprocessable(
                    f"the tags {have!r} and {key!r} of {metric} are both the label {label}; "
                    "rename one of them to query this metric with PromQL"
                )
    for reserved in ("__name__", LE):
        if reserved in out:
            raise Unprocessable(
                f"the tag {out[reserved]!r} of {metric} is the reserved label {reserved}"
            )
    return out


def labels_of(tags: Tags) -> tuple[tuple[str, str], ...]:
    """A series' tags as Prometheus labels: names escaped, empty values left out (Prometheus
    has no label with an empty value, so a bare tag like `canary` has no label), sorted."""
    return tuple(sorted((escape(k), v) for k, v in tags if v != ""))
