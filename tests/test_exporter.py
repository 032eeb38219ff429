"""The statsd_exporter-compatible scrape (exporter.listen): what a Prometheus scraping it sees,
checked with promtool's own linter (a real Prometheus server scrapes it in
test_exporter_prometheus.py)."""

from __future__ import annotations

import asyncio
import math
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from statsd_gateway.config import Config
from statsd_gateway.gateway import Gateway
from tests.conftest import (
    Api,
    ManualClock,
    make_config,
    missing_prerequisite,
    running,
    send_udp,
    wait_for_udp,
)

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def served(tmp_path: Path, clock: ManualClock) -> AsyncIterator[tuple[Gateway, Api]]:
    config = make_config(tmp_path, exporter={"enabled": True, "listen": "127.0.0.1:0"})
    async with running(config, clock) as (gw, api):
        yield gw, api


async def scrape(gw: Gateway, accept: str | None = None) -> tuple[str, str]:
    assert gw.exporter_address is not None
    url = "http://{}:{}/metrics".format(*gw.exporter_address)
    headers = {"Accept": accept} if accept else {}
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
        assert r.status == 200
        return r.headers["Content-Type"], await r.text()


def samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


async def send(api: Api, points: list[dict[str, Any]]) -> None:
    status, body = await api.batch(points)
    assert status == 200 and body["rejected"] == 0, body


async def test_counters_add_up_since_start_and_timers_are_summaries_in_seconds(
    served: tuple[Gateway, Api], clock: ManualClock
) -> None:
    gw, api = served
    latencies = [float(v) for v in range(1, 201)]  # ms
    await send(api, [
        {"name": "api.hits", "type": "counter", "value": 3, "tags": {"host": "a"}},
        {"name": "temp", "type": "gauge", "value": 21.5},
        *({"name": "api.latency", "type": "timing", "value": v} for v in latencies[:100]),
        *({"name": "users", "type": "set", "value": f"u{i}"} for i in range(7)),
    ])  # fmt: skip
    clock.advance(10)
    await gw.flusher.flush()
    await send(api, [
        {"name": "api.hits", "type": "counter", "value": 4, "tags": {"host": "a"}},
        {"name": "temp", "type": "gauge", "value": 19},
        *({"name": "api.latency", "type": "timing", "value": v} for v in latencies[100:]),
    ])  # fmt: skip
    clock.advance(10)
    await gw.flusher.flush()
    content_type, text = await scrape(gw)
    assert content_type.startswith("text/plain; version=0.0.4")
    got = samples(text)
    assert got['api_hits{host="a"}'] == 7  # cumulative, not the last interval's 4
    assert got["temp"] == 19
    assert got["users"] == 7
    assert got["api_latency_count"] == 200
    assert got["api_latency_sum"] == pytest.approx(sum(latencies) / 1000)
    for q in (0.5, 0.9, 0.99):
        exact = sorted(latencies)[round(q * 199)] / 1000
        assert math.isclose(got[f'api_latency{{quantile="{q}"}}'], exact, rel_tol=0.011)
    assert "# TYPE api_latency summary" in text and "# TYPE api_hits counter" in text


async def test_quantiles_cover_the_last_ten_minutes(
    served: tuple[Gateway, Api], clock: ManualClock
) -> None:
    gw, api = served
    await send(api, [{"name": "lat", "type": "timing", "value": 1000.0}] * 10)
    clock.advance(10)
    await gw.flusher.flush()
    clock.advance(11 * 60)  # the slot with the 1 s values has aged out
    await send(api, [{"name": "lat", "type": "timing", "value": 10.0}] * 10)
    clock.advance(10)
    await gw.flusher.flush()
    got = samples((await scrape(gw))[1])
    assert math.isclose(got['lat{quantile="0.99"}'], 0.010, rel_tol=0.011)
    assert got["lat_count"] == 20  # the count is since start


