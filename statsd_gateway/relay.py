"""The relay: every StatsD line received on UDP, TCP and the Unix datagram socket forwarded, as
received, over UDP to `relay.address` (for a migration: the peer keeps seeing the traffic).

Contract, of both implementations: `PythonRelay` here (the pure-Python path's, the reference)
and `native_relay.NativeRelay` (the native core's: sg_relay.c, fed by the reader threads
without the GIL, sending from a thread of its own):
- What goes: every datagram (or TCP line batch) handed to ingest, before it is parsed. A line
  is what lies between newlines, neither empty nor a lone "\\r" (the lines the parser counts,
  valid or not); it is sent byte for byte, its "\\r" included. HTTP points are not StatsD
  lines and are not relayed.
- Packing (`pack_lines`): the lines in the order they came, joined by "\\n" (none after the
  last), as many as fit in `packet_bytes`; a line longer than that goes alone in its own
  datagram.
- Timing: what is buffered is sent every PERIOD seconds at least, and at once when READY_BYTES
  are buffered.
- Never in ingest's way: at most BUFFER_BYTES wait; a datagram that does not fit is dropped and
  its lines counted (`buffer_full`). A failed send is counted by its errno and its lines
  dropped (`send_error`), after one retry for ECONNREFUSED: that is the peer's ICMP answer to
  an earlier datagram, reported on this send, which it kept from going out. Nothing raises
  into the event loop or ends the sender.
- close() sends what is buffered; a line offered after it is dropped and counted (`stopped`).
- `counts()` is read by the telemetry at scrape time; `problem()` says when the relay's task
  or thread ended by itself (/readyz). Lost lines are logged at WARNING, at most once a minute.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import NamedTuple

from statsd_gateway.config.values import parse_listen
from statsd_gateway.errors import ListenError

log = logging.getLogger(__name__)

PERIOD = 1.0  # seconds: the longest a received line waits in the buffer
BUFFER_BYTES = 4 * 1024 * 1024
READY_BYTES = 64 * 1024  # buffered past this, the relay sends at once
# What the native sender waits, in all, per round for room in a full socket buffer (its own
# thread may wait; the event loop may not: the pure-Python relay counts EAGAIN at once).
SEND_WAIT = 1.0  # sg_relay.h's SG_RELAY_WAIT
REPORT_TICKS = 60  # ticks between two warnings about lost lines
# In sg_relay.h's enum sg_relay_drop order.
DROP_REASONS = ("buffer_full", "send_error", "stopped")
CONNECTION_REFUSED = "ECONNREFUSED"


class RelayCounts(NamedTuple):
    """What a relay did since it started: lines, datagrams and bytes sent; lines dropped by
    reason; failed sends by error (errno name)."""

    lines: int
    packets: int
    bytes: int
    dropped: dict[str, int]
    errors: dict[str, int]


def is_line(line: bytes) -> bool:
    return bool(line) and line != b"\r"


def count_lines(data: bytes) -> int:
    """The lines of a datagram, as the contract counts them."""
    return sum(1 for line in data.split(b"\n") if is_line(line))


def pack_lines(data: bytes, packet_bytes: int) -> Iterator[tuple[bytes, int]]:
    """(datagram, lines in it) for the lines of `data`, by the packing rule."""
    packet: list[bytes] = []
    size = 0
    for line in data.split(b"\n"):
        if not is_line(line):
            continue
        if len(line) > packet_bytes:
            if packet:
                yield b"\n".join(packet), len(packet)
                packet, size = [], 0
            yield line, 1
            continue
        if packet and size + 1 + len(line) > packet_bytes:
            yield b"\n".join(packet), len(packet)
            packet, size = [], 0
        size += len(line) + (1 if packet else 0)
        packet.append(line)
    if packet:
        yield b"\n".join(packet), len(packet)


def errno_name(code: int | None) -> str:
    """ECONNREFUSED for 111; errno_N for a number the system does not name."""
    return errno.errorcode.get(code or 0, f"errno_{code}")


def open_socket(address: str) -> socket.socket:
    """A non-blocking UDP socket connected to `address`, resolved now (once, at start):
    connected, so that the kernel reports the peer's ICMP errors on later sends. A name that
    does not resolve is a ListenError naming the key; the start stops on it."""
    host, port = parse_listen(address)
    try:
        family, kind, proto, _, peer = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.connect(peer)
        except BaseException:
            sock.close()
            raise
    except OSError as e:
        reason = e.strerror or str(e)
        raise ListenError(f"relay cannot send to {address} (relay.address): {reason}") from e
    sock.setblocking(False)
    return sock


class Relay:
    """What the gateway holds of either relay: its tick task (each `period`: tick(), then the
    warning when lines were lost), its counts and its readiness."""

    def __init__(self, address: str, *, period: float) -> None:
        self.address = address
        self.period = period
        self._task: asyncio.Task[None] | None = None
        self._ticks = 0
        self._reported = RelayCounts(0, 0, 0, {}, {})
        self._quiet_until = 0  # the tick before which no warning is logged

    def counts(self) -> RelayCounts:
        raise NotImplementedError

    def tick(self) -> None:
        """Once a period, on the event loop."""

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="relay")

    async def run(self, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        """tick() every period until cancelled; a failure is logged and the ticks go on."""
        while True:
            await sleep(self.period)
            self._ticks += 1
            try:
                self.tick()
                if self._ticks >= self._quiet_until and self.report():
                    self._quiet_until = self._ticks + REPORT_TICKS
            except Exception:
                log.exception("internal error in the relay to %s", self.address)

    def report(self) -> bool:
        """Logs the lines lost and the sends failed since the last report, if any."""
        now, then = self.counts(), self._reported
        dropped = {k: n - then.dropped.get(k, 0) for k, n in now.dropped.items()}
        errors = {k: n - then.errors.get(k, 0) for k, n in now.errors.items()}
        self._reported = now
        lost = ", ".join(f"{k} {n}" for k, n in sorted(dropped.items()) if n)
        failed = ", ".join(f"{k} {n}" for k, n in sorted(errors.items()) if n)
        if not lost and not failed:
            return False
        log.warning(
            "relay to %s: lines dropped since the last report: %s; failed sends: %s",
            self.address,
            lost or "none",
            failed or "none",
        )
        return True

    def problem(self) -> str | None:
        """Why the relay is not working as it should, for /readyz."""
        if self._task is not None and self._task.done():
            return "the relay's tick task has stopped"
        return None

    async def close(self) -> None:
        """Stops the ticks; the subclass then sends what is buffered."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # A task that died by itself has said so in /readyz: its error is not stop()'s.
            await asyncio.gather(task, return_exceptions=True)


