"""The relay's rules, in-process: the packing table (run through the Python packer and, where it
is built, the native one), the pure-Python relay against a real UDP peer with its ticks injected
(nothing waits for time to pass), its bounded buffer, its send errors, its stop, the `relay:`
section of the config, and /readyz when a relay stops."""

from __future__ import annotations

import asyncio
import select
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from statsd_gateway.config import parse_config
from statsd_gateway.errors import ConfigError, ListenError
from statsd_gateway.native_relay import NativeRelay
from statsd_gateway.relay import (
    PythonRelay,
    count_lines,
    open_socket,
    pack_lines,
)
from tests.conftest import ManualClock, Ticks, make_config, require_native_core, running, send_udp

Packer = Callable[[bytes, int], list[tuple[bytes, int]]]


def python_packer(data: bytes, packet_bytes: int) -> list[tuple[bytes, int]]:
    return list(pack_lines(data, packet_bytes))


def native_packer(data: bytes, packet_bytes: int) -> list[tuple[bytes, int]]:
    packed: list[tuple[bytes, int]] = require_native_core().relay_pack(data, packet_bytes)
    return packed


@pytest.fixture(params=["python", "native"])
def packer(request: pytest.FixtureRequest) -> Packer:
    """Each packer in turn: relay.pack_lines, and sg_relay.c's (where it is built)."""
    return python_packer if request.param == "python" else native_packer


# (data, packet_bytes, the datagrams it makes)
PACKING = [
    pytest.param(b"a:1|c", 16, [b"a:1|c"], id="one line, no newline"),
    pytest.param(b"a:1|c\n", 16, [b"a:1|c"], id="the final newline is not sent"),
    pytest.param(b"a:1|c\nb:2|c\n", 16, [b"a:1|c\nb:2|c"], id="lines joined by newlines"),
    pytest.param(b"aaaa\nbbbb\ncccc", 9, [b"aaaa\nbbbb", b"cccc"], id="exactly packet_bytes"),
    pytest.param(b"aaaa\nbbbb\ncccc", 8, [b"aaaa", b"bbbb", b"cccc"], id="one byte short"),
    pytest.param(b"aaaa", 4, [b"aaaa"], id="a line of exactly packet_bytes"),
    pytest.param(b"a\n" + b"L" * 20 + b"\nb", 8, [b"a", b"L" * 20, b"b"], id="long line alone"),
    pytest.param(b"L" * 9 + b"\n" + b"M" * 9, 8, [b"L" * 9, b"M" * 9], id="two long lines"),
    pytest.param(b"a\n\n\nb\n\r\n\rc", 16, [b"a\nb\n\rc"], id="empty and lone CR not lines"),
    pytest.param(b"a:1|c\r\nb:2|c\r\n", 16, [b"a:1|c\r\nb:2|c\r"], id="CR kept as received"),
    pytest.param(b"bad line\n\xff\xfe:1|c", 64, [b"bad line\n\xff\xfe:1|c"], id="sent unparsed"),
    pytest.param(b"\n\n\r\n", 16, [], id="no line at all"),
    pytest.param(b"", 16, [], id="nothing"),
]


@pytest.mark.parametrize(("data", "packet_bytes", "want"), PACKING)
def test_packing(packer: Packer, data: bytes, packet_bytes: int, want: list[bytes]) -> None:
    packed = packer(data, packet_bytes)
    assert [p for p, _ in packed] == want
    assert [n for _, n in packed] == [p.count(b"\n") + 1 for p in want]
    assert sum(n for _, n in packed) == count_lines(data)


# ---- the pure-Python relay against a real peer


