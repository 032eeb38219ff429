"""TCP listener: newline-framed StatsD lines → ingest.

Each read hands all its complete lines to `Ingest.statsd_lines` in one call, so the per-line cost
stays the parser's; the bytes after the last newline wait for the next read. A partial line
longer than MAX_LINE_BYTES is rejected (`line_too_long`) and the rest of it skipped up to the next
newline, so the connection keeps working. A final line without a newline counts when the client
closes its side cleanly (EOF); a partial line cut off by a reset, the idle timeout or stop() is
rejected as `truncated_line`. Beyond `max_connections` a new connection is closed at once and
counted.

Idleness is measured on the injected clock (the gateway's): a connection with no data for
`idle_timeout` is closed by `close_idle()`, which `reap_idle()` runs when the next connection
may fall idle. A step of the clock backward restarts the count of the connections it passes;
one forward closes those that look idle (their clients reconnect).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import cast

from statsd_gateway.ingest import Ingest, RateLimitedLog
from statsd_gateway.protocol import LINE_TOO_LONG, MAX_LINE_BYTES
from statsd_gateway.telemetry import Telemetry

log = logging.getLogger(__name__)

TRUNCATED_LINE = "truncated_line"
# What stop() still reads from one connection's kernel buffer before closing it.
_STOP_READ_LIMIT = 16 * 1024 * 1024


class TcpListener:
    """Accepts StatsD-over-TCP connections and hands their complete lines to `Ingest.statsd_lines`.
    Never raises into the event loop; refuses connections past `max_connections`; closes those
    idle for `idle_timeout` (on `clock`); `close()` reads what the open ones hold first."""

    kind = "tcp"

    def __init__(
        self,
        ingest: Ingest,
        telemetry: Telemetry,
        *,
        tenant: str,
        max_connections: int,
        idle_timeout: float,
        max_line: int = MAX_LINE_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ingest = ingest
        self.telemetry = telemetry
        self.tenant = tenant
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.max_line = max_line
        self.clock = clock
        self.connections: set[TcpConnection] = set()
        self.address: tuple[str, int] | None = None
        self.debug_log = RateLimitedLog()
        self._server: asyncio.Server | None = None
        self._reaper: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._server = await loop.create_server(
            lambda: TcpConnection(self), host, port, family=family, reuse_address=True
        )
        addr = self._server.sockets[0].getsockname()
        self.address = (addr[0], addr[1])
        self._reaper = asyncio.create_task(self.reap_idle(), name="tcp-idle-reaper")
        return self.address

    def close_idle(self) -> int:
        """Closes every connection idle for `idle_timeout` or longer; returns how many."""
        now = self.clock()
        closed = 0
        for conn in list(self.connections):
            if now < conn.last_active:  # the clock stepped back: count from now
                conn.last_active = now
            if now - conn.last_active >= self.idle_timeout and conn.close_idle():
                closed += 1
        if closed:
            self.telemetry.tcp_idle_closed += closed
            self.debug_log.debug(
                "closed %d tcp connections idle for %gs", closed, self.idle_timeout
            )
        return closed

    def seconds_to_next_idle(self) -> float:
        """When the connection idle longest reaches `idle_timeout`, at most `idle_timeout` from
        now (a connection opened meanwhile cannot fall idle sooner)."""
        now = self.clock()
        open_ = (c.last_active for c in self.connections if not c.closing)
        oldest = min(open_, default=now)
        return min(max(oldest + self.idle_timeout - now, 0.0), self.idle_timeout)

    async def reap_idle(self, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        """Runs close_idle() whenever a connection may have fallen idle, until cancelled. A
        failure is logged and the loop goes on (a bug here must not keep idle sockets open)."""
        delay = self.seconds_to_next_idle()
        while True:
            await sleep(delay)
            try:
                self.close_idle()
                delay = self.seconds_to_next_idle()
            except Exception:
                log.exception("internal error while closing idle tcp connections")
                delay = self.idle_timeout

    def ingest_lines(self, data: bytes) -> None:
        """Complete lines (one read's worth) into the parser. Never raises into the loop."""
        try:
            self.ingest.statsd_lines(self.tenant, data, self.kind)
        except Exception:  # a bug must not kill the connection; count it and go on
            self.telemetry.reject(self.kind, "internal_error")
            log.exception("internal error while ingesting tcp lines")

    def reject_line(self, reason: str, nbytes: int) -> None:
        t = self.telemetry
        t.lines[self.kind] += 1
        t.bytes[self.kind] += nbytes
        t.reject(self.kind, reason)
        self.debug_log.debug("rejected %s line (%s): %d bytes", self.kind, reason, nbytes)

    async def close(self) -> None:
        """Stops accepting, reads what the open connections already hold, closes them."""
        if self._server is None:
            return
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        self._server.close()
        for conn in list(self.connections):
            conn.finish()
        await self._server.wait_closed()
        self._server = None
        # Let the closed transports run connection_lost (a few loop turns) before the caller
        # flushes; a transport that never reports is not worth hanging the shutdown for.
        for _ in range(100):
            if not self.connections:
                break
            await asyncio.sleep(0)


class TcpConnection(asyncio.Protocol):
    """One client connection: frames its bytes into lines for the listener, and remembers when
    it last received any (`last_active`, on the listener's clock)."""

    def __init__(self, listener: TcpListener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()  # the partial line after the last newline
        self._skipping = False  # inside a line already rejected as too long
        self.last_active = listener.clock()

    @property
    def buffered(self) -> int:
        """Bytes of a partial line held until its newline arrives."""
        return len(self._buf)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        lst = self.listener
        t = lst.telemetry
        if len(lst.connections) >= lst.max_connections:
            t.tcp_connections_refused += 1
            lst.debug_log.debug("tcp connection refused: %d open", len(lst.connections))
            transport.close()
            return
        t.tcp_connections += 1
        # uvloop's TCP transport is not an asyncio.Transport subclass, hence the cast.
        self.transport = cast(asyncio.Transport, transport)
        lst.connections.add(self)
        self.last_active = lst.clock()

    def data_received(self, data: bytes) -> None:
        lst = self.listener
        self.last_active = lst.clock()
        if self._skipping:
            nl = data.find(b"\n")
            if nl < 0:
                lst.telemetry.bytes[lst.kind] += len(data)
                return
            lst.telemetry.bytes[lst.kind] += nl + 1
            self._skipping = False
            data = data[nl + 1 :]
        end = data.rfind(b"\n") + 1
        if end:
            if self._buf:
                self._buf += data[:end]
                lines = bytes(self._buf)
                self._buf.clear()
            else:
                lines = data if end == len(data) else data[:end]
            lst.ingest_lines(lines)
        if end < len(data):
            self._buf += data[end:]
            # +1: the parser measures a line without its `\r`.
            if len(self._buf) > lst.max_line + 1:
                lst.reject_line(LINE_TOO_LONG, len(self._buf))
                self._buf.clear()
                self._skipping = True

    def eof_received(self) -> bool | None:
        if self._buf:
            self.listener.ingest_lines(bytes(self._buf))
            self._buf.clear()
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:  # refused at connect
            return
        self.transport = None
        if self._buf:
            self.listener.reject_line(TRUNCATED_LINE, len(self._buf))
            self._buf.clear()
        self.listener.connections.discard(self)

    @property
    def closing(self) -> bool:
        """Closed or closing (it leaves `connections` once the transport reports it lost)."""
        return self.transport is None or self.transport.is_closing()

    def close_idle(self) -> bool:
        """Closes the connection for idleness; False if it is closed or closing already."""
        if self.closing:
            return False
        assert self.transport is not None
        self.transport.close()
        return True

    def finish(self) -> None:
        """At stop: reads what the kernel already holds for this connection, then closes it."""
        transport = self.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._read_remaining(sock.fileno())
        if self.transport is not None:
            self.transport.close()

    def _read_remaining(self, fd: int) -> None:
        # A duplicate of the descriptor: uvloop's transports expose no readable socket object.
        try:
            dup = socket.socket(fileno=os.dup(fd))
        except OSError:
            return
        with dup:
            dup.setblocking(False)
            budget = _STOP_READ_LIMIT
            while budget > 0:
                try:
                    data = dup.recv(65536)
                except OSError:  # nothing more (EAGAIN) or the connection is gone
                    return
                if not data:
                    self.eof_received()
                    return
                budget -= len(data)
                self.data_received(data)
