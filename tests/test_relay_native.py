"""The native relay (sg_relay.c) as its users see it: it packs as relay.pack_lines does (random
datagrams through both), its sender thread sends within its period and everything buffered at
its stop, a full buffer and a refused peer are counted and never stop it, and lines offered
after the stop are counted as such. Nothing here waits for time to pass but a recv with a
deadline."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statsd_gateway.relay import (
    BUFFER_BYTES,
    DROP_REASONS,
    READY_BYTES,
    count_lines,
    pack_lines,
)
from tests.conftest import PARITY, require_native_core
from tests.daemon import poll_until

_native = require_native_core(module=True)
SENDER_THREAD = "sgw-relay"
# Bytes a packing example is made of: newlines and carriage returns, so that empty lines, lone
# "\r" and lines of every length around packet_bytes come up often.
PIECES = st.lists(
    st.one_of(
        st.sampled_from([b"\n", b"\r", b"\r\n", b"\n\n"]),
        st.binary(min_size=1, max_size=40),
        st.binary(min_size=60, max_size=120),
    ),
    max_size=40,
).map(b"".join)


@settings(PARITY, max_examples=min(PARITY.max_examples, 500))
@given(data=PIECES, packet_bytes=st.integers(1, 100))
def test_the_native_packer_is_pack_lines(data: bytes, packet_bytes: int) -> None:
    want = list(pack_lines(data, packet_bytes))
    assert _native.relay_pack(data, packet_bytes) == want
    # The rule itself: every line once, in order; a packet over the size holds one line; no
    # packet could have taken the first line of the next.
    lines = [line for line in data.split(b"\n") if line not in (b"", b"\r")]
    assert [line for packet, _ in want for line in packet.split(b"\n")] == lines
    assert sum(n for _, n in want) == count_lines(data) == len(lines)
    for (packet, n), (after, _) in zip(want, [*want[1:], (b"", 0)][: len(want)], strict=True):
        assert len(packet) <= packet_bytes or n == 1
        first = after.split(b"\n")[0]
        assert not after or len(packet) + 1 + len(first) > packet_bytes


@pytest.fixture
def peer() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(5.0)
        yield s


@pytest.fixture
def sender(peer: socket.socket) -> Iterator[socket.socket]:
    """The relay's own socket: connected to the peer, non-blocking (relay.open_socket's)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(peer.getsockname())
        s.setblocking(False)
        yield s


def relay_on(sock: socket.socket, **kw: Any) -> Any:
    settings = {
        "packet_bytes": 512,
        "buffer_bytes": BUFFER_BYTES,
        "ready_bytes": READY_BYTES,
        "period": 3600.0,  # sent by stop() (or a full buffer) only, unless a test says so
        **kw,
    }
    return _native.Relay(sock.fileno(), **settings)


def sender_threads() -> int:
    count = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            count += (task / "comm").read_text(encoding="utf-8").strip() == SENDER_THREAD
        except FileNotFoundError:
            continue
    return count


def test_stop_sends_everything_buffered(peer: socket.socket, sender: socket.socket) -> None:
    relay = relay_on(sender, packet_bytes=600)
    # Another test's sender, joined, may be listed by the kernel a moment longer.
    poll_until(lambda: True if sender_threads() == 0 else None, lambda: "a thread is left")
    relay.start()
    assert relay.running and sender_threads() == 1
    lines = [b"m%d:%d|c" % (i, i) for i in range(300)]
    for i in range(0, 300, 10):
        relay.append(b"\n".join(lines[i : i + 10]) + b"\n")
    relay.stop()
    assert not relay.running
    # Joined; the kernel may list the task a moment longer.
    poll_until(lambda: True if sender_threads() == 0 else None, lambda: "the thread is left")
    got: list[bytes] = []
    while len(got) < 300:
        packet = peer.recv(65536)
        assert len(packet) <= 600
        got += packet.split(b"\n")
    assert got == lines
    sent, packets, nbytes, dropped, errors = relay.counts()
    assert (sent, dropped, errors) == (300, (0, 0, 0), {})
    assert nbytes == sum(map(len, lines)) + 300 - packets
    relay.append(b"late:1|c")
    assert relay.counts()[3] == (0, 0, 1)  # stopped


def test_the_period_sends_without_a_stop(peer: socket.socket, sender: socket.socket) -> None:
    relay = relay_on(sender, period=0.05)
    relay.start()
    try:
        relay.append(b"quiet:1|c")
        assert peer.recv(65536) == b"quiet:1|c"  # within the recv's deadline, not at a stop
    finally:
        relay.stop()


def test_ready_bytes_send_at_once(peer: socket.socket, sender: socket.socket) -> None:
    relay = relay_on(sender, ready_bytes=1000)
    relay.start()
    try:
        relay.append(b"x" * 999 + b"\n")
        assert peer.recv(65536) == b"x" * 999  # the period is an hour
    finally:
        relay.stop()


def test_a_full_buffer_drops_and_counts(peer: socket.socket, sender: socket.socket) -> None:
    relay = relay_on(sender, buffer_bytes=20)
    relay.append(b"a:1|c\nb:1|c\n")
    relay.append(b"c:1|c\nd:1|c\ne:1|c")
    relay.append(b"f:1|c")
    relay.stop()  # never started: stop() sends it on this thread
    assert peer.recv(65536) == b"a:1|c\nb:1|c\nf:1|c"
    assert relay.counts()[3] == (3, 0, 0)


def test_a_refused_peer_is_counted_and_the_sender_goes_on() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gone:
        gone.bind(("127.0.0.1", 0))
        port = gone.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("127.0.0.1", port))
        s.setblocking(False)
        relay = relay_on(s, ready_bytes=1)  # every append is sent at once
        relay.start()

        def progress() -> int:
            _, packets, _, dropped, errors = relay.counts()
            return packets + sum(dropped) + sum(errors.values())

        try:
            for i in range(3):  # one send each: the next one reports the ICMP answer
                before = progress()
                relay.append(b"refused:%d|c" % i)
                poll_until(
                    lambda before=before: True if progress() > before else None,
                    lambda: f"the relay did not send: {relay.counts()}",
                )
            assert relay.running
        finally:
            relay.stop()
        _, packets, _, dropped, errors = relay.counts()
    assert errors.get(errno.ECONNREFUSED, 0) >= 1
    assert packets == 3  # each refused send retried once: the datagram it held went then
    assert dropped == (0, 0, 0)


def test_core_hands_every_datagram_it_parses_to_its_relay(
    peer: socket.socket, sender: socket.socket
) -> None:
    relay = relay_on(sender)
    core = _native.Core(_native.Gauges(), lambda *a: (-1, 0.0, 0.0), interval=10.0)
    core.set_relay(relay)
    core.feed(b"a:1|c\nnot a line\n", 1, 1000.0)
    core.feed(b"b:2|c", 2, 1000.0)
    core.set_relay(None)
    core.feed(b"c:3|c", 1, 1000.0)
    relay.stop()
    assert peer.recv(65536) == b"a:1|c\nnot a line\nb:2|c"
    with pytest.raises(TypeError):
        core.set_relay(object())


def test_the_drop_reasons_are_the_cores() -> None:
    assert len(DROP_REASONS) == _native.RELAY_DROPS
