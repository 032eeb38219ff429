"""StatsD over TCP, a Unix datagram socket and UDP over IPv6: real sockets into a running Gateway,
read back through the query API or the daemon's counters. Tests wait on events, never on time."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from msgspec.structs import replace

from statsd_gateway import native
from statsd_gateway.config import Config, parse_config, parse_mode
from statsd_gateway.errors import ConfigError
from statsd_gateway.gateway import Gateway
from statsd_gateway.udp import read_proc_drops
from tests.conftest import (
    T0,
    Api,
    ManualClock,
    Ticks,
    make_config,
    require_native_core,
    running,
    send_udp,
    wait_until,
)

SINCE = int(T0 - 3600)
UNTIL = int(T0 + 60)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return transports_config(tmp_path)


def transports_config(tmp_path: Path, **tcp: Any) -> Config:
    return make_config(
        tmp_path,
        tcp={"enabled": True, "listen": "127.0.0.1:0", **tcp},
        unix={"enabled": True, "path": str(tmp_path / "s.sock")},
    )


async def value(api: Api, name: str, agg: str = "sum") -> Any:
    status, body = await api.query(name=name, agg=agg, since=SINCE, until=UNTIL)
    assert status == 200, body
    (point,) = body["points"]
    return point["value"]


@contextlib.asynccontextmanager
async def tcp_client(
    gw: Gateway,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    assert gw.tcp_address is not None
    reader, writer = await asyncio.open_connection(*gw.tcp_address)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """Waits (bounded) for the server to close the connection."""
    try:
        return await asyncio.wait_for(reader.read(), timeout=5.0) == b""
    except ConnectionResetError:
        return True


def lines(gw: Gateway, transport: str = "tcp") -> int:
    return gw.telemetry.lines[transport]


# --- TCP ---------------------------------------------------------------------------------------


async def test_tcp_line_split_across_writes_is_joined(gateway: Gateway, api: Api) -> None:
    assert gateway.tcp is not None
    tcp = gateway.tcp
    async with tcp_client(gateway) as (_, writer):
        writer.write(b"tcp.split:1")
        await writer.drain()
        await wait_until(
            lambda: any(c.buffered for c in tcp.connections),
            lambda: "timed out waiting for the first part",
        )
        assert lines(gateway) == 0
        writer.write(b"5|c|#env:prod\ntcp.split:2|c\n")
        await writer.drain()
        await wait_until(lambda: lines(gateway) == 2, lambda: "timed out waiting for both lines")
    assert await value(api, "tcp.split") == 17
    status, body = await api.query(name="tcp.split", agg="sum", tags="env:prod", since=SINCE)
    assert status == 200 and body["points"][0]["value"] == 15, body


async def test_tcp_several_lines_per_write(gateway: Gateway, api: Api) -> None:
    async with tcp_client(gateway) as (_, writer):
        writer.write(b"multi.c:1|c\nmulti.g:2|g\r\nmulti.t:3|ms\nmulti.t:5|ms\n")
        await writer.drain()
        await wait_until(lambda: lines(gateway) == 4, lambda: "timed out waiting for four lines")
    assert gateway.telemetry.accepted["tcp"] == 4
    assert await value(api, "multi.c") == 1
    assert await value(api, "multi.g", "last") == 2
    assert await value(api, "multi.t", "count") == 2
    assert await value(api, "multi.t", "max") == 5


async def test_tcp_final_line_without_newline_counts_at_close(gateway: Gateway, api: Api) -> None:
    async with tcp_client(gateway) as (reader, writer):
        writer.write(b"eof.a:1|c\neof.b:7|c")
        writer.write_eof()
        await writer.drain()
        assert await closed_by_server(reader)
    await wait_until(lambda: lines(gateway) == 2, lambda: "timed out waiting for both lines")
    assert await value(api, "eof.a") == 1
    assert await value(api, "eof.b") == 7


async def test_tcp_long_line_is_rejected_and_the_connection_goes_on(
    gateway: Gateway, api: Api
) -> None:
    t = gateway.telemetry
    async with tcp_client(gateway) as (_, writer):
        # A long partial line is rejected before its newline arrives, not buffered whole.
        writer.write(b"long:" + b"1" * 9000)
        await writer.drain()
        await wait_until(
            lambda: t.rejects[("tcp", "line_too_long")] == 1,
            lambda: "timed out waiting for the reject",
        )
        writer.write(b"111|c\nafter.a:1|c\n")
        # A long line that arrives whole with its newline.
        writer.write(b"long:" + b"2" * 9000 + b"|c\nafter.b:2|c\n")
        await writer.drain()
        await wait_until(
            lambda: t.accepted["tcp"] == 2, lambda: "timed out waiting for the next lines"
        )
    assert t.rejects[("tcp", "line_too_long")] == 2
    assert await value(api, "after.a") == 1
    assert await value(api, "after.b") == 2
    status, body = await api.query(name="long", agg="sum", since=SINCE, until=UNTIL)
    assert status == 404, body


async def test_tcp_connection_limit(tmp_path: Path) -> None:
    async with running(transports_config(tmp_path, max_connections=2), ManualClock()) as (gw, api):
        t = gw.telemetry
        async with tcp_client(gw) as (_, w1), tcp_client(gw) as (_, w2):
            await wait_until(
                lambda: t.tcp_connections == 2, lambda: "timed out waiting for two connections"
            )
            async with tcp_client(gw) as (r3, _):
                assert await closed_by_server(r3)
            assert t.tcp_connections_refused == 1
            w1.write(b"limit:1|c\n")
            w2.write(b"limit:2|c\n")
            await w1.drain()
            await w2.drain()
            await wait_until(
                lambda: lines(gw) == 2,
                lambda: "timed out waiting for the lines of the open connections",
            )
        assert await value(api, "limit") == 3
        async with api.session.get(api.base + "/metrics") as r:
            text = await r.text()
        assert "statsd_gateway_tcp_connections_refused_total 1.0" in text


async def test_tcp_idle_is_measured_on_the_gateways_clock(
    gateway: Gateway, clock: ManualClock
) -> None:
    """tcp.idle_timeout (300 s) passes on the injected clock, not in real time: the connection
    silent that long is closed by the daemon, the one that sent a line meanwhile is kept."""
    tcp = gateway.tcp
    assert tcp is not None
    async with tcp_client(gateway) as (silent, _), tcp_client(gateway) as (busy_r, busy_w):
        await wait_until(
            lambda: len(tcp.connections) == 2, lambda: "timed out waiting for two connections"
        )
        assert tcp.close_idle() == 0
        clock.advance(200)
        busy_w.write(b"busy:1|c\n")
        await busy_w.drain()
        await wait_until(lambda: lines(gateway) == 1, lambda: "timed out waiting for the line")
        clock.advance(100)  # the silent one: 300 s without data; the busy one: 100 s
        assert tcp.close_idle() == 1
        assert await closed_by_server(silent)
        assert gateway.telemetry.tcp_idle_closed == 1
        await wait_until(
            lambda: len(tcp.connections) == 1, lambda: "timed out waiting for the closed one to go"
        )
        busy_w.write(b"busy:2|c\n")  # still open, still read
        await busy_w.drain()
        await wait_until(lambda: lines(gateway) == 2, lambda: "timed out waiting for the line")
        assert tcp.close_idle() == 0
        clock.advance(-3600)  # a step back restarts the count; it does not close early
        assert tcp.close_idle() == 0
        clock.advance(299)
        assert tcp.close_idle() == 0
        clock.advance(1)
        assert tcp.close_idle() == 1
        assert await closed_by_server(busy_r)
    assert gateway.telemetry.tcp_idle_closed == 2
    assert gateway.telemetry.accepted["tcp"] == 2


async def test_the_idle_reaper_wakes_when_the_next_connection_falls_idle(
    gateway: Gateway, clock: ManualClock
) -> None:
    tcp = gateway.tcp
    assert tcp is not None
    async with tcp_client(gateway) as (first, _):
        await wait_until(lambda: len(tcp.connections) == 1, lambda: "no connection")
        clock.advance(120)
        async with tcp_client(gateway) as (second, _):
            await wait_until(lambda: len(tcp.connections) == 2, lambda: "no second connection")
            ticks = Ticks(clock, 2)
            with pytest.raises(asyncio.CancelledError):
                await tcp.reap_idle(sleep=ticks)
            # The first falls idle 180 s on and is closed alone (the second has 120 s left);
            # then the second; then none is open: a whole timeout.
            assert ticks.asked == [180, 120, 300]
            assert gateway.telemetry.tcp_idle_closed == 2
            assert await closed_by_server(first)
            assert await closed_by_server(second)


async def test_tcp_lines_already_sent_survive_stop(tmp_path: Path) -> None:
    cfg = transports_config(tmp_path)
    gw = Gateway(cfg, clock=ManualClock(), flush_on_ticks=False)
    await gw.start()
    try:
        async with tcp_client(gw) as (_, writer):
            await wait_until(
                lambda: gw.telemetry.tcp_connections == 1,
                lambda: "timed out waiting for the connection",
            )
            writer.write(b"late.tcp:4|c\nlate.part:1")
            await writer.drain()
            await gw.stop()
    finally:
        await gw.stop()
    assert gw.telemetry.rejects[("tcp", "truncated_line")] == 1
    async with running(cfg, ManualClock()) as (_, api):
        assert await value(api, "late.tcp") == 4


# The pure variant sets STATSD_GATEWAY_PURE_PYTHON itself for the Gateways it starts, so both
# passes run it the same: the pure-Python pass skips it (tests/conftest.py).
@pytest.fixture(params=["native", pytest.param("pure", marks=pytest.mark.same_in_both_passes)])
def core(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each ingest core in turn, for Gateways started in this test."""
    if request.param == "native":
        require_native_core()
    else:
        monkeypatch.setenv(native.PURE_PYTHON_ENV, "1")
    return str(request.param)


