"""The relay as a user sees it: the daemon (a subprocess, on each ingest core) with relay.address
pointing at a UDP socket the test binds. What arrives there is exactly what was sent over UDP,
TCP and the Unix socket, line for line and byte for byte, in datagrams of at most packet_bytes
(a longer line alone); HTTP points are not relayed; a quiet line arrives within about a second;
a peer that refuses (ICMP) costs ingest nothing and shows in the counters; SIGTERM sends what
the relay holds; a reload says a new address needs a restart. The tests wait on sockets with a
deadline or on what the daemon reports, never for time to pass."""

from __future__ import annotations

import re
import select
import signal
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_native_core
from tests.daemon import Daemon, generated_key, poll_until, poll_value, wait_for_log, write_config
from tests.test_e2e import CORE_PARAMS, start_on

PACKET_BYTES = 512
# The longest the test waits for a datagram the daemon should send (a failure's bound only).
DEADLINE = 10.0


@pytest.fixture(params=CORE_PARAMS)  # its pure variant is skipped in the pure-Python pass
def ingest_core(request: pytest.FixtureRequest) -> str:
    """Each ingest core in turn (the native one where it is built)."""
    if request.param == "native":
        require_native_core()
    return str(request.param)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 108 bytes: pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="sgw") as d:
        yield Path(d)


