"""A scraped series that leaves and comes back: once its rule's `ttl` has passed without a line,
or when it is made again with another type, it restarts from nothing, its buckets with its
count (in the text format and in the protobuf one)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from statsd_gateway import sketch
from statsd_gateway.exporter.exposition import render
from statsd_gateway.exporter.protobuf import render_protobuf
from statsd_gateway.exporter.state import ScrapeState
from statsd_gateway.mapping_file import parse_mapping_file
from statsd_gateway.model import BucketRow, MetricType, RowBatch
from tests.conftest import ADMIN_KEY, T0, ManualClock, make_config, running, send_udp, wait_for_udp
from tests.protobuf_scrape import PROMETHEUS_PROTOBUF_ACCEPT, Histogram, decode, scrape_bytes
from tests.test_exporter import samples, scrape

RULES = """
mappings:
  - match: "h"
    name: "h"
    observer_type: histogram
    histogram_options: {buckets: [1, 10]}
    ttl: 60s
"""


def text_buckets(text: str) -> dict[str, float]:
    """h's buckets (le → cumulative count) and its count, from the text format."""
    got = samples(text)
    buckets = {le: got[f'h_bucket{{le="{le}"}}'] for le in ("1", "10", "+Inf")}
    return {**buckets, "count": got["h_count"]}


def assert_only(h: Histogram, le_1: float, le_10: float, count: float) -> None:
    """A protobuf histogram whose classic and native parts hold only what the test expects."""
    assert h.count == count and h.buckets == {1: le_1, 10: le_10}
    assert h.schema == 6  # the native part made: its buckets add up to its count
    assert sum(h.positive.values()) + sum(h.negative.values()) + h.zero_count == count


@pytest.mark.asyncio
@pytest.mark.parametrize("scraped", [True, False], ids=["scraped_while_quiet", "no_scrape"])
async def test_a_histogram_back_after_its_ttl_counts_only_its_new_observations(
    tmp_path: Path, clock: ManualClock, scraped: bool
) -> None:
    """Past its ttl a series starts from nothing, whether a scrape saw it go or none ran while
    it was quiet (Prometheus down, or scraping less often than the ttl)."""
    rules = tmp_path / "mapping.yml"
    rules.write_text(RULES)
    config = make_config(
        tmp_path,
        exporter={"enabled": True, "listen": "127.0.0.1:0"},
        statsd={"mapping_file": str(rules)},
    )
    async with running(config, clock) as (gw, _):
        send_udp(gw, b"h:0.5|h\nh:5|h\nh:5|h")
        await wait_for_udp(gw, 1)
        clock.advance(10)
        await gw.flusher.flush()
        if scraped:
            want = {"1": 1, "10": 3, "+Inf": 3, "count": 3}
            assert text_buckets((await scrape(gw))[1]) == want
        clock.advance(61 if scraped else 300)  # past the ttl of 60 s without a line
        await gw.flusher.flush()
        if scraped:  # a scrape forgets it
            assert "h_count" not in samples((await scrape(gw))[1])
        send_udp(gw, b"h:0.5|h")
        await wait_for_udp(gw, 2)
        clock.advance(10)
        await gw.flusher.flush()
        text = (await scrape(gw))[1]
        _, body = await scrape_bytes(gw, PROMETHEUS_PROTOBUF_ACCEPT)
    assert text_buckets(text) == {"1": 1, "10": 1, "+Inf": 1, "count": 1}
    [metric] = decode(body)["h"][2]
    assert metric.histogram is not None
    assert_only(metric.histogram, 1, 1, 1)
    assert not gw.telemetry.exporter_dropped


KEY = ("default", "h", ())


def rows(mtype: MetricType, values: list[float]) -> RowBatch:
    bins = sketch.bin_values(values) if values else None
    row = BucketRow(0.0, KEY, mtype, float(len(values)), sum(values), None, None, sketch=bins)
    return RowBatch.from_rows([row])


@pytest.mark.parametrize(
    "between",
    [
        [MetricType.TIMING],  # another observer: its values in ms, the old ones not
        [MetricType.COUNTER, MetricType.HISTOGRAM],  # not an observer, then one again
    ],
    ids=["as_timing", "counter_then_histogram"],
)
def test_a_histogram_made_again_with_another_type_counts_only_its_new_observations(
    clock: ManualClock, between: list[MetricType]
) -> None:
    options = parse_mapping_file(RULES).options[0]
    state = ScrapeState("default", clock, options_of=lambda key: options)
    state.add(rows(MetricType.HISTOGRAM, [0.5, 5.0, 5.0]))
    for mtype in between:
        clock.advance(10)
        state.add(rows(mtype, [] if mtype is MetricType.COUNTER else [500.0]))
    dropped: Counter[str] = Counter()
    text = render(state.snapshot(), openmetrics=False, dropped=dropped).decode()
    body = render_protobuf(state.snapshot(), dropped=dropped)
    # 500 ms is 0.5 s; 500 as a histogram's value is past the last bound.
    le_1 = 1 if between[-1] is MetricType.TIMING else 0
    assert text_buckets(text) == {"1": le_1, "10": le_1, "+Inf": 1, "count": 1}
    [metric] = decode(body)["h"][2]
    assert metric.histogram is not None
    assert_only(metric.histogram, le_1, le_1, 1)
    assert not dropped


