"""A Scrape (state.py) → the Prometheus text exposition format 0.0.4, or OpenMetrics 1.0.0
when the scraper asks for it, as statsd_exporter would expose the same StatsD traffic.

Which series are shown, under which names and labels, and what is left out (counted by
reason) is families.py's, shared with the protobuf format (protobuf.py); this module writes
them as text. Names are escaped as PromQL sees them (promql/names.py); label values and HELP
are escaped as the text formats escape them.
"""

from __future__ import annotations

import functools
import math
from collections import Counter

from statsd_gateway.exporter.families import (
    LabelPairs,
    classic_buckets,
    families,
    help_text,
    scale_of,
)
from statsd_gateway.exporter.state import Scrape
from statsd_gateway.model import SeriesKey

TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def wants_openmetrics(accept: str) -> bool:
    return "application/openmetrics-text" in accept


def render(scrape: Scrape, *, openmetrics: bool, dropped: Counter[str]) -> bytes:
    """The exposition; what had to be left out is added to `dropped` by reason."""
    lines: list[str] = []
    for family, kind, members in families(scrape, dropped, openmetrics):
        name = family.removesuffix("_total") if openmetrics and kind == "counter" else family
        lines.append(f"# HELP {name} {_help(help_text(scrape, members))}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, key in members:
            lines.extend(_samples(name, kind, _rendered(labels), key, scrape, openmetrics))
    if openmetrics:
        lines.append("# EOF")
    return ("\n".join(lines) + "\n").encode("utf-8")


@functools.lru_cache(maxsize=1 << 18)
def _rendered(labels: LabelPairs) -> str:
    return ",".join(f'{k}="{_escaped(v)}"' for k, v in labels)


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
    scale = scale_of(state)
    tail = [
        f"{name}_sum{braces} {_number(state.total / scale)}",
        f"{name}_count{braces} {_number(state.count)}",
    ]
    if kind == "histogram":
        head = f"{name}_bucket{{{labels}," if labels else f"{name}_bucket{{"
        buckets = classic_buckets(state, scrape.since_start.get(key), scale)
        out = [f'{head}le="{_number(le)}"}} {_number(c)}' for le, c in buckets]
        out.append(f'{head}le="+Inf"}} {_number(state.count)}')
        return out + tail
    qs = state.quantiles
    values = scrape.quantiles.get(key, (math.nan,) * len(qs))
    head = f"{name}{{{labels},quantile=" if labels else f"{name}{{quantile="
    return [
        f'{head}"{_number(q)}"}} {_number(v / scale)}' for q, v in zip(qs, values, strict=True)
    ] + tail


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