@pytest.fixture
def peer() -> Iterator[socket.socket]:
    """The relay's target: a UDP socket on loopback, with room for every test's datagrams."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        s.bind(("127.0.0.1", 0))
        yield s


def address_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()
    return f"{host}:{port}"


def relay_config(
    tmp_path: Path, socket_dir: Path, relay_to: str, *, flush_interval: str = "1s"
) -> Path:
    """The daemon on UDP, TCP and a Unix socket, relaying to `relay_to`."""
    path = tmp_path / "gw.yaml"
    write_config(path, tmp_path / "state", flush_interval=flush_interval)
    path.write_text(
        path.read_text(encoding="utf-8")
        + "tcp:\n  enabled: true\n  listen: 127.0.0.1:0\n"
        + f"unix:\n  enabled: true\n  path: {socket_dir / 'statsd.sock'}\n"
        + f"relay:\n  address: {relay_to}\n  packet_bytes: {PACKET_BYTES}\n",
        encoding="utf-8",
    )
    return path


def tcp_port(d: Daemon) -> int:
    for line in d.lines:
        found = re.search(r"listening tcp 127\.0\.0\.1:(\d+)", line)
        if found:
            return int(found.group(1))
    raise AssertionError(f"no tcp listener in the log:\n{d.stderr}")


def send_tcp(d: Daemon, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", tcp_port(d)), timeout=5) as s:
        s.sendall(data)


def send_unix(path: Path, data: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(data, str(path))


def receive(peer: socket.socket, want: Counter[bytes], d: Daemon) -> list[bytes]:
    """The datagrams the peer gets until their lines include `want`, each checked against the
    size rule; fails after DEADLINE."""
    got: list[bytes] = []
    lines: Counter[bytes] = Counter()
    deadline = time.monotonic() + DEADLINE
    while lines & want != want:
        left = deadline - time.monotonic()
        readable, _, _ = select.select([peer], [], [], max(left, 0))
        if not readable:
            pytest.fail(f"the peer got {lines}, not all of {want}\n{d.stderr}")
        packet = peer.recv(65536)
        got.append(packet)
        lines.update(packet.split(b"\n"))
    return got


def leftovers(peer: socket.socket) -> list[bytes]:
    """Datagrams that have arrived and were not read (asked of the kernel without waiting)."""
    out = []
    while select.select([peer], [], [], 0)[0]:
        out.append(peer.recv(65536))
    return out


def test_every_line_arrives_as_sent_in_packets_of_at_most_packet_bytes(
    tmp_path: Path, socket_dir: Path, peer: socket.socket, daemons: list[Daemon], ingest_core: str
) -> None:
    d = start_on(ingest_core, relay_config(tmp_path, socket_dir, address_of(peer)), daemons)
    key = generated_key(tmp_path / "state")
    status, body, _ = d.request(
        "POST", "/v1/metrics/batch", key, {"points": [{"name": "relay.http", "value": 1}]}
    )
    assert status == 200, body
    long_line = b"relay.long:1|c|#note:" + b"x" * PACKET_BYTES  # longer than a packet
    udp = [b"relay.udp:%d|c" % i for i in range(100)] + [b"not a statsd line", b"\xff\xfe:1|c"]
    tcp = [b"relay.tcp:%d|ms" % i for i in range(100)] + [long_line]
    unix = [b"relay.uds:1|c|#env:prod\r", b"relay.uds:2|c"]  # the \r is relayed as received
    for i in range(0, len(udp), 17):
        d.send_udp(b"\n".join(udp[i : i + 17]))
    send_tcp(d, b"\n".join(tcp) + b"\n")
    send_unix(socket_dir / "statsd.sock", b"\n".join(unix) + b"\n\n")
    want = Counter(udp + tcp + unix)
    packets = receive(peer, want, d)
    assert Counter(line for p in packets for line in p.split(b"\n")) == want
    for packet in packets:
        assert len(packet) <= PACKET_BYTES or packet == long_line, packet
    assert long_line in packets  # alone in its own datagram
    # Each transport's lines keep their order.
    arrived = [line for p in packets for line in p.split(b"\n")]
    for sent in (udp, tcp, unix):
        assert [line for line in arrived if line in set(sent)] == sent

    def counted() -> bool | None:
        lines = d.self_metric("statsd_gateway_relay_lines_total")
        return True if lines == len(want) else None

    poll_until(counted, lambda: f"relay_lines_total is not {len(want)}\n{d.stderr}")
    assert d.self_metric("statsd_gateway_relay_packets_total") == len(packets)
    assert d.self_metric("statsd_gateway_relay_bytes_total") == sum(map(len, packets))
    poll_value(d, key, sum(range(100)), name="relay.udp", agg="sum")  # ingest as ever
    assert d.terminate() == 0, d.stderr
    assert leftovers(peer) == []  # nothing more: no HTTP point, no line twice


def test_a_quiet_line_arrives_within_about_a_second(
    tmp_path: Path, socket_dir: Path, peer: socket.socket, daemons: list[Daemon], ingest_core: str
) -> None:
    d = start_on(ingest_core, relay_config(tmp_path, socket_dir, address_of(peer)), daemons)
    for line in (b"quiet.udp:1|c", b"quiet.tcp:1|c"):
        sent = time.monotonic()
        if line.startswith(b"quiet.udp"):
            d.send_udp(line)
        else:
            send_tcp(d, line + b"\n")
        assert receive(peer, Counter([line]), d) == [line]
        # The relay sends at least once a second; the rest is scheduling on a busy machine.
        assert time.monotonic() - sent < 2.0
    assert d.terminate() == 0, d.stderr


def test_ingest_goes_on_when_the_peer_refuses(
    tmp_path: Path, socket_dir: Path, daemons: list[Daemon], ingest_core: str
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gone:
        gone.bind(("127.0.0.1", 0))
        address = address_of(gone)  # closed: the kernel answers every datagram with ICMP
    d = start_on(ingest_core, relay_config(tmp_path, socket_dir, address), daemons)
    key = generated_key(tmp_path / "state")
    sent = [0]

    def refused() -> bool | None:
        # A line a round: the ICMP answer to one send is reported on the next one.
        d.send_udp(b"refused:1|c")
        sent[0] += 1
        errors = d.self_metric("statsd_gateway_relay_send_errors_total", error="ECONNREFUSED")
        return True if errors > 0 else None

    poll_until(refused, lambda: f"no ECONNREFUSED counted\n{d.stderr}")
    poll_value(d, key, sent[0], name="refused", agg="sum")
    status, body, _ = d.request("GET", "/readyz", None)
    assert status == 200, body
    assert d.terminate() == 0, d.stderr


def test_sigterm_sends_what_the_relay_holds(
    tmp_path: Path, socket_dir: Path, peer: socket.socket, daemons: list[Daemon], ingest_core: str
) -> None:
    cfg = relay_config(tmp_path, socket_dir, address_of(peer), flush_interval="1h")
    d = start_on(ingest_core, cfg, daemons)
    udp = [b"term.udp:%d|c" % i for i in range(2000)]
    tcp = [b"term.tcp:%d|c" % i for i in range(2000)]
    for i in range(0, len(udp), 50):
        d.send_udp(b"\n".join(udp[i : i + 50]))
    send_tcp(d, b"\n".join(tcp))  # the last line without its newline: it counts at EOF
    send_unix(socket_dir / "statsd.sock", b"term.uds:1|c")
    assert d.terminate() == 0, d.stderr  # at once: much is still in the relay's buffer
    want = Counter([*udp, *tcp, b"term.uds:1|c"])
    packets = receive(peer, want, d)
    assert Counter(line for p in packets for line in p.split(b"\n")) == want
    assert leftovers(peer) == []


def test_a_new_relay_address_needs_a_restart(
    tmp_path: Path, socket_dir: Path, peer: socket.socket, daemons: list[Daemon]
) -> None:
    cfg = relay_config(tmp_path, socket_dir, address_of(peer))
    d = Daemon(cfg)
    daemons.append(d)
    text = cfg.read_text(encoding="utf-8")
    cfg.write_text(text.replace(address_of(peer), "127.0.0.1:9"), encoding="utf-8")
    mark = len(d.lines)
    d.proc.send_signal(signal.SIGHUP)
    wait_for_log(d, "reloaded", mark)
    assert any(
        "reload: relay changed; it takes effect after a restart" in line for line in d.lines[mark:]
    ), d.stderr
    d.send_udp(b"still.here:1|c")
    assert receive(peer, Counter([b"still.here:1|c"]), d) == [b"still.here:1|c"]
    assert d.terminate() == 0, d.stderr