@pytest.mark.parametrize("how", ["expired", "remade"])
@pytest.mark.parametrize("slot", ["open", "closed"])
def test_a_summary_back_has_the_quantiles_of_its_new_observations_only(
    clock: ManualClock, how: str, slot: str
) -> None:
    """Its old sketches gone from the slot under way, or (250 s on, two 2-minute slots later)
    from a closed slot and the closed slots' merge."""
    options = parse_mapping_file("mappings: [{match: h, name: h, ttl: 60s}]").options[0]
    state = ScrapeState("default", clock, options_of=lambda key: options)
    state.add(rows(MetricType.TIMING, [1000.0] * 9))  # within the quantiles' 10 minutes
    clock.advance(250 if slot == "closed" else 61 if how == "expired" else 10)
    if how == "expired":
        assert KEY not in state.snapshot().series
    state.add(rows(MetricType.TIMING if how == "expired" else MetricType.HISTOGRAM, [10.0]))
    scrape = state.snapshot()
    assert scrape.series[KEY].count == 1
    assert scrape.quantiles[KEY] == pytest.approx((10.0,) * 3, rel=0.01)


def test_a_type_change_within_one_flush_keeps_only_the_new_type_rows(clock: ManualClock) -> None:
    options = parse_mapping_file(RULES).options[0]
    state = ScrapeState("default", clock, options_of=lambda key: options)
    old, new = rows(MetricType.HISTOGRAM, [0.5, 5.0, 5.0]), rows(MetricType.TIMING, [500.0])
    state.add(RowBatch.from_rows(old.rows() + new.rows()))
    dropped: Counter[str] = Counter()
    text = render(state.snapshot(), openmetrics=False, dropped=dropped).decode()
    assert text_buckets(text) == {"1": 1, "10": 1, "+Inf": 1, "count": 1}


@pytest.mark.asyncio
async def test_a_metric_deleted_through_the_api_leaves_the_scrape(
    tmp_path: Path, clock: ManualClock
) -> None:
    """DELETE /v1/metrics takes the metric's series off the scrape (they are gone from the
    store and from memory); sent again, it counts from nothing. Other metrics stay."""
    config = make_config(tmp_path, exporter={"enabled": True, "listen": "127.0.0.1:0"})
    async with running(config, clock) as (gw, api):
        send_udp(gw, b"jobs:3|c|#host:a\njobs:4|c|#host:b\nkept:1|c")
        await wait_for_udp(gw, 1)
        clock.advance(10)
        await gw.flusher.flush()
        got = samples((await scrape(gw))[1])
        assert (got['jobs{host="a"}'], got['jobs{host="b"}'], got["kept"]) == (3, 4, 1)
        status, body = await api.request(
            "DELETE", "/v1/metrics", params={"name": "jobs"}, key=ADMIN_KEY
        )
        assert status == 200, body
        got = samples((await scrape(gw))[1])
        assert not [name for name in got if name.startswith("jobs")] and got["kept"] == 1
        send_udp(gw, b"jobs:2|c|#host:a")
        await wait_for_udp(gw, 2)
        clock.advance(10)
        await gw.flusher.flush()
        got = samples((await scrape(gw))[1])
        assert got['jobs{host="a"}'] == 2 and 'jobs{host="b"}' not in got


@pytest.mark.asyncio
async def test_a_series_the_store_forgets_as_stale_leaves_the_scrape(
    tmp_path: Path, clock: ManualClock
) -> None:
    """Quiet until no tier holds a bucket of it, a series is forgotten by retention: it leaves
    the scrape then, not before (as statsd_exporter keeps it, without a ttl)."""
    tiers = [
        {"resolution": "10s", "retention": "2m"},
        {"resolution": "1m", "retention": "1h"},
        {"resolution": "1h", "retention": "3h"},
    ]
    config = make_config(
        tmp_path, storage={"tiers": tiers}, exporter={"enabled": True, "listen": "127.0.0.1:0"}
    )
    async with running(config, clock) as (gw, _):
        assert gw.retention is not None
        send_udp(gw, b"gone:5|c\nkept:1|c")
        await wait_for_udp(gw, 1)
        clock.advance(10)
        await gw.flusher.flush()
        clock.advance(2 * 3600)
        await gw.flusher.flush()
        await gw.retention.run_once(force=True)  # its hour is still kept: known, on the scrape
        assert samples((await scrape(gw))[1])["gone"] == 5
        # Here its rows are never sealed: a sealed hour would keep it until its day's chunk goes.
        for hour in range(2, 2 + 28):
            clock.advance(3600)
            send_udp(gw, b"kept:1|c")
            await wait_for_udp(gw, hour)
            await gw.flusher.flush()
            await gw.retention.run_once(force=True)
            if "gone" not in samples((await scrape(gw))[1]):
                break
        got = samples((await scrape(gw))[1])
        assert "gone" not in got and got["kept"] == hour
        assert clock.t - T0 > 3 * 3600  # not before its hour aged out of the 1 h tier
