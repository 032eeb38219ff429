"""The text exposition writes a family's numbers in one pass (exposition._numbers, the
summaries' fast path): the same text as writing each number alone (_number), for any float
and for summaries with the default quantiles or their own."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from statsd_gateway import sketch
from statsd_gateway.exporter.exposition import _number, _numbers, render
from statsd_gateway.exporter.state import ScrapeState
from statsd_gateway.mapping_file import parse_mapping_file
from statsd_gateway.model import BucketRow, MetricType, RowBatch

RULES = parse_mapping_file(
    'mappings:\n  - {match: "own.*", name: "own_$1", quantiles: [{quantile: 0.25, error: 0.01}]}\n'
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.floats(width=64), max_size=60))
def test_numbers_in_one_pass_are_each_number_alone(values: list[float]) -> None:
    assert _numbers(values) == [_number(v) for v in values]


def test_numbers_at_the_edges_of_reprs_exponents() -> None:
    edges = [0.0, -0.0, 1e-4, 9.999999999999999e-05, -1e-4, 1e16, 9999999999999998.0, 1e15]
    edges += [5e-324, 1.7976931348623157e308, math.nan, math.inf, -math.inf, 0.1, 2.0, 1e22]
    assert _numbers(edges) == [_number(v) for v in edges]


def _summary_lines(name: str, labels: str, qs: tuple[float, ...], values: list[float],
                   total: float, count: float) -> list[str]:  # fmt: skip
    """A summary's lines as written one number at a time."""
    head = f"{name}{{{labels},quantile=" if labels else f"{name}{{quantile="
    braces = f"{{{labels}}}" if labels else ""
    return [
        *(f'{head}"{_number(q)}"}} {_number(v)}' for q, v in zip(qs, values, strict=True)),
        f"{name}_sum{braces} {_number(total)}",
        f"{name}_count{braces} {_number(count)}",
    ]


def test_summaries_with_shared_or_their_own_quantiles_are_written_alike() -> None:
    now = [1_800_000_000.0]

    def options_of(key: tuple[str, str, tuple[tuple[str, str], ...]]) -> object:
        # "mixed": one family whose members have different rules (only a rule callback that
        # looks at tags makes one; mapping rules match names).
        own = key[1].startswith("own.") or (key[1] == "mixed" and key[2] == (("host", "b"),))
        return RULES.options[0] if own else None

    state = ScrapeState("default", lambda: now[0], options_of=options_of)  # type: ignore[arg-type]
    rows = []
    for name in ("lat", "own.lat", "mixed"):
        for host, values in (("a", [3.0, 70.5, 0.004]), ("b", [1e-7, 2.5e17])):
            flat = sketch.bin_flat(np.array(values), None, np.array([0, len(values)]))
            key = ("default", name, (("host", host),))
            n, total = float(len(values)), sum(values)
            bins = flat.bins(0)
            rows.append(
                BucketRow(now[0], key, MetricType.TIMING, n, total, min(values), max(values),
                          sketch=bins)
            )  # fmt: skip
    state.add(RowBatch.from_rows(rows))
    scrape = state.snapshot()
    text = render(scrape, openmetrics=False, dropped=Counter()).decode().splitlines()
    default, own = (0.5, 0.9, 0.99), (0.25,)
    for family, name, rules in (
        ("lat", "lat", (default, default)),
        ("own_lat", "own.lat", (own, own)),
        ("mixed", "mixed", (default, own)),
    ):
        want = []
        for host, qs in zip(("a", "b"), rules, strict=True):
            key = ("default", name, (("host", host),))
            s = scrape.series[key]
            quantiles = [v / 1000 for v in scrape.quantiles[key]]
            want += _summary_lines(family, f'host="{host}"', qs, quantiles, s.total / 1000, s.count)
        got = [line for line in text if line.startswith(family) and not line.startswith("#")]
        assert got == want