@pytest.mark.parametrize("transport", ["udp", "unixgram"])
async def test_datagrams_already_sent_survive_stop(
    tmp_path: Path, transport: str, core: str
) -> None:
    cfg = transports_config(tmp_path)
    gw = Gateway(cfg, clock=ManualClock(), flush_on_ticks=False)
    await gw.start()
    # Sent without yielding to the event loop, then stop() at once: the loop's listeners read
    # none of them before stop() (the native UDP readers may have, or not).
    datagrams = [b"late.dgram:1|c\nlate.dgram:2|c"] * 8  # a Unix socket queues 10 by default
    try:
        if transport == "udp":
            send_udp(gw, *datagrams)
        else:
            assert gw.unix_path is not None
            send_unix(gw.unix_path, *datagrams)
    finally:
        await gw.stop()
    assert gw.telemetry.packets[transport] == len(datagrams)
    async with running(cfg, ManualClock()) as (_, api):
        assert await value(api, "late.dgram") == 3 * len(datagrams)


# --- Unix datagram socket -----------------------------------------------------------------------


def send_unix(path: str, *datagrams: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        for d in datagrams:
            s.sendto(d, path)


async def test_unix_datagrams_are_counted_and_queryable(gateway: Gateway, api: Api) -> None:
    assert gateway.unix_path is not None
    assert stat.S_IMODE(os.stat(gateway.unix_path).st_mode) == 0o622
    send_unix(gateway.unix_path, b"uds.c:1|c|#env:prod\nuds.t:10|ms", b"uds.c:2|c\nbad line")
    t = gateway.telemetry
    await wait_until(
        lambda: t.packets["unixgram"] == 2, lambda: "timed out waiting for two datagrams"
    )
    assert t.lines["unixgram"] == 4
    assert t.accepted["unixgram"] == 3
    assert t.rejects[("unixgram", "malformed_line")] == 1
    assert await value(api, "uds.c") == 3
    assert await value(api, "uds.t", "max") == 10
    async with api.session.get(api.base + "/metrics") as r:
        text = await r.text()
    assert 'statsd_gateway_lines_received_total{transport="unixgram"} 4.0' in text


async def test_unix_socket_file_is_replaced_when_stale_and_removed_at_stop(
    tmp_path: Path,
) -> None:
    cfg = transports_config(tmp_path)
    path = cfg.unix.path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as stale:
        stale.bind(path)  # left behind, as by a crash: nobody receives on it once closed
    async with running(cfg, ManualClock()) as (gw, api):
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        send_unix(path, b"fresh:1|c")
        await wait_until(
            lambda: gw.telemetry.packets["unixgram"] == 1,
            lambda: "timed out waiting for the datagram",
        )
        assert await value(api, "fresh") == 1
    assert not os.path.exists(path)


async def test_unix_path_that_is_not_a_socket_is_an_error(tmp_path: Path) -> None:
    cfg = transports_config(tmp_path)
    Path(cfg.unix.path).write_text("not a socket")
    gw = Gateway(cfg, clock=ManualClock(), flush_on_ticks=False)
    try:
        with pytest.raises(OSError, match="not a socket"):
            await gw.start()
    finally:
        await gw.stop()
    assert Path(cfg.unix.path).read_text() == "not a socket"


# --- UDP ---------------------------------------------------------------------------------------


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
async def test_udp_over_ipv6(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, udp={"listen": "[::1]:0"}), ManualClock()) as (
        gw,
        api,
    ):
        assert gw.udp_address is not None and gw.udp_address[0] == "::1"
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.sendto(b"v6:5|c\nv6:1|c", gw.udp_address)
        await wait_until(
            lambda: gw.telemetry.packets["udp"] == 1, lambda: "timed out waiting for the datagram"
        )
        assert await value(api, "v6") == 6
        drops = gw.udp.kernel_drops() if gw.udp is not None else None
        if os.path.exists("/proc/net/udp6"):
            assert drops == 0


