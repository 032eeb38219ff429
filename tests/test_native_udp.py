"""UDP into the native ingest core, as a user sees it: the log names the core that runs, the
reader threads (one per socket, `udp.readers` of them on one port) count every line once, the
kernel's drops on every socket are summed, huge lines are refused without losing their
datagram's other lines, the threads end with the daemon and go on through a reload, and a flood
of new series is capped without the daemon's memory growing with it."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from statsd_gateway import native
from statsd_gateway.gateway import Gateway
from statsd_gateway.native_udp import NativeUdpListener
from tests.conftest import (
    T0,
    Api,
    ManualClock,
    make_config,
    require_native_core,
    running,
    send_udp,
    wait_until,
)
from tests.daemon import Daemon, poll_until, write_config

SINCE = int(T0 - 3600)
UNTIL = int(T0 + 60)
# The name a reader thread gives itself (`top -H`, `ps -L` show it).
READER_THREAD = "sgw-udp-reader"


@pytest.fixture(autouse=True)
def native_core() -> None:
    require_native_core()


async def value(api: Api, name: str, agg: str, **params: Any) -> Any:
    status, body = await api.query(name=name, agg=agg, since=SINCE, until=UNTIL, **params)
    assert status == 200, body
    assert len(body["points"]) == 1, body
    return body["points"][0]["value"]


def reader_threads() -> int:
    """The reader threads of this process: native threads, which threading.enumerate() does
    not list, are in /proc."""
    count = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            comm = (task / "comm").read_text(encoding="utf-8").strip()
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
        count += comm == READER_THREAD
    return count


def sockets_on(port: int) -> list[tuple[int, int]]:
    """(inode, drops) of every IPv4 UDP socket bound to 127.0.0.1:`port`, as `ss -uap` lists
    them (from /proc/net/udp)."""
    local = f"0100007F:{port:04X}"
    rows = Path("/proc/net/udp").read_text(encoding="ascii").splitlines()[1:]
    return [
        (int(fields[9]), int(fields[-1]))
        for fields in (row.split() for row in rows)
        if fields[1] == local
    ]


def clients(n: int) -> Iterator[socket.socket]:
    """`n` client sockets: as many source ports, which SO_REUSEPORT's hash spreads over the
    readers."""
    for _ in range(n):
        yield socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


def reader_packets(gw: Gateway) -> list[int]:
    """Datagrams each reader thread's core parsed (UDP is its transport 0)."""
    assert gw.ingest.native is not None
    return [core.counts()[0][0] for core in gw.ingest.native.cores]


async def test_the_log_at_start_names_the_native_core(
    tmp_path: Path, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="statsd_gateway")
    async with running(make_config(tmp_path), clock) as (gw, _):
        assert isinstance(gw.udp, NativeUdpListener)
    said = [r.getMessage() for r in caplog.records]
    assert "ingest core: native (compiled core)" in said, said
    assert "udp: 1 native reader thread(s)" in said, said


async def test_two_readers_share_one_port_and_count_every_line_once(
    tmp_path: Path, clock: ManualClock
) -> None:
    async with running(make_config(tmp_path, udp={"readers": 2}), clock) as (gw, api):
        assert gw.udp_address is not None
        assert len(sockets_on(gw.udp_address[1])) == 2
        assert reader_threads() == 2
        senders = list(clients(64))
        try:
            for i, s in enumerate(senders):
                for _ in range(2):
                    lines = f"rp.hits:1|c\nrp.hits:2|c|#client:{i % 4}\nrp.t:{i}|ms\nrp.u:u{i}|s"
                    s.sendto(lines.encode(), gw.udp_address)
        finally:
            for s in senders:
                s.close()
        t = gw.telemetry
        await wait_until(
            lambda: t.accepted["udp"] >= 512, lambda: f"{t.accepted['udp']} of 512 lines counted"
        )
        per_reader = reader_packets(gw)
        assert sum(per_reader) == 128 and min(per_reader) > 0, per_reader
        assert (t.packets["udp"], t.lines["udp"], t.accepted["udp"]) == (128, 512, 512)

        async def check() -> None:
            assert await value(api, "rp.hits", "sum") == 64 * 2 * 3
            assert await value(api, "rp.hits", "sum", tags="client:0") == 16 * 2 * 2
            assert await value(api, "rp.t", "count") == 128
            assert await value(api, "rp.t", "sum") == 2 * sum(range(64))
            assert (await value(api, "rp.t", "min"), await value(api, "rp.t", "max")) == (0, 63)
            assert await value(api, "rp.u", "distinct") == 64

        await check()
        assert await gw.flusher.flush()
        await check()
        assert {k: v for k, v in t.rejects.items() if v} == {}
        assert t.kernel_drops() == {"udp": 0}


