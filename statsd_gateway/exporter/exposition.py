"""A Scrape (state.py) → the Prometheus text exposition format 0.0.4, or OpenMetrics 1.0.0
when the scraper asks for it, as statsd_exporter would expose the same StatsD traffic.

Names are escaped as PromQL sees them (promql/names.py). Timings are in seconds (the
milliseconds StatsD sends, ÷ 1000), as statsd_exporter shows them; histograms and distributions
keep their unit. A series that cannot be exposed is left out and counted by reason, and the
rest of the scrape goes on: a name two StatsD metrics escape to (`name_clash`: the first by
StatsD name is kept), tag keys that escape alike (`label_clash`), two series that end up with
the same labels (`duplicate`).
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Iterator

from statsd_gateway import sketch
from statsd_gateway.exporter.state import Scrape, SeriesState
from statsd_gateway.model import MetricType, SeriesKey
from statsd_gateway.promql.names import escape
from statsd_gateway.sketch import value_of

TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
_KINDS = {
    MetricType.COUNTER: "counter", MetricType.GAUGE: "gauge", MetricType.SET: "gauge",
    MetricType.TIMING: "summary", MetricType.HISTOGRAM: "summary",
    MetricType.DISTRIBUTION: "summary",
}  # fmt: skip
_SCALE = {MetricType.TIMING: 1000.0}  # milliseconds → seconds


def wants_openmetrics(accept: str) -> bool:
    return "application/openmetrics-text" in accept


def render(scrape: Scrape, *, openmetrics: bool, dropped: Counter[str]) -> bytes:
    """The exposition; what had to be left out is added to `dropped` by reason."""
    lines: list[str] = []
    for family, kind, members in _families(scrape, dropped, openmetrics):
        name = family.removesuffix("_total") if openmetrics and kind == "counter" else family
        first = scrape.series[members[0][1]]
        helped = first.options.help if first.options is not None else None
        text = helped or f"StatsD {first.type.value} {members[0][1][1]}"
        lines.append(f"# HELP {name} {_help(text)}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, key in members:
            lines.extend(_samples(name, kind, labels, key, scrape, openmetrics))
    if openmetrics:
        lines.append("# EOF")
    return ("\n".join(lines) + "\n").encode("utf-8")


def _families(
    scrape: Scrape, dropped: Counter[str], openmetrics: bool
) -> Iterator[tuple[str, str, list[tuple[str, SeriesKey]]]]:
    """(family name, kind, [(rendered labels, series key)]) by family name."""
    by_family: dict[str, tuple[str, str, list[tuple[str, SeriesKey]]]] = {}
    seen: dict[str, set[str]] = {}
    owner: dict[str, str] = {}  # each sample name (and family name) → the family that has it
    for key in sorted(scrape.series, key=lambda k: (k[1], k[2])):
        state = scrape.series[key]
        raw_name = key[1]
        family = _escape(raw_name)
        kind = "histogram" if state.is_histogram else _KINDS[state.type]
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
        labels = _labels(key)
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
def _labels(key: SeriesKey) -> str | None:
    pairs: dict[str, str] = {}
    for k, v in key[2]:
        if v == "":
            continue  # a bare tag: Prometheus has no label with an empty value
        label = escape(k)
        if label in pairs or label in ("quantile", "le", "__name__"):
            return None
        pairs[label] = v
    return ",".join(f'{k}="{_escaped(v)}"' for k, v in sorted(pairs.items()))


_escape = functools.lru_cache(maxsize=1 << 16)(escape)


def _escaped(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _samples(
    name: str, kind: str, labels: str, key: SeriesKey, scrape: Scrape, openmetrics: bool
) -> list[str]:
    state = scrape.series[key]
    braces = f"{{{labels}}}" if labels else ""
    if kind == "counter":
        return [f"{name}{'_total' if openmetrics else ''}{braces} {_number(state.total)}"]
    if kind == "gauge":
        return [f"{name}{braces} {_number(state.value)}"]
    scale = _SCALE.get(state.type, 1.0)
    tail = [
        f"{name}_sum{braces} {_number(state.total / scale)}",
        f"{name}_count{braces} {_number(state.count)}",
    ]
    if kind == "histogram":
        return _buckets(name, labels, state, scrape.since_start.get(key), scale) + tail
    qs = state.quantiles
    values = scrape.quantiles.get(key, (math.nan,) * len(qs))
    head = f"{name}{{{labels},quantile=" if labels else f"{name}{{quantile="
    return [
        f'{head}"{_number(q)}"}} {_number(v / scale)}' for q, v in zip(qs, values, strict=True)
    ] + tail


def _buckets(
    name: str, labels: str, state: SeriesState, bins: sketch.Bins | None, scale: float
) -> list[str]:
    """A classic histogram's cumulative buckets since start, from the merged sketch: each bin
    counts below a bound where its value (the bucket centre, within the sketch's 1 %) does."""
    assert state.options is not None
    bounds = state.options.buckets
    head = f"{name}_bucket{{{labels}," if labels else f"{name}_bucket{{"
    counts = [0.0] * len(bounds)
    if bins is not None:
        values = [value_of(int(k)) / scale for k in bins.pos_keys.tolist()]
        values += [-value_of(int(k)) / scale for k in bins.neg_keys.tolist()]
        weights = bins.pos_counts.tolist() + bins.neg_counts.tolist()
        for j, le in enumerate(bounds):
            below = sum(w for v, w in zip(values, weights, strict=True) if v <= le)
            counts[j] = below + (bins.zero if le >= 0 else 0.0)
    out = [f'{head}le="{_number(le)}"}} {_number(c)}' for le, c in zip(bounds, counts, strict=True)]
    out.append(f'{head}le="+Inf"}} {_number(state.count)}')
    return out


def _help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(v: float) -> str:
    """Go's shortest float text, which Prometheus parses (integers without a fraction)."""
    text = repr(v)
    if text.endswith(".0"):
        return text[:-2]
    if text[-1] in "nf":  # nan, inf, -inf
        return {"nan": "NaN", "inf": "+Inf", "-inf": "-Inf"}[text]
    return text
