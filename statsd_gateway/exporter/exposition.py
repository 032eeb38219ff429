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

import numpy as np

from statsd_gateway.exporter.families import (
    LabelPairs,
    Member,
    classic_buckets,
    families,
    help_text,
    scale_of,
)
from statsd_gateway.exporter.state import Scrape, SeriesState
from statsd_gateway.float_text import texts_of
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
        lines.extend(_family_samples(name, kind, members, scrape, openmetrics))
    if openmetrics:
        lines.append("# EOF")
    return ("\n".join(lines) + "\n").encode("utf-8")


def _family_samples(
    name: str, kind: str, members: list[Member], scrape: Scrape, openmetrics: bool
) -> list[str]:
    """The sample lines of one family's members, in order. The numbers of all of them are
    written at once (_numbers): 10,000 summaries are 50,000 numbers."""
    states = [scrape.series[key] for _, key in members]
    braces = [f"{{{_rendered(labels)}}}" if labels else "" for labels, _ in members]
    if kind == "counter":
        head = name + ("_total" if openmetrics else "")
        values = _numbers([s.total for s in states])
        return [f"{head}{b} {v}" for b, v in zip(braces, values, strict=True)]
    if kind == "gauge":
        values = _numbers([s.value for s in states])
        return [f"{name}{b} {v}" for b, v in zip(braces, values, strict=True)]
    if kind == "histogram":
        out: list[str] = []
        for (labels, key), state, b in zip(members, states, braces, strict=True):
            out += _histogram_samples(name, _rendered(labels), key, state, scrape)
            out += _tail(name, b, state)
        return out
    # Summaries: per member its quantiles (its rule's), then _sum and _count.
    heads = [f"{name}{{{b[1:-1]},quantile=" if b else f"{name}{{quantile=" for b in braces]
    rules = {s.quantiles for s in states}
    if len(rules) == 1:  # the usual case: every member with the same quantiles, at once
        (qs,) = rules
        nan = (math.nan,) * len(qs)
        grid = np.array([scrape.quantiles.get(key, nan) for _, key in members], dtype=np.float64)
        scale = np.array([scale_of(s) for s in states], dtype=np.float64)
        grid = np.column_stack(
            [grid.reshape(len(members), len(qs)) / scale[:, None],
             np.array([s.total for s in states]) / scale, [s.count for s in states]]
        )  # fmt: skip
        texts = _numbers(grid.ravel().tolist())
        k = len(qs) + 2
        tags = [f'"{_number(q)}"}} ' for q in qs]
        return [
            line
            for i, (head, b) in enumerate(zip(heads, braces, strict=True))
            for line in (
                *(head + tag + texts[i * k + j] for j, tag in enumerate(tags)),
                f"{name}_sum{b} {texts[i * k + k - 2]}",
                f"{name}_count{b} {texts[i * k + k - 1]}",
            )
        ]
    lines: list[str] = []  # members with quantiles of their own: one at a time
    for (_, key), state, head, b in zip(members, states, heads, braces, strict=True):
        unit = scale_of(state)
        found = scrape.quantiles.get(key, (math.nan,) * len(state.quantiles))
        written = _numbers([*(v / unit for v in found), state.total / unit, state.count])
        for q, text in zip(state.quantiles, written, strict=False):
            lines.append(f'{head}"{_number(q)}"}} {text}')
        lines.append(f"{name}_sum{b} {written[-2]}")
        lines.append(f"{name}_count{b} {written[-1]}")
    return lines


def _tail(name: str, braces: str, state: SeriesState) -> list[str]:
    scale = scale_of(state)
    return [
        f"{name}_sum{braces} {_number(state.total / scale)}",
        f"{name}_count{braces} {_number(state.count)}",
    ]


def _histogram_samples(
    name: str, labels: str, key: SeriesKey, state: SeriesState, scrape: Scrape
) -> list[str]:
    head = f"{name}_bucket{{{labels}," if labels else f"{name}_bucket{{"
    buckets = classic_buckets(state, scrape.since_start.get(key), scale_of(state))
    out = [f'{head}le="{_number(le)}"}} {_number(c)}' for le, c in buckets]
    out.append(f'{head}le="+Inf"}} {_number(state.count)}')
    return out


@functools.lru_cache(maxsize=1 << 18)
def _rendered(labels: LabelPairs) -> str:
    return ",".join(f'{k}="{_escaped(v)}"' for k, v in labels)


def _escaped(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _numbers(values: list[float]) -> list[str]:
    """_number of each value, the same strings, written at once (float_text); also through
    _number, the values repr writes with an exponent (|v| < 1e-4 or >= 1e16) and JSON not."""
    size = np.abs(np.asarray(values, dtype=np.float64))
    with np.errstate(invalid="ignore"):
        odd = ~((size >= 1e-4) & (size < 1e16)) & (size != 0)  # NaN: neither, so odd
    return texts_of(values, _number, also=np.flatnonzero(odd).tolist())


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