async def test_the_kernel_drops_of_every_reader_are_summed(
    tmp_path: Path, clock: ManualClock
) -> None:
    # Receive buffers of a few datagrams, and the readers held while clients send: both
    # sockets overflow.
    cfg = make_config(tmp_path, udp={"readers": 2, "read_buffer": 4096})
    async with running(cfg, clock) as (gw, api):
        assert gw.udp_address is not None
        senders = list(clients(64))
        try:
            with gw.aggregator.live_held():
                for s in senders:
                    for _ in range(20):
                        s.sendto(b"dropped.or.not:1|c", gw.udp_address)
        finally:
            for s in senders:
                s.close()
        sent = 64 * 20
        t = gw.telemetry

        def drops() -> list[int]:
            assert gw.udp_address is not None
            return [dropped for _, dropped in sockets_on(gw.udp_address[1])]

        await wait_until(
            lambda: t.packets["udp"] + sum(drops()) == sent,
            lambda: f"{t.packets['udp']} read and {drops()} dropped of {sent}",
        )
        assert len(drops()) == 2 and min(drops()) > 0, drops()
        assert t.kernel_drops() == {"udp": sum(drops())}
        async with api.session.get(api.base + "/metrics") as r:
            text = await r.text()
        assert f'statsd_gateway_kernel_drops_total{{transport="udp"}} {sum(drops())}.0' in text
        assert await value(api, "dropped.or.not", "sum") == t.packets["udp"]


async def test_a_huge_line_is_refused_and_the_rest_of_its_datagram_counts(
    gateway: Gateway, api: Api
) -> None:
    huge = b"h" * 59_996 + b":1|c"  # 60,000 bytes, a valid line but for its length
    send_udp(gateway, huge + b"\nafter:1|c", b"before:2|c\n" + huge + b"\nafter:4|c", huge)
    t = gateway.telemetry
    await wait_until(lambda: t.lines["udp"] >= 6, lambda: f"{t.lines['udp']} of 6 lines counted")
    assert t.rejects[("udp", "line_too_long")] == 3
    assert t.accepted["udp"] == 3
    assert await value(api, "after", "sum") == 5
    assert await value(api, "before", "sum") == 2


async def test_reader_threads_end_with_the_gateway_and_go_on_through_a_reload(
    tmp_path: Path, clock: ManualClock
) -> None:
    cfg = make_config(tmp_path, udp={"readers": 2})
    async with running(cfg, clock) as (gw, api):
        assert reader_threads() == 2
        assert isinstance(gw.udp, NativeUdpListener)
        send_udp(gw, b"rl:1|c")
        await wait_until(lambda: gw.telemetry.accepted["udp"] == 1, lambda: "no line counted")
        # The number of readers is set at start: a reload says a restart is needed for it.
        assert gw.reload(make_config(tmp_path, udp={"readers": 3})) == ["udp"]
        assert reader_threads() == 2
        assert gw.udp.stopped_readers() == 0
        status, body = await api.request("GET", "/readyz", key=None)
        assert status == 200, body
        send_udp(gw, b"rl:2|c")
        await wait_until(lambda: gw.telemetry.accepted["udp"] == 2, lambda: "no line counted")
        assert await value(api, "rl", "sum") == 3
        assert gw.udp_address is not None
        port = gw.udp_address[1]
    assert reader_threads() == 0
    # The port is free again (a socket without SO_REUSEPORT could not join live ones).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))