@pytest.mark.skipif(not os.path.exists("/proc/net/udp"), reason="the kernel reports no drops")
async def test_kernel_drops_are_exported(tmp_path: Path) -> None:
    # A tiny receive buffer, and datagrams sent while nothing can read: the kernel drops. The
    # Python listener cannot read while this test holds the loop; the native readers run on
    # threads of their own, and are held (as at a flush's swap) so they cannot drain the socket.
    async with running(make_config(tmp_path, udp={"read_buffer": 4096}), ManualClock()) as (
        gw,
        api,
    ):
        assert gw.udp_address is not None
        with gw.aggregator.live_held(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(200):
                s.sendto(b"flood:1|c\n" + b"x" * 1000 + str(i).encode(), gw.udp_address)
        assert gw.udp is not None
        drops = gw.udp.kernel_drops()
        assert drops is not None and drops > 0
        async with api.session.get(api.base + "/metrics") as r:
            text = await r.text()
        exported = [
            line
            for line in text.splitlines()
            if line.startswith('statsd_gateway_kernel_drops_total{transport="udp"}')
        ]
        assert len(exported) == 1 and float(exported[0].split()[-1]) >= drops


def test_proc_drops_row_is_found_by_inode(tmp_path: Path) -> None:
    proc = tmp_path / "udp"
    proc.write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
        "timeout inode ref pointer drops\n"
        "  1: 0100007F:1FBD 00000000:0000 07 00000000:00000000 00:00000000 00000000     0"
        "        0 4242 2 0000000000000000 17\n"
        "  2: 0100007F:1FBE 00000000:0000 07 00000000:00000000 00:00000000 00000000     0"
        "        0 4343 2 0000000000000000 3\n"
    )
    assert read_proc_drops(str(proc), 4343) == 3
    assert read_proc_drops(str(proc), 4242) == 17
    assert read_proc_drops(str(proc), 1) is None
    assert read_proc_drops(str(tmp_path / "absent"), 4242) is None


