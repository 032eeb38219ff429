"""The client libraries users really have, from PyPI, against a running Gateway: `statsd`
(pystatsd, Etsy dialect) and `datadog` (DogStatsd, the DogStatsD dialect). What they send is
read back through the query API.

Sampling decisions are the clients' own (`random() > rate` drops a sample); the tests pin the
random draw so a sampled call is always sent, and check the daemon scales it by 1/rate.
"""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import datadog.dogstatsd.base as dogstatsd_base
import pytest
import statsd
import statsd.client.base as pystatsd_base
from datadog.dogstatsd import DogStatsd

from statsd_gateway.config import Config
from statsd_gateway.gateway import Gateway
from tests.conftest import T0, Api, make_config, wait_until

T = int(T0)
SINCE = T - 3 * 3600
UNTIL = T + 700

# Environment variables through which DogStatsd adds tags or fields of its own.
DD_ENV = (
    "DATADOG_TAGS",
    "DD_ENV",
    "DD_SERVICE",
    "DD_VERSION",
    "DD_ENTITY_ID",
    "DD_EXTERNAL_ENV",
    "DD_DOGSTATSD_URL",
    "DD_AGENT_HOST",
    "DD_DOGSTATSD_PORT",
)


@pytest.fixture
def socket_dir() -> Iterator[str]:
    # AF_UNIX paths are limited to 108 bytes: pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="sgw") as d:
        yield d


@pytest.fixture
def config(tmp_path: Path, socket_dir: str) -> Config:
    """UDP as always, plus the TCP and Unix datagram listeners (used where they exist)."""
    return make_config(
        tmp_path,
        tcp={"enabled": True, "listen": "127.0.0.1:0"},
        unix={"enabled": True, "path": f"{socket_dir}/statsd.sock"},
    )


