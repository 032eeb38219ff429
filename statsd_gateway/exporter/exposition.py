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

from statsd_gateway.exporter.state import QUANTILES, Scrape
from statsd_gateway.model import MetricType, SeriesKey
from statsd_gateway.promql.names import escape

TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
_KINDS = {
    MetricType.COUNTER: "counter", MetricType.GAUGE: "gauge", MetricType.SET: "gauge",
    MetricType.TIMING: "summary", MetricType.HISTOGRAM: "summary",
    MetricType.DISTRIBUTION: "summary",
}  # fmt: skip
_SCALE = {MetricType.TIMING: 1000.0}  # milliseconds → seconds
assert QUANTILES == (0.5, 0.9, 0.99)  # _samples writes them out
_NO_QUANTILES = (math.nan,) * len(QUANTILES)


def wants_openmetrics(accept: str) -> bool:
    return "application/openmetrics-text" in accept


def render(scrape: Scrape, *, openmetrics: bool, dropped: Counter[str]) -> bytes:
    """The exposition; what had to be left out is added to `dropped` by reason."""
    lines: list[str] = []
    for family, kind, members in _families(scrape, dropped):
        name = family.removesuffix("_total") if openmetrics and kind == "counter" else family
        first = members[0][1]
        lines.append(f"# HELP {name} StatsD {scrape.series[first].type.value} {first[1]}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, key in members:
            lines.extend(_samples(name, kind, labels, key, scrape, openmetrics))
    if openmetrics:
        lines.append("# EOF")
    return ("\n".join(lines) + "\n").encode("utf-8")


def _families(
    scrape: Scrape, dropped: Counter[str]
) -> Iterator[tuple[str, str, list[tuple[str, SeriesKey]]]]:
    """(family name, kind, [(rendered labels, series key)]) by family name."""
    by_family: dict[str, tuple[str, str, list[tuple[str, SeriesKey]]]] = {}
    seen: dict[str, set[str]] = {}
    for key in sorted(scrape.series, key=lambda k: (k[1], k[2])):
        state = scrape.series[key]
        raw_name = key[1]
        family = _escape(raw_name)
        kind = _KINDS[state.type]
        have = by_family.get(family)
        if have is not None and have[0] != raw_name:
            dropped["name_clash"] += 1
            continue
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
    q = scrape.quantiles.get(key, _NO_QUANTILES)
    head = f"{name}{{{labels},quantile=" if labels else f"{name}{{quantile="
    return [
        f'{head}"0.5"}} {_number(q[0] / scale)}',
        f'{head}"0.9"}} {_number(q[1] / scale)}',
        f'{head}"0.99"}} {_number(q[2] / scale)}',
        f"{name}_sum{braces} {_number(state.total / scale)}",
        f"{name}_count{braces} {_number(state.count)}",
    ]


def _number(v: float) -> str:
    """Go's shortest float text, which Prometheus parses (integers without a fraction)."""
    text = repr(v)
    if text.endswith(".0"):
        return text[:-2]
    if text[-1] in "nf":  # nan, inf, -inf
        return {"nan": "NaN", "inf": "+Inf", "-inf": "-Inf"}[text]
    return text
