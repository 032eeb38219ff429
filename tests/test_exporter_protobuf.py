"""The scrape in the protobuf format a Prometheus with native histograms asks for: read back
with the tests' own decoder (tests/protobuf_scrape.py, not the exporter's encoder), and checked
against the points sent and against the text format's answer for the same scrape."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ddsketch.mapping import LogarithmicMapping

from statsd_gateway import sketch
from statsd_gateway.exporter.protobuf import render_protobuf, wants_protobuf
from statsd_gateway.exporter.state import Scrape, SeriesState
from statsd_gateway.mapping_file import parse_mapping_file
from statsd_gateway.model import MetricType
from tests.conftest import ManualClock, make_config, running, send_udp, wait_for_udp
from tests.protobuf_scrape import (
    NEWER_PROMETHEUS_ACCEPT,
    PROMETHEUS_PROTOBUF_ACCEPT,
    PROTOBUF_TYPE,
    decode,
    scrape_bytes,
)
from tests.test_exporter import PROMETHEUS_ACCEPT, samples, scrape

pytestmark = pytest.mark.asyncio

# ---- What the points sent should give, computed here from the DDSketch mapping.

MAPPING = LogarithmicMapping(0.01)
ALPHA = 0.01
# A quantile Prometheus interpolates in a native bucket of schema 6 is within this of the
# observation of its rank (native_histogram.py).
NATIVE_BOUND = (1 + ALPHA) * 2 ** (1 / 64) - 1


def native_buckets(values: list[float], scale: float) -> tuple[Counter[int], Counter[int], int]:
    """(positive, negative) schema-6 bucket counts and the zero count: each value's DDSketch
    bin centre ÷ scale, in the bucket (2^((i-1)/64), 2^(i/64)]."""
    pos: Counter[int] = Counter()
    neg: Counter[int] = Counter()
    zero = 0
    for v in values:
        if abs(v) <= MAPPING.min_possible:
            zero += 1
            continue
        centre = MAPPING.value(MAPPING.key(abs(v))) / scale
        (pos if v > 0 else neg)[math.ceil(math.log2(centre) * 64)] += 1
    return pos, neg, zero


RULES = """
mappings:
  - match: "api.*.latency"
    name: "api_latency"
    labels: {endpoint: "$1"}
    observer_type: histogram
    histogram_options: {buckets: [0.01, 0.1, 1]}
    help: "API latency by endpoint"
  - match: "temps"
    name: "temps"
    observer_type: histogram
    histogram_options: {buckets: [-10, 0, 10]}