# --- the daemon as a subprocess -----------------------------------------------------------------


def native_daemon(tmp_path: Path, daemons: list[Daemon], extra: str = "") -> Daemon:
    """The daemon on the native core, 1 s flushes, a receive buffer of 4 MiB asked (the kernel
    may grant less: send_within_buffer() reads what it granted); `extra` is appended to the
    config file, in its last section (aggregation)."""
    path = tmp_path / "gw.yaml"
    write_config(path, tmp_path / "state", flush_interval="1s")
    text = path.read_text(encoding="utf-8").replace("read_buffer: 0", "read_buffer: 4194304")
    path.write_text(text + extra, encoding="utf-8")
    d = Daemon(path, env={native.PURE_PYTHON_ENV: ""})
    daemons.append(d)
    assert any("ingest core: native" in line for line in d.lines), d.stderr
    return d


def send_within_buffer(d: Daemon, datagrams: list[bytes]) -> None:
    """Sends `datagrams`, waiting whenever what is in flight could fill the daemon's receive
    buffer, so that the kernel drops none (the counts asserted after are exact)."""
    room = d.receive_buffer() // 2

    def read() -> float:
        return d.self_metric("statsd_gateway_packets_received_total", transport="udp")

    def wait_for(sent: float) -> None:
        poll_until(
            lambda: True if read() == sent else None,
            lambda: f"{read()} of {sent} datagrams read\n{d.stderr}",
        )

    sent, in_flight = read(), 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for datagram in datagrams:
            if in_flight + len(datagram) > room:
                wait_for(sent)
                in_flight = 0
            s.sendto(datagram, ("127.0.0.1", d.udp_port))
            sent += 1
            in_flight += len(datagram)
    wait_for(sent)


def test_a_flood_of_new_series_and_huge_lines_is_capped_in_bounded_memory(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    d = native_daemon(tmp_path, daemons, "  max_series_per_tenant: 1000\n")
    send_within_buffer(d, [b"warm:1|c"])  # the first datagram's one-time costs: before the baseline
    baseline = d.vm_rss()

    names = 50_000
    flood = [
        "\n".join(f"flood.n{k}:1|c" for k in range(i, i + 500)).encode()
        for i in range(0, names, 500)
    ]
    huge = b"h" * 59_996 + b":1|c"  # 60,000 bytes
    flood += [huge + b"\nflood.n0:1|c"] * 100
    send_within_buffer(d, flood)

    def metric(name: str, **labels: str) -> float:
        return d.self_metric("statsd_gateway_" + name, transport="udp", **labels)

    assert metric("lines_received_total") == 1 + names + 2 * 100
    # warm and the first 999 names fill the tenant's cap; flood.n0 counts every time it comes.
    assert metric("samples_accepted_total") == 1 + 999 + 100
    assert metric("rejects_total", reason="cardinality_limit") == names - 999
    assert metric("rejects_total", reason="line_too_long") == 100
    assert d.self_metric("statsd_gateway_series") == 1000
    assert metric("kernel_drops_total") == 0
    # What each refused name costs, at most: an entry in the parser's cache of names (bounded
    # at 100,000) and in the core's (bounded at 2^20, each under 100 bytes) - about 18 MB for
    # these 50,000. Keeping a 1 KB object for each refused line, or buffering the huge lines,
    # would cost 50 MB more.
    grown = d.vm_rss() - baseline
    assert grown < 50 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB"
    key = (tmp_path / "state" / "api-key").read_text(encoding="utf-8").strip()
    status, body = d.query(key, name="flood.n0", agg="sum")
    assert (status, [p["value"] for p in body["points"]]) == (200, [101]), body
    assert d.terminate() == 0, d.stderr
