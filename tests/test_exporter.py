"""The statsd_exporter-compatible scrape (exporter.listen): what a Prometheus scraping it sees,
checked with promtool's own linter and with a real Prometheus server scraping it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def prometheus_scraping(
    gw: Gateway, tmp_path: Path, *flags: str
) -> AsyncIterator[Callable[[str], Awaitable[list[dict[str, Any]]]]]:
    """A Prometheus server (with `flags`) scraping the exporter every second; yields a query
    function that asks it an instant query until the answer has a series (bounded: 30 s, so
    the first ask waits for the first scrape) and returns the answer's series."""
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        missing_prerequisite("prometheus is not installed (apt-get install prometheus)")
    assert prometheus is not None and gw.exporter_address is not None
    target = "{}:{}".format(*gw.exporter_address)
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s}\n"
        f"scrape_configs: [{{job_name: gw, static_configs: [{{targets: ['{target}']}}]}}]\n"
    )
    port = free_port()
    log = tmp_path / "prometheus.log"
    with log.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
            *flags, stdout=asyncio.subprocess.DEVNULL, stderr=log_file,
        )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as s:

            async def query(expression: str) -> list[dict[str, Any]]:
                url = f"http://127.0.0.1:{port}/api/v1/query"
                for _ in range(600):  # until Prometheus has scraped once (bounded: 30 s)
                    try:
                        async with s.get(url, params={"query": expression}) as r:
                            body = json.loads(await r.text())
                        if body["data"]["result"]:
                            result: list[dict[str, Any]] = body["data"]["result"]
                            return result
                    except (aiohttp.ClientConnectionError, ValueError, KeyError):
                        pass  # not up yet: it answers 503 text until its storage is ready
                    await asyncio.sleep(0.05)
                tail = log.read_text(errors="replace")[-3000:]
                raise AssertionError(f"Prometheus never had {expression}; its log ends:\n{tail}")

            yield query
    finally:
        proc.terminate()
        await proc.wait()


async def test_a_real_prometheus_scrapes_it(tmp_path: Path, clock: ManualClock) -> None:
    async with running(mapped_config(tmp_path), clock) as (gw, api):
        await send(
            api, [{"name": "api.hits", "type": "counter", "value": 5, "tags": {"host": "a"}}]
        )
        send_udp(gw, "\n".join(f"api.home.latency:{v}|ms" for v in (5, 50, 50, 500, 5000)).encode())
        await wait_for_udp(gw, 1)
        clock.advance(10)
        await gw.flusher.flush()
        async with prometheus_scraping(gw, tmp_path) as query:
            [value] = await query('api_hits{job="gw"}')
            assert value["metric"]["host"] == "a"
            assert value["value"][1] == "5"
            # Without native histograms it asks for text: the classic buckets.
            got = await query('api_latency_bucket{endpoint="home"}')
            buckets = {v["metric"]["le"]: v["value"][1] for v in got}
            assert buckets == {"0.01": "1", "0.1": "3", "1": "4", "+Inf": "5"}


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


# A quantile Prometheus interpolates in a native histogram's bucket is within this of the
# observation of its rank: that observation's sketch bin centre is within α = 1 % of it, and
# the schema-6 bucket holding the centre spans a factor 2^(1/64) (docs/PROMETHEUS.md).
NATIVE_QUANTILE_BOUND = (1 + 0.01) * 2 ** (1 / 64) - 1  # 2.1 %


async def test_a_real_prometheus_with_native_histograms_reads_them(
    tmp_path: Path, clock: ManualClock
) -> None:
    latencies = [float(v) for v in range(1, 201)] + [0.0, 1500.0, 1500.0]  # ms
    async with running(mapped_config(tmp_path), clock) as (gw, _):
        lines = [f"api.home.latency:{v:g}|ms" for v in latencies]
        lines += [f"api.away.latency:{v}|ms|@0.3" for v in (5, 50, 50)]  # weighs 1/0.3 each
        lines += ["lat:12|ms", "jobs:3|c"]
        for at in range(0, len(lines), 50):
            send_udp(gw, "\n".join(lines[at : at + 50]).encode())
        await wait_for_udp(gw, (len(lines) + 49) // 50)
        clock.advance(10)
        await gw.flusher.flush()
        async with prometheus_scraping(gw, tmp_path, "--enable-feature=native-histograms") as query:

            async def scalar(expression: str) -> float:
                [got] = await query(expression)
                return float(got["value"][1])

            home = 'api_latency{endpoint="home"}'
            assert await scalar(f"histogram_count({home})") == len(latencies)
            assert await scalar(f"histogram_sum({home})") == pytest.approx(sum(latencies) / 1000)
            ordered = sorted(latencies)
            for q in (0.25, 0.5, 0.9, 0.99):
                # Prometheus's rank q·count falls in the bucket of this observation.
                exact = ordered[math.ceil(q * len(ordered)) - 1] / 1000
                got = await scalar(f"histogram_quantile({q}, {home})")
                assert abs(got - exact) <= NATIVE_QUANTILE_BOUND * exact, (q, got, exact)
            # Weighted counts are a float histogram, which 2.42 reads too.
            away = 'api_latency{endpoint="away"}'
            assert await scalar(f"histogram_count({away})") == pytest.approx(3 / 0.3)
            median = await scalar(f"histogram_quantile(0.5, {away})")
            assert abs(median - 0.05) <= NATIVE_QUANTILE_BOUND * 0.05
            # Every other family is in the protobuf answer too.
            assert await scalar('lat_count{job="gw"}') == 1
            assert await scalar('lat{quantile="0.5"}') == pytest.approx(0.012, rel=0.01)
            assert await scalar("jobs") == 3
            # 2.42 keeps a histogram's native part only (2.45's scrape_classic_histograms
            # keeps both); the classic buckets are in the answer (test_exporter_protobuf.py).
            assert await scalar("count({__name__=~'api_latency.*'})") == 2