"""


def mapped_config(tmp_path: Path) -> Any:
    rules = tmp_path / "mapping.yml"
    rules.write_text(RULES)
    return make_config(
        tmp_path,
        exporter={"enabled": True, "listen": "127.0.0.1:0"},
        statsd={"mapping_file": str(rules)},
    )


async def test_every_family_in_protobuf_with_native_buckets_from_the_points_sent(
    tmp_path: Path, clock: ManualClock
) -> None:
    latencies = [float(v) for v in range(1, 301)] + [0.0, 2500.0]  # ms
    temps = [-12.5, -3.0, -3.0, 0.0, 4.0, 4.0, 4.1, 37.0]
    async with running(mapped_config(tmp_path), clock) as (gw, _):
        lines = [f"api.home.latency:{v:g}|ms" for v in latencies]
        lines += [f"temps:{v:g}|h" for v in temps]
        lines += ["hits:3|c|#host:a", "hits:4|c|#host:b", "temp.c:-4.25|g", "lat:12|ms"]
        lines += [f"users:u{i}|s" for i in range(5)] + ['odd:1|c|#path:x"y\\z']
        for at in range(0, len(lines), 40):
            send_udp(gw, "\n".join(lines[at : at + 40]).encode())
        await wait_for_udp(gw, (len(lines) + 39) // 40)
        clock.advance(10)
        await gw.flusher.flush()
        content_type, body = await scrape_bytes(gw, PROMETHEUS_PROTOBUF_ACCEPT)
        _, text = await scrape(gw)
    assert content_type == PROTOBUF_TYPE
    got = decode(body)
    assert sorted(got) == ["api_latency", "hits", "lat", "odd", "temp_c", "temps", "users"]
    text_samples = samples(text)

    kind, help_, [a, b] = got["hits"]
    assert kind == "counter" and help_ == "StatsD counter hits"
    assert (a.labels, a.value, b.labels, b.value) == ({"host": "a"}, 3, {"host": "b"}, 4)
    assert got["odd"][2][0].labels == {"path": 'x"y\\z'}  # raw, not escaped as in text
    assert got["temp_c"][0] == "gauge" and got["temp_c"][2][0].value == -4.25
    assert got["users"][0] == "gauge" and got["users"][2][0].value == 5

    kind, _, [lat] = got["lat"]
    assert kind == "summary" and lat.count == 1 and lat.sum == 0.012
    assert lat.quantiles == {q: text_samples[f'lat{{quantile="{q}"}}'] for q in (0.5, 0.9, 0.99)}
    assert math.isclose(lat.quantiles[0.5], 0.012, rel_tol=ALPHA)

    kind, help_, [api] = got["api_latency"]
    assert (kind, help_, api.labels) == (
        "histogram",
        "API latency by endpoint",
        {"endpoint": "home"},
    )
    h = api.histogram
    assert h is not None and not h.count_is_float and not h.float_buckets
    assert h.count == len(latencies) and h.sum == pytest.approx(sum(latencies) / 1000)
    # The classic buckets, as the text format has them.
    for le in (0.01, 0.1, 1):
        assert h.buckets[le] == text_samples[f'api_latency_bucket{{endpoint="home",le="{le:g}"}}']
    # The native buckets: schema 6, each value in the bucket of its bin's centre (in seconds).
    pos, neg, zero = native_buckets(latencies, 1000.0)
    assert h.schema == 6
    assert (h.positive, h.negative, h.zero_count) == (dict(pos), dict(neg), zero) and zero == 1
    assert h.zero_threshold == MAPPING.min_possible / 1000  # what the sketch counts as zero
    for v in (v for v in latencies if v > 0):  # each one's bucket is within 1 % of it
        i = math.ceil(math.log2(MAPPING.value(MAPPING.key(v)) / 1000) * 64)
        lower, upper = 2 ** ((i - 1) / 64), 2 ** (i / 64)
        assert lower * (1 - ALPHA) < v / 1000 <= upper * (1 + ALPHA)

    kind, _, [t] = got["temps"]  # negative values, a zero, unit as sent
    assert t.histogram is not None
    pos, neg, zero = native_buckets(temps, 1.0)
    assert (t.histogram.positive, t.histogram.negative) == (dict(pos), dict(neg))
    assert t.histogram.zero_count == zero == 1
    assert t.histogram.zero_threshold == MAPPING.min_possible
    assert t.histogram.buckets == {-10: 1, 0: 4, 10: 7}


@pytest.mark.parametrize(
    ("accept", "protobuf"),
    [
        (PROMETHEUS_PROTOBUF_ACCEPT, True),
        (NEWER_PROMETHEUS_ACCEPT, True),
        (PROMETHEUS_ACCEPT, False),  # a Prometheus without native histograms
        ("text/plain;version=0.0.4;q=0.9," + NEWER_PROMETHEUS_ACCEPT, False),  # text preferred
        ("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;"
         "encoding=text", False),  # the text encoding of protobuf is not served
        ("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;"
         "encoding=delimited;q=0", False),
        ("*/*", False),
    ],
)  # fmt: skip
async def test_protobuf_only_when_the_scrape_prefers_it(
    tmp_path: Path, clock: ManualClock, accept: str, protobuf: bool
) -> None:
    config = make_config(
        tmp_path, exporter={"enabled": True, "listen": "127.0.0.1:0", "openmetrics": True}
    )
    async with running(config, clock) as (gw, api):
        status, _ = await api.batch([{"name": "jobs.done", "type": "counter", "value": 2}])
        assert status == 200
        clock.advance(10)
        await gw.flusher.flush()
        content_type, body = await scrape_bytes(gw, accept)
    if protobuf:
        assert content_type == PROTOBUF_TYPE
        assert decode(body)["jobs_done"][2][0].value == 2
    else:
        assert not content_type.startswith("application/vnd.google.protobuf")
        assert b"jobs_done" in body


PB = "application/vnd.google.protobuf"
PB_DELIMITED = f"{PB};proto=io.prometheus.client.MetricFamily;encoding=delimited"


@pytest.mark.parametrize(
    ("accept", "protobuf"),
    [
        ("", False),  # no Accept header: the text format
        (f"text/plain;version=0.0.4;q=0.5,{PB_DELIMITED};q=0.5", False),  # a tie: the first
        (f"{PB_DELIMITED};q=0.5,text/plain;version=0.0.4;q=0.5", True),
        (f"{PB};encoding=delimited;proto=io.prometheus.client.MetricFamily", True),  # any order
        ("Application/Vnd.Google.Protobuf; PROTO=io.prometheus.client.MetricFamily; "
         "Encoding=delimited", True),  # media type and parameter names in any case
        (f'{PB};proto="io.prometheus.client.MetricFamily";encoding="delimited"', True),  # quoted
        (f"{PB};proto=io.prometheus.client.MetricFamily", False),  # no encoding: not delimited
        (f"{PB_DELIMITED};q=high,text/plain", False),  # a malformed q asks for nothing
    ],
)  # fmt: skip
async def test_negotiation_as_the_accept_header_says(accept: str, protobuf: bool) -> None:
    assert wants_protobuf(accept) is protobuf


async def test_weighted_counts_are_float_histograms_and_rounded_summary_counts(
    tmp_path: Path, clock: ManualClock
) -> None:
    async with running(mapped_config(tmp_path), clock) as (gw, _):
        lines = [f"api.home.latency:{v}|ms|@0.3" for v in (5, 50, 50)]  # each weighs 1/0.3
        lines += ["lat:12|ms|@0.3", "whole:12|ms|@0.5", "ok:1|c"]
        send_udp(gw, "\n".join(lines).encode())
        await wait_for_udp(gw, 1)
        clock.advance(10)
        await gw.flusher.flush()
        _, body = await scrape_bytes(gw, PROMETHEUS_PROTOBUF_ACCEPT)
        _, text = await scrape(gw)
        send_udp(gw, b"lat:12|ms|@0.3\nlat:12|ms|@0.3")
        await wait_for_udp(gw, 2)
        clock.advance(10)
        await gw.flusher.flush()
        _, later = await scrape_bytes(gw, PROMETHEUS_PROTOBUF_ACCEPT)
    got = decode(body)
    # A summary's count is an integer in the protobuf format: 1/0.3 is served as 3, its sum
    # and quantiles as the text format has them.
    text_samples = samples(text)
    [lat] = got["lat"][2]
    assert text_samples["lat_count"] == pytest.approx(1 / 0.3) and lat.count == 3
    assert lat.sum == text_samples["lat_sum"]
    assert lat.quantiles == {q: text_samples[f'lat{{quantile="{q}"}}'] for q in (0.5, 0.9, 0.99)}
    assert decode(later)["lat"][2][0].count == 10  # 3/0.3, once the float sum is rounded
    assert not gw.telemetry.exporter_dropped
    assert got["whole"][2][0].count == 2 and got["ok"][2][0].value == 1
    h = got["api_latency"][2][0].histogram
    assert h is not None and h.count_is_float and h.float_buckets
    weight = 1 / 0.3
    assert h.count == pytest.approx(3 * weight, rel=1e-12)
    pos, _, _ = native_buckets([5.0, 50.0, 50.0], 1000.0)
    assert h.positive.keys() == pos.keys()
    for i, n in pos.items():
        assert h.positive[i] == pytest.approx(n * weight, rel=1e-12)
    assert sum(h.positive.values()) <= h.count  # what Prometheus checks
    assert h.buckets[0.01] == pytest.approx(weight) and h.buckets[1] == pytest.approx(3 * weight)


async def test_a_histogram_whose_buckets_miss_its_count_is_left_out_first_or_later() -> None:
    # A classic-only member would make Prometheus (up to 3.2: the family's first metric
    # decides) store the family wrong or refuse the scrape: the series is left out.
    rules = parse_mapping_file(
        "mappings: [{match: h, name: h, observer_type: histogram,"
        " histogram_options: {buckets: [1, 10]}}]"
    )
    values = np.array([0.5, 5.0, 5.0])
    bins = sketch.bin_flat(values, None, np.array([0, 3])).bins(0)
    series, since_start = {}, {}
    # "a" and "c" say fewer than their bins have: the first member of the family, and one
    # after a healthy member.
    for host, count in (("a", 2.0), ("b", 3.0), ("c", 4.0), ("d", 3.0)):
        key = ("default", "h", (("host", host),))
        series[key] = SeriesState(MetricType.HISTOGRAM, 0.0, count, 10.5, options=rules.options[0])
        since_start[key] = bins
    dropped: Counter[str] = Counter()
    kind, _, members = decode(render_protobuf(Scrape(series, {}, since_start), dropped=dropped))[
        "h"
    ]
    assert kind == "histogram" and [m.labels["host"] for m in members] == ["b", "d"]
    pos, _, _ = native_buckets(list(values), 1.0)
    for m in members:
        h = m.histogram
        assert h is not None and h.schema == 6 and not h.count_is_float
        assert (h.count, h.sum, h.buckets) == (3, 10.5, {1: 1, 10: 3})
        assert h.positive == dict(pos) and h.zero_count == 0
    assert dropped == Counter({"native_count_mismatch": 2})


async def test_a_family_whose_every_histogram_misses_its_count_is_not_served() -> None:
    rules = parse_mapping_file("mappings: [{match: h, name: h, observer_type: histogram}]")
    key = ("default", "h", ())
    state = SeriesState(MetricType.HISTOGRAM, 0.0, 1.0, 1.0, options=rules.options[0])
    dropped: Counter[str] = Counter()
    assert render_protobuf(Scrape({key: state}, {}, {}), dropped=dropped) == b""
    assert dropped == Counter({"native_count_mismatch": 1})


async def test_a_summary_count_is_rounded_half_up_and_never_shrinks_as_it_grows() -> None:
    key = ("default", "lat", ())
    edges = {0.49999999999999994, 2.0**52 + 1, 2.0**52 + 0.5, 2.0**53}  # exact, not floor(c+.5)
    counts = sorted(
        {k / 0.3 for k in range(1, 40)} | {0.0, 0.25, 0.5, 1.5, 2.5, 2.75, 1e17} | edges
    )
    served = []
    for count in counts:
        state = SeriesState(MetricType.TIMING, 0.0, count, 12.0 * count)
        dropped: Counter[str] = Counter()
        got = decode(render_protobuf(Scrape({key: state}, {}, {}), dropped=dropped))
        assert not dropped
        served.append(got["lat"][2][0].count)
    assert all(abs(n - c) <= 0.5 for n, c in zip(served, counts, strict=True))
    assert served == sorted(served)  # no decrease: Prometheus would see a counter reset
    assert served[counts.index(0.5)] == 1 and served[counts.index(2.5)] == 3  # half up
    assert served[counts.index(0.49999999999999994)] == 0
    assert served[counts.index(2.0**52 + 1)] == 2**52 + 1