# --- the composition root ----------------------------------------------------------------------


async def test_all_transports_log_their_address_and_show_in_metrics(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="statsd_gateway")
    async with running(transports_config(tmp_path), ManualClock()) as (gw, api):
        assert gw.tcp_address is not None and gw.tcp_address[1] != 0
        assert f"listening tcp 127.0.0.1:{gw.tcp_address[1]}" in caplog.text
        assert f"listening unixgram {gw.unix_path}" in caplog.text
        assert "udp receive buffer:" in caplog.text
        assert gw.udp_address is not None and gw.unix_path is not None
        line = b"everywhere:1|c\n"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(line, gw.udp_address)
        send_unix(gw.unix_path, line)
        async with tcp_client(gw) as (_, writer):
            writer.write(line)
            await writer.drain()
            t = gw.telemetry
            await wait_until(
                lambda: all(t.accepted[k] == 1 for k in ("udp", "tcp", "unixgram")),
                lambda: "timed out waiting for all three",
            )
        assert await value(api, "everywhere") == 3
        async with api.session.get(api.base + "/metrics") as r:
            text = await r.text()
        for transport in ("udp", "tcp", "unixgram"):
            assert f'statsd_gateway_packets_received_total{{transport="{transport}"}}' in text


async def test_reload_says_listener_changes_need_a_restart(gateway: Gateway) -> None:
    cfg = gateway.config
    new = replace(
        cfg,
        tcp=replace(cfg.tcp, listen="127.0.0.1:1"),
        unix=replace(cfg.unix, path=cfg.unix.path + ".new"),
    )
    assert {"tcp", "unix"} <= set(gateway.reload(new))


# --- config ------------------------------------------------------------------------------------


def test_transport_defaults_are_off() -> None:
    cfg = parse_config("")
    assert (cfg.tcp.enabled, cfg.tcp.listen, cfg.tcp.tenant) == (False, "127.0.0.1:8125", "default")
    assert (cfg.tcp.max_connections, cfg.tcp.idle_timeout) == (1024, 300.0)
    assert (cfg.unix.enabled, cfg.unix.path, cfg.unix.tenant) == (
        False,
        "./data/statsd.sock",
        "default",
    )
    assert parse_mode(cfg.unix.mode) == 0o622


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("tcp:\n  listen: nope\n", "tcp.listen"),
        ("tcp:\n  max_connections: 0\n", "tcp.max_connections"),
        ("tcp:\n  idle_timeout: soon\n", "tcp.idle_timeout"),
        ("tcp:\n  backlog: 5\n", "tcp.backlog"),
        ("unix:\n  mode: 0660\n", "unix.mode"),  # YAML reads this as the integer 432
        ('unix:\n  mode: "0999"\n', "unix.mode"),
        ("unix:\n  path: ''\n", "unix.path"),
    ],
)
def test_transport_config_errors_name_the_key(text: str, path: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(text)
    assert e.value.path == path