@pytest.fixture(autouse=True)
def always_sampled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both clients drop a sampled call when random() > rate: make every call go out."""
    monkeypatch.setattr(pystatsd_base.random, "random", lambda: 0.0)
    monkeypatch.setattr(dogstatsd_base, "random", lambda: 0.0)
    for var in DD_ENV:
        monkeypatch.delenv(var, raising=False)


async def wait_lines(gateway: Gateway, transport: str, n: int) -> None:
    """Waits until the gateway has read `n` lines over `transport` (an event it counts)."""
    t = gateway.telemetry
    await wait_until(
        lambda: t.lines[transport] >= n,
        lambda: f"only {t.lines[transport]} of {n} {transport} lines arrived",
    )


async def value(api: Api, name: str, agg: str, tags: str | None = None, **kw: Any) -> Any:
    params: dict[str, Any] = {"name": name, "agg": agg, "since": SINCE, "until": UNTIL, **kw}
    if tags is not None:
        params["tags"] = tags
    status, body = await api.query(**params)
    assert status == 200, body
    if "window" in kw:
        return [(p["timestamp"], p["value"]) for p in body["points"]]
    assert len(body["points"]) == 1, body
    return body["points"][0]["value"]


def no_rejects(gateway: Gateway) -> dict[Any, int]:
    t = gateway.telemetry
    return {k: v for k, v in t.rejects.items() if v} | {
        ("ignored", k): v for k, v in t.ignored.items() if v and k == "unknown_section"
    }


async def check_after_flush(gateway: Gateway, check: Callable[[], Any]) -> None:
    """Checks the answers from memory, then again once flushed to the store."""
    await check()
    assert await gateway.flusher.flush()
    await check()


# --- statsd (pystatsd) -------------------------------------------------------------------------


async def test_pystatsd_udp(gateway: Gateway, api: Api) -> None:
    assert gateway.udp_address is not None
    host, port = gateway.udp_address
    client = statsd.StatsClient(host, port, prefix="py")
    try:
        client.incr("hits")
        client.incr("hits", 4)
        client.incr("hits", 2, rate=0.5)  # "py.hits:2|c|@0.5" → 4
        client.decr("hits")
        client.timing("latency", 12.5)
        client.timing("latency", 20)
        client.timing("latency", 7.5, rate=0.25)  # weight 4
        client.gauge("temp", 20)
        client.gauge("temp", 5, delta=True)
        client.gauge("temp", -3, delta=True)
        client.gauge("level", -7)  # absolute negative: the client sends "0|g" then "-7|g"
        client.gauge("load", 0.75, rate=0.5)  # gauges ignore the rate
        client.set("users", "alice")
        client.set("users", "bob")
        client.set("users", "alice")
        with client.pipeline() as pipe:  # one datagram of several lines
            pipe.incr("piped")
            pipe.incr("piped", 2)
            pipe.timing("piped.time", 3)
        with client.timer("timed"):
            pass
    finally:
        client.close()
    await wait_lines(gateway, "udp", 20)

    async def check() -> None:
        assert await value(api, "py.hits", "sum") == 1 + 4 + 4 - 1
        assert await value(api, "py.hits", "count") == 1 + 1 + 2 + 1
        assert await value(api, "py.latency", "count") == 6
        assert await value(api, "py.latency", "sum") == pytest.approx(12.5 + 20 + 4 * 7.5)
        assert await value(api, "py.latency", "min") == 7.5
        assert await value(api, "py.latency", "max") == 20
        assert await value(api, "py.latency", "p50") == pytest.approx(7.5, rel=0.01)
        assert await value(api, "py.temp", "last") == 22
        assert await value(api, "py.temp", "max") == 25
        assert await value(api, "py.level", "last") == -7
        assert await value(api, "py.load", "last") == 0.75
        assert await value(api, "py.load", "count") == 1
        assert await value(api, "py.users", "distinct") == 2
        assert await value(api, "py.piped", "sum") == 3
        assert await value(api, "py.piped.time", "p50") == pytest.approx(3, rel=0.01)
        assert await value(api, "py.timed", "count") == 1

    await check_after_flush(gateway, check)
    assert gateway.telemetry.packets["udp"] == 17  # the pipeline and the -7 gauge: one each
    assert no_rejects(gateway) == {}


async def test_pystatsd_tcp(gateway: Gateway, api: Api) -> None:
    assert gateway.tcp_address is not None
    host, port = gateway.tcp_address
    client = statsd.TCPStatsClient(host, port, prefix="tcp")
    try:
        client.incr("hits", 3)
        client.gauge("temp", 10)
        client.gauge("temp", 2, delta=True)
        client.timing("latency", 40)
        with client.pipeline() as pipe:
            pipe.incr("hits")
            pipe.set("users", "carol")
    finally:
        client.close()
    await wait_lines(gateway, "tcp", 6)

    async def check() -> None:
        assert await value(api, "tcp.hits", "sum") == 4
        assert await value(api, "tcp.temp", "last") == 12
        assert await value(api, "tcp.latency", "p50") == pytest.approx(40, rel=0.01)
        assert await value(api, "tcp.users", "distinct") == 1

    await check_after_flush(gateway, check)
    assert no_rejects(gateway) == {}


# --- datadog (DogStatsd) -----------------------------------------------------------------------


def dogstatsd(gateway: Gateway, **kw: Any) -> DogStatsd:
    assert gateway.udp_address is not None
    host, port = gateway.udp_address
    kw.setdefault("disable_buffering", True)
    kw.setdefault("disable_aggregation", True)
    return DogStatsd(host=host, port=port, disable_telemetry=True, track_instance=False, **kw)


def send_every_kind(client: DogStatsd) -> int:
    """Calls every metric method once or more; returns the number of lines they send."""
    client.increment("dd.hits", tags=["env:prod", "region:eu"])
    client.increment("dd.hits", 2, tags=["env:prod", "region:eu"], sample_rate=0.5)  # 4
    client.increment("dd.hits", 5, tags=["env:dev"])
    client.decrement("dd.hits", tags=["env:dev"])
    client.gauge("dd.temp", 21.5, tags=["host:a"])
    client.gauge("dd.temp", 19, tags=["host:b"])
    client.gauge("dd.temp", 23, tags=["host:a"])
    client.histogram("dd.size", 10, tags=["canary"])
    client.histogram("dd.size", 20, tags=["canary"])
    client.histogram("dd.size", 30, tags=["canary"], sample_rate=0.25)  # weight 4
    client.distribution("dd.lat", 1.5)
    client.distribution("dd.lat", 2.5)
    client.distribution("dd.lat", 0.5)
    client.timing("dd.time", 250, tags=["url:http://x:80/"])
    client.set("dd.users", "alice")
    client.set("dd.users", "bob")
    client.set("dd.users", "alice")
    client.gauge_with_timestamp("dd.backfill", 7, timestamp=T - 120)
    client.count_with_timestamp("dd.backfill.count", 3, timestamp=T - 3600)
    client.event("deploy", "version 2 is out", tags=["env:prod"])
    client.service_check("dd.db.up", DogStatsd.OK, tags=["env:prod"], message="fine")
    return 21


async def check_every_kind(gateway: Gateway, api: Api) -> None:
    async def check() -> None:
        assert await value(api, "dd.hits", "sum") == 1 + 4 + 5 - 1
        assert await value(api, "dd.hits", "sum", tags="env:prod,region:eu") == 5
        assert await value(api, "dd.hits", "count", tags="env:prod") == 3
        assert await value(api, "dd.hits", "sum", tags="env:dev") == 4
        assert await value(api, "dd.temp", "last", tags="host:a") == 23
        assert await value(api, "dd.temp", "last", tags="host:b") == 19
        assert await value(api, "dd.temp", "max") == 23
        assert await value(api, "dd.size", "count", tags="canary:") == 6
        assert await value(api, "dd.size", "sum") == 10 + 20 + 4 * 30
        assert await value(api, "dd.size", "p50") == pytest.approx(30, rel=0.01)
        assert await value(api, "dd.lat", "p50") == pytest.approx(1.5, rel=0.01)
        assert await value(api, "dd.lat", "avg") == 1.5
        assert await value(api, "dd.time", "p50", tags="url:http://x:80/") == pytest.approx(
            250, rel=0.01
        )
        assert await value(api, "dd.users", "distinct") == 2
        assert await value(api, "dd.users", "count") == 3
        assert await value(api, "dd.backfill", "last", window="10s") == [(T - 120, 7)]
        assert await value(api, "dd.backfill.count", "sum", window="10s") == [(T - 3600, 3)]

    await check_after_flush(gateway, check)
    assert gateway.telemetry.ignored["event"] == 1
    assert gateway.telemetry.ignored["service_check"] == 1
    assert no_rejects(gateway) == {}
    status, body = await api.request("GET", "/v1/metrics")
    assert status == 200, body
    assert not any(m["name"].startswith(("deploy", "dd.db")) for m in body["metrics"])


async def test_dogstatsd_unbuffered(gateway: Gateway, api: Api) -> None:
    client = dogstatsd(gateway)
    try:
        lines = send_every_kind(client)
    finally:
        client.close_socket()
    await wait_lines(gateway, "udp", lines)
    assert gateway.telemetry.packets["udp"] == lines  # one datagram per call
    await check_every_kind(gateway, api)


async def test_dogstatsd_buffered_sends_on_flush(gateway: Gateway, api: Api) -> None:
    # flush_interval=0: no background flush thread, so only flush() sends.
    client = dogstatsd(gateway, disable_buffering=False, flush_interval=0)
    try:
        lines = send_every_kind(client)
        # A marker sent after the calls arrives alone: the client held everything back.
        assert gateway.udp_address is not None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"dd.marker:1|c", gateway.udp_address)
        await wait_lines(gateway, "udp", 1)
        assert gateway.telemetry.lines["udp"] == 1
        client.flush()
    finally:
        client.close_socket()
    await wait_lines(gateway, "udp", lines + 1)
    assert gateway.telemetry.packets["udp"] < lines  # several lines per datagram
    await check_every_kind(gateway, api)


async def test_dogstatsd_client_side_aggregation(gateway: Gateway, api: Api) -> None:
    client = dogstatsd(gateway, disable_aggregation=False, flush_interval=0)
    try:
        for _ in range(5):
            client.increment("agg.hits", tags=["env:prod"])
        client.gauge("agg.temp", 1)
        client.gauge("agg.temp", 2)
        for member in ("a", "b", "a", "c"):
            client.set("agg.users", member)
        client.histogram("agg.size", 10)
        client.histogram("agg.size", 30)
        client.flush_aggregated_metrics()
    finally:
        client.close_socket()
    # The client sums the counter and keeps the last gauge; a set arrives as one line per
    # distinct member, histograms one line per value: 1 + 1 + 3 + 2 lines.
    await wait_lines(gateway, "udp", 7)
    assert gateway.telemetry.lines["udp"] == 7

    async def check() -> None:
        assert await value(api, "agg.hits", "sum", tags="env:prod") == 5
        assert await value(api, "agg.temp", "last") == 2
        assert await value(api, "agg.users", "distinct") == 3
        assert await value(api, "agg.size", "sum") == 40
        assert await value(api, "agg.size", "count") == 2

    await check_after_flush(gateway, check)
    assert no_rejects(gateway) == {}


async def test_dogstatsd_constant_tags_and_namespace(gateway: Gateway, api: Api) -> None:
    client = dogstatsd(gateway, namespace="app", constant_tags=["service:web", "env:prod"])
    try:
        client.increment("requests", tags=["route:/users"])
        client.increment("requests")
    finally:
        client.close_socket()
    await wait_lines(gateway, "udp", 2)

    async def check() -> None:
        assert await value(api, "app.requests", "sum", tags="service:web,env:prod") == 2
        assert await value(api, "app.requests", "sum", tags="route:/users") == 1

    await check_after_flush(gateway, check)
    assert no_rejects(gateway) == {}


async def test_dogstatsd_unix_socket(gateway: Gateway, api: Api) -> None:
    path = gateway.unix_path
    assert path is not None
    client = DogStatsd(
        socket_path=path,
        disable_telemetry=True,
        track_instance=False,
        disable_buffering=True,
        disable_aggregation=True,
    )
    try:
        client.increment("uds.hits", 2, tags=["env:prod"])
        client.distribution("uds.lat", 5)
        client.gauge("uds.temp", 3)
    finally:
        client.close_socket()
    await wait_lines(gateway, "unixgram", 3)

    async def check() -> None:
        assert await value(api, "uds.hits", "sum", tags="env:prod") == 2
        assert await value(api, "uds.lat", "p50") == pytest.approx(5, rel=0.01)
        assert await value(api, "uds.temp", "last") == 3

    await check_after_flush(gateway, check)
    assert no_rejects(gateway) == {}