PROMETHEUS_ACCEPT = (  # what Prometheus 2.42 asks for
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


async def test_the_text_format_by_default_as_statsd_exporter(
    served: tuple[Gateway, Api], clock: ManualClock
) -> None:
    gw, api = served
    await send(api, [{"name": "jobs.done", "type": "counter", "value": 2}])
    clock.advance(10)
    await gw.flusher.flush()
    content_type, text = await scrape(gw, PROMETHEUS_ACCEPT)
    assert content_type.startswith("text/plain; version=0.0.4")
    assert "jobs_done 2" in text.splitlines()


async def test_openmetrics_when_asked_and_allowed(tmp_path: Path, clock: ManualClock) -> None:
    config = make_config(
        tmp_path, exporter={"enabled": True, "listen": "127.0.0.1:0", "openmetrics": True}
    )
    async with running(config, clock) as (gw, api):
        await send(api, [{"name": "jobs.done", "type": "counter", "value": 2}])
        clock.advance(10)
        await gw.flusher.flush()
        content_type, text = await scrape(gw, PROMETHEUS_ACCEPT)
        assert content_type.startswith("application/openmetrics-text; version=1.0.0")
        assert "jobs_done_total 2" in text.splitlines()
        assert text.endswith("# EOF\n")
        content_type, _ = await scrape(gw)  # no Accept: the text format
        assert content_type.startswith("text/plain; version=0.0.4")


async def test_a_clash_is_left_out_and_counted_and_the_rest_served(
    served: tuple[Gateway, Api], clock: ManualClock
) -> None:
    gw, api = served
    await send(api, [
        {"name": "a.b", "type": "counter", "value": 1},
        {"name": "a_b", "type": "gauge", "value": 5},
        {"name": "ok", "type": "counter", "value": 1},
    ])  # fmt: skip
    clock.advance(10)
    await gw.flusher.flush()
    got = samples((await scrape(gw))[1])
    assert got["a_b"] == 1  # the first by StatsD name ("a.b" < "a_b"), a counter
    assert got["ok"] == 1
    assert gw.telemetry.exporter_dropped["name_clash"] == 1


async def test_off_by_default(gateway: Gateway) -> None:
    assert gateway.exporter_address is None and gateway.scrape_state is None


async def test_promtool_finds_nothing_to_lint(
    served: tuple[Gateway, Api], clock: ManualClock
) -> None:
    if shutil.which("promtool") is None:
        missing_prerequisite("promtool is not installed (apt-get install prometheus)")
    gw, api = served
    await send(api, [
        {"name": "api.hits", "type": "counter", "value": 3, "tags": {"path": 'x"y\\z'}},
        {"name": "temp.c", "type": "gauge", "value": -4.25},
        {"name": "lat", "type": "timing", "value": 12.5},
        {"name": "sizes", "type": "histogram", "value": 300},
    ])  # fmt: skip
    clock.advance(10)
    await gw.flusher.flush()
    _, text = await scrape(gw)
    proc = await asyncio.create_subprocess_exec(
        "promtool", "check", "metrics", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate(text.encode())
    # promtool's lint only advises on names (counters without _total, no unit suffix): those
    # names are statsd_exporter's, kept for a drop-in; a format error would fail it.
    problems = [
        line for line in (out + err).decode().splitlines()
        if line and "should have \"_total\" suffix" not in line and "non-base units" not in line
    ]  # fmt: skip
    assert not problems, text


MAPPING = """
mappings:
  - match: "api.*.latency"
    name: "api_latency"
    labels: {endpoint: "$1"}
    observer_type: histogram
    histogram_options: {buckets: [0.01, 0.1, 1]}
    help: "API latency by endpoint"
  - match: "job.*"
    name: "job_$1"
    ttl: 60s
  - match: "q.*"
    name: "q_$1"
    summary_options: {quantiles: [{quantile: 0.25, error: 0.01}]}
"""


def mapped_config(tmp_path: Path) -> Config:
    """The exporter on, shaped by MAPPING's rules."""
    rules = tmp_path / "mapping.yml"
    rules.write_text(MAPPING)
    return make_config(
        tmp_path,
        exporter={"enabled": True, "listen": "127.0.0.1:0"},
        statsd={"mapping_file": str(rules)},
    )


async def test_mapping_rules_shape_the_scrape(tmp_path: Path, clock: ManualClock) -> None:
    async with running(mapped_config(tmp_path), clock) as (gw, _):
        lines = [f"api.home.latency:{v}|ms" for v in (5, 50, 50, 500, 5000)]
        lines += ["job.done:1|c", *(f"q.size:{v}|h" for v in range(1, 101))]
        send_udp(gw, "\n".join(lines).encode())
        await wait_for_udp(gw, 1)
        clock.advance(10)
        await gw.flusher.flush()
        _, text = await scrape(gw)
        got = samples(text)
        assert "# TYPE api_latency histogram" in text
        assert "# HELP api_latency API latency by endpoint" in text
        bucket = 'api_latency_bucket{{endpoint="home",le="{}"}}'
        buckets = {le: got[bucket.format(le)] for le in ("0.01", "0.1", "1", "+Inf")}
        assert buckets == {"0.01": 1, "0.1": 3, "1": 4, "+Inf": 5}  # 5 ms, 50 ms ×2, 0.5 s, 5 s
        assert got['api_latency_count{endpoint="home"}'] == 5
        assert got['api_latency_sum{endpoint="home"}'] == pytest.approx(5.605)
        assert math.isclose(got['q_size{quantile="0.25"}'], 25, rel_tol=0.021)
        assert not any(k.startswith('q_size{quantile="0.5"') for k in got)
        assert got["job_done"] == 1
        clock.advance(61)  # past the job rule's ttl without a line
        await gw.flusher.flush()
        got = samples((await scrape(gw))[1])
        assert "job_done" not in got and 'api_latency_count{endpoint="home"}' in got


async def test_late_members_of_a_set_join_its_bucket(
    served: tuple[Gateway, Api], clock: ManualClock
) -> None:
    gw, api = served
    t = clock() - 5
    await send(api, [{"name": "users", "type": "set", "value": v, "timestamp": t} for v in "abc"])
    clock.advance(10)
    await gw.flusher.flush()
    await send(api, [{"name": "users", "type": "set", "value": "d", "timestamp": t}])  # late
    clock.advance(10)
    await gw.flusher.flush()
    assert samples((await scrape(gw))[1])["users"] == 4


async def test_a_family_whose_samples_another_has_is_left_out(
    served: tuple[Gateway, Api], clock: ManualClock
) -> None:
    gw, api = served
    await send(api, [
        {"name": "lat", "type": "timing", "value": 5},
        {"name": "lat_count", "type": "counter", "value": 1},
    ])  # fmt: skip
    clock.advance(10)
    await gw.flusher.flush()
    text = (await scrape(gw))[1]
    assert text.count("lat_count ") == 1 and "# TYPE lat summary" in text
    assert "# TYPE lat_count" not in text
    assert gw.telemetry.exporter_dropped["name_clash"] == 1