@pytest.fixture
def peer() -> Iterator[socket.socket]:
    """The relay's target: a UDP socket on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(5.0)
        yield s


def address_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()
    return f"{host}:{port}"


def received(peer: socket.socket, n: int) -> list[bytes]:
    """The next `n` datagrams the peer gets (each recv waits at most its timeout)."""
    return [peer.recv(65536) for _ in range(n)]


def nothing_waiting(peer: socket.socket) -> bool:
    """No datagram has arrived (asked of the kernel without waiting)."""
    readable, _, _ = select.select([peer], [], [], 0)
    return not readable


class Gate:
    """An injected sleep that returns only when the test opens it: each open() is one tick."""

    def __init__(self) -> None:
        self.asked: list[float] = []
        self._ticks: asyncio.Queue[None] = asyncio.Queue()

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        await self._ticks.get()

    async def open(self) -> None:
        self._ticks.put_nowait(None)
        for _ in range(3):  # the relay's task runs its tick
            await asyncio.sleep(0)


async def test_lines_wait_for_the_tick_then_go_in_packets(peer: socket.socket) -> None:
    relay = PythonRelay(address_of(peer), packet_bytes=512)
    gate = Gate()
    task = asyncio.create_task(relay.run(sleep=gate))
    relay.append(b"a:1|c\nb:2|c")
    relay.append(b"c:3|ms\n")
    await asyncio.sleep(0)
    assert nothing_waiting(peer)  # only a tick (or a full buffer) sends
    await gate.open()
    assert received(peer, 1) == [b"a:1|c\nb:2|c\nc:3|ms"]
    relay.append(b"d:4|g")
    await asyncio.sleep(0)
    assert nothing_waiting(peer)
    await gate.open()
    assert received(peer, 1) == [b"d:4|g"]
    assert gate.asked == [1.0, 1.0, 1.0]  # once a second
    task.cancel()
    assert relay.counts()[:3] == (4, 2, len(b"a:1|c\nb:2|c\nc:3|ms") + 5)
    await relay.close()


async def test_a_full_buffer_is_sent_at_once(peer: socket.socket) -> None:
    relay = PythonRelay(address_of(peer), packet_bytes=512, ready_bytes=100)
    relay.start()  # ticks every second: the test is over long before the first
    try:
        line = b"x" * 49
        relay.append(line)
        await asyncio.sleep(0)
        assert nothing_waiting(peer)
        relay.append(line)  # 100 bytes with their newlines: ready
        await asyncio.sleep(0)
        assert received(peer, 1) == [line + b"\n" + line]
    finally:
        await relay.close()


async def test_a_full_buffer_drops_and_counts_whole_datagrams(peer: socket.socket) -> None:
    relay = PythonRelay(address_of(peer), packet_bytes=512, buffer_bytes=20)
    relay.append(b"a:1|c\nb:1|c\n")  # 12 bytes
    relay.append(b"c:1|c\nd:1|c\ne:1|c")  # 18 more: does not fit
    relay.append(b"f:1|c")  # 6 with its newline: fits
    relay.append(b"\n\n\n\n\n\n\n\n\n")  # no line: nothing to count
    await relay.close()
    assert received(peer, 1) == [b"a:1|c\nb:1|c\nf:1|c"]
    counts = relay.counts()
    assert counts.lines == 3
    assert counts.dropped == {"buffer_full": 3, "send_error": 0, "stopped": 0}


async def test_a_refused_peer_is_counted_and_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gone:
        gone.bind(("127.0.0.1", 0))
        address = address_of(gone)
    relay = PythonRelay(address, packet_bytes=512)
    for i in range(3):  # the kernel reports the ICMP answer to one send on the next
        relay.append(b"lost:%d|c" % i)
        relay.flush()
    assert relay.counts().errors.get("ECONNREFUSED", 0) >= 1
    # Each refused send was retried once: the datagram it kept from going out went then.
    assert relay.counts().packets == 3
    assert relay.report()
    assert "failed sends: ECONNREFUSED" in caplog.text
    await relay.close()


async def test_close_sends_what_is_buffered_and_drops_what_comes_after(
    peer: socket.socket,
) -> None:
    relay = PythonRelay(address_of(peer), packet_bytes=512)
    relay.start()
    relay.append(b"last:1|c")
    await relay.close()  # long before the first tick
    assert received(peer, 1) == [b"last:1|c"]
    relay.append(b"late:1|c\nlater:1|c")
    assert relay.counts().dropped["stopped"] == 2
    assert relay.problem() is None


async def test_a_dead_tick_task_shows(peer: socket.socket) -> None:
    relay = PythonRelay(address_of(peer), packet_bytes=512)

    async def broken(seconds: float) -> None:
        raise RuntimeError("a bug in the loop itself")

    relay._task = asyncio.create_task(relay.run(sleep=broken))
    with pytest.raises(RuntimeError):
        await relay._task
    assert relay.problem() == "the relay's tick task has stopped"
    await relay.close()


async def test_a_failing_tick_is_logged_and_the_ticks_go_on(
    peer: socket.socket, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay = PythonRelay(address_of(peer), packet_bytes=512)
    calls: list[int] = []

    def failing() -> None:
        calls.append(1)
        raise RuntimeError("boom")

    monkeypatch.setattr(relay, "tick", failing)
    ticks = Ticks(ManualClock(), n=3)
    with pytest.raises(asyncio.CancelledError):
        await relay.run(sleep=ticks)
    assert len(calls) == 3
    assert "internal error in the relay" in caplog.text
    await relay.close()


def test_a_name_that_does_not_resolve_stops_the_start() -> None:
    with pytest.raises(ListenError, match=r"relay cannot send to nowhere\.invalid:8125"):
        open_socket("nowhere.invalid:8125")


# ---- the config section


def test_relay_is_off_by_default_and_takes_host_port() -> None:
    assert parse_config("").relay.address is None
    cfg = parse_config('relay:\n  address: "[::1]:9125"\n  packet_bytes: 8192\n')
    assert (cfg.relay.address, cfg.relay.packet_bytes) == ("[::1]:9125", 8192)
    assert parse_config("relay:\n  address: statsd.example:8125\n").relay.packet_bytes == 1400


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("relay:\n  address: nope\n", "relay.address: 'nope' is not host:port"),
        ("relay:\n  address: 127.0.0.1:0\n", "relay.address: '127.0.0.1:0' has port 0"),
        ("relay:\n  address: 127.0.0.1:70000\n", "relay.address: '127.0.0.1:70000' is not"),
        ("relay:\n  address: 8125\n", "relay.address: expected a non-empty string"),
        ("relay:\n  packet_bytes: 511\n", "relay.packet_bytes: expected an integer from 512 to"),
        ("relay:\n  packet_bytes: 65508\n", "relay.packet_bytes: expected an integer from 512"),
        ("relay:\n  adress: 127.0.0.1:1\n", "relay.adress: unknown key"),
    ],
)
def test_bad_relay_settings_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(text)
    assert str(e.value).startswith(message), e.value


# ---- in the gateway (on the ingest core the suite runs)


async def test_readyz_names_a_relay_that_stopped(
    tmp_path: Path, clock: ManualClock, peer: socket.socket
) -> None:
    cfg = make_config(tmp_path, relay={"address": address_of(peer)})
    async with running(cfg, clock) as (gw, api):
        assert (await api.request("GET", "/readyz", key=None))[0] == 200
        send_udp(gw, b"in.process:1|c")
        assert await asyncio.to_thread(peer.recv, 65536) == b"in.process:1|c"
        relay = gw.relay
        if isinstance(relay, NativeRelay):
            relay.handle.stop()  # as if the sender thread had ended by itself
            want = "the relay's sender thread has stopped"
        else:
            assert isinstance(relay, PythonRelay) and relay._task is not None
            relay._task.cancel()  # as if the tick task had ended by itself
            await asyncio.sleep(0)
            want = "the relay's tick task has stopped"
        status, body = await api.request("GET", "/readyz", key=None)
        assert status == 503 and want in body["error"]["message"], body