class PythonRelay(Relay):
    """The relay of the pure-Python path, on the event loop (see the module's contract): the
    buffer is a bytearray; a full socket buffer is EAGAIN, counted, its lines dropped."""

    def __init__(
        self,
        address: str,
        *,
        packet_bytes: int,
        buffer_bytes: int = BUFFER_BYTES,
        ready_bytes: int = READY_BYTES,
        period: float = PERIOD,
    ) -> None:
        super().__init__(address, period=period)
        self.packet_bytes = packet_bytes
        self.buffer_bytes = buffer_bytes
        self.ready_bytes = ready_bytes
        self._sock = open_socket(address)
        self._buf = bytearray()  # each datagram as received, ending in "\n"
        self._lines = self._packets = self._bytes = 0
        self._dropped: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._stopped = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False

    def append(self, data: bytes) -> None:
        """One datagram (or TCP line batch) as received; never raises, never waits."""
        if not data:
            return
        need = len(data) + (not data.endswith(b"\n"))
        if self._stopped or len(self._buf) + need > self.buffer_bytes:
            lines = count_lines(data)
            if lines:
                self._dropped["stopped" if self._stopped else "buffer_full"] += lines
            return
        before = len(self._buf)
        self._buf += data
        if need > len(data):
            self._buf += b"\n"
        crossed = before < self.ready_bytes <= len(self._buf)
        if crossed and self._loop is not None and not self._scheduled:
            self._scheduled = True  # sent once this loop iteration is done
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Packs and sends everything buffered."""
        self._scheduled = False
        if not self._buf:
            return
        data = bytes(self._buf)
        self._buf.clear()
        for packet, lines in pack_lines(data, self.packet_bytes):
            self._send(packet, lines)

    def _send(self, packet: bytes, lines: int) -> None:
        for attempt in (1, 2):
            try:
                self._sock.send(packet)
            except OSError as e:
                name = errno_name(e.errno)
                self._errors[name] += 1
                if name == CONNECTION_REFUSED and attempt == 1:
                    continue
                self._dropped["send_error"] += lines
                return
            self._lines += lines
            self._packets += 1
            self._bytes += len(packet)
            return

    def tick(self) -> None:
        self.flush()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        super().start()

    def counts(self) -> RelayCounts:
        dropped = {reason: self._dropped[reason] for reason in DROP_REASONS}
        return RelayCounts(self._lines, self._packets, self._bytes, dropped, dict(self._errors))

    async def close(self) -> None:
        await super().close()
        self._stopped = True
        self.flush()
        self.report()
        self._sock.close()
