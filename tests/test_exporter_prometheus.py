"""The exporter scraped by a real Prometheus server: without native histograms it asks for
text and stores the classic buckets; with them it asks for the protobuf format and answers
PromQL's histogram functions from the native histograms."""

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

from statsd_gateway.gateway import Gateway
from tests.conftest import ManualClock, missing_prerequisite, running, send_udp, wait_for_udp
from tests.test_exporter import mapped_config, send

pytestmark = pytest.mark.asyncio


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
        lines += ["lat:12|ms", "jobs:3|c", "wlat:12|ms|@0.3"]  # wlat's count: 1/0.3
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
            # A weighted summary's count is rounded in the protobuf format, the summary kept.
            assert await scalar("wlat_count") == 3
            assert await scalar("wlat_sum") == pytest.approx(0.012 / 0.3)
            # 2.42 keeps a histogram's native part only (2.45's scrape_classic_histograms
            # keeps both); the classic buckets are in the answer (test_exporter_protobuf.py).
            assert await scalar("count({__name__=~'api_latency.*'})") == 2
