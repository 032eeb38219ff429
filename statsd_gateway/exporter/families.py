"""What every exposition format of the scrape shares: which series are shown, in which family,
under which name and labels, and the values a summary or classic histogram carries.

Contract (the rules docs/PROMETHEUS.md, "The scrape", states):
- `families()` groups a Scrape's series into Prometheus families by escaped name, sorted by
  family name, each member's labels sorted by name. A series that cannot be exposed is left
  out and counted in `dropped` by reason: a name two StatsD metrics escape to (`name_clash`:
  the first by StatsD name is kept, as is the first family whose sample names another's
  would take), series of one metric shown as two kinds (`kind_clash`), tag keys that escape
  alike or take a reserved label (`label_clash`), two series with the same labels
  (`duplicate`).
- Timings are in seconds (the milliseconds StatsD sends, ÷ `SCALE`), as statsd_exporter shows
  them; histograms and distributions keep their unit.
- `classic_buckets()` is a classic histogram's cumulative counts since start, one per bound
  of the series' rule (the +Inf bucket, its count, left to the caller).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterator

from statsd_gateway import sketch
from statsd_gateway.exporter.state import Scrape, SeriesState
from statsd_gateway.model import MetricType, SeriesKey
from statsd_gateway.promql.names import escape
from statsd_gateway.sketch import value_of

KINDS = {
    MetricType.COUNTER: "counter", MetricType.GAUGE: "gauge", MetricType.SET: "gauge",
    MetricType.TIMING: "summary", MetricType.HISTOGRAM: "summary",
    MetricType.DISTRIBUTION: "summary",
}  # fmt: skip
SCALE = {MetricType.TIMING: 1000.0}  # milliseconds → seconds
RESERVED_LABELS = ("quantile", "le", "__name__")
# Why a scrape leaves a series out (statsd_gateway_exporter_dropped_series_total{reason};
# docs/METRICS.md): these here, and the protobuf format's own (protobuf.py).
DROP_REASONS = ("name_clash", "kind_clash", "label_clash", "duplicate", "native_count_mismatch")

LabelPairs = tuple[tuple[str, str], ...]  # (label name, value), sorted by name
Member = tuple[LabelPairs, SeriesKey]


def scale_of(state: SeriesState) -> float:
    """What the series' values are divided by to be shown (1: as sent)."""
    return SCALE.get(state.type, 1.0)


def families(
    scrape: Scrape, dropped: Counter[str], openmetrics: bool
) -> Iterator[tuple[str, str, list[Member]]]:
    """(family name, kind, [(labels, series key)]) by family name."""
    by_family: dict[str, tuple[str, str, list[Member]]] = {}
    seen: dict[str, set[LabelPairs]] = {}
    owner: dict[str, str] = {}  # each sample name (and family name) → the family that has it
    for key in sorted(scrape.series, key=lambda k: (k[1], k[2])):
        state = scrape.series[key]
        raw_name = key[1]
        family = _escape(raw_name)
        kind = "histogram" if state.is_histogram else KINDS[state.type]
        have = by_family.get(family)
        if have is not None and have[0] != raw_name:
            dropped["name_clash"] += 1
            continue
        if have is not None and have[1] != kind:  # one metric, some series mapped otherwise
            dropped["kind_clash"] += 1
            continue
        if have is None:
            # A family's samples must not be another's: a counter lat_count beside a timing
            # lat, or (OpenMetrics) a counter hits beside hits_total. The first by StatsD name
            # keeps them.
            names = _sample_names(family, kind, openmetrics)
            if any(owner.get(n, family) != family for n in names):
                dropped["name_clash"] += 1
                continue
            owner.update(dict.fromkeys(names, family))
        labels = label_pairs(key)
        if labels is None:
            dropped["label_clash"] += 1
            continue
        if labels in seen.setdefault(family, set()):
            dropped["duplicate"] += 1
            continue
        seen[family].add(labels)
        if have is None:
            have = by_family[family] = (raw_name, kind, [])
        have[2].append((labels, key))
    for family in sorted(by_family):
        _, kind, members = by_family[family]
        yield family, kind, members


def help_text(scrape: Scrape, members: list[Member]) -> str:
    """A family's HELP, unescaped: its rule's `help`, or what it is in StatsD."""
    key = members[0][1]
    first = scrape.series[key]
    helped = first.options.help if first.options is not None else None
    return helped or f"StatsD {first.type.value} {key[1]}"


@functools.lru_cache(maxsize=1 << 18)
def _sample_names(family: str, kind: str, openmetrics: bool) -> tuple[str, ...]:
    """The names a family's samples (and, in OpenMetrics, its own name) take."""
    if kind == "counter":
        base = family.removesuffix("_total") if openmetrics else family
        return (base, base + "_total") if openmetrics else (base,)
    if kind == "gauge":
        return (family,)
    parts = ("_bucket", "_sum", "_count") if kind == "histogram" else ("", "_sum", "_count")
    return (family, *(family + p for p in parts))


@functools.lru_cache(maxsize=1 << 18)
def label_pairs(key: SeriesKey) -> LabelPairs | None:
    """The series' labels, or None if two of its tag keys escape alike or one is reserved."""
    pairs: dict[str, str] = {}
    for k, v in key[2]:
        if v == "":
            continue  # a bare tag: Prometheus has no label with an empty value
        label = escape(k)
        if label in pairs or label in RESERVED_LABELS:
            return None
        pairs[label] = v
    return tuple(sorted(pairs.items()))


_escape = functools.lru_cache(maxsize=1 << 16)(escape)


def classic_buckets(
    state: SeriesState, bins: sketch.Bins | None, scale: float
) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) for each of the rule's bounds, since start, from the
    merged sketch: each bin counts below a bound where its value (the bucket centre, within
    the sketch's 1 %) does."""
    assert state.options is not None
    bounds = state.options.buckets
    counts = [0.0] * len(bounds)
    if bins is not None:
        values = [value_of(int(k)) / scale for k in bins.pos_keys.tolist()]
        values += [-value_of(int(k)) / scale for k in bins.neg_keys.tolist()]
        weights = bins.pos_counts.tolist() + bins.neg_counts.tolist()
        for j, le in enumerate(bounds):
            below = sum(w for v, w in zip(values, weights, strict=True) if v <= le)
            counts[j] = below + (bins.zero if le >= 0 else 0.0)
    return list(zip(bounds, counts, strict=True))
