"""UDP listener: datagram endpoint → bounded queue → ingest.

`datagram_received` only appends to the queue (or drops and counts when it is full); the queue is
drained in one loop callback, so a burst of datagrams is parsed in a batch.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from typing import cast

from statsd_gateway.ingest import Ingest
from statsd_gateway.telemetry import Telemetry

log = logging.getLogger(__name__)


class UdpListener(asyncio.DatagramProtocol):
    def __init__(
        self,
        ingest: Ingest,
        telemetry: Telemetry,
        *,
        tenant: str,
        queue_size: int,
        read_buffer: int,
    ) -> None:
        self.ingest = ingest
        self.telemetry = telemetry
        self.tenant = tenant
        self.queue_size = queue_size
        self.read_buffer = read_buffer
        self._queue: deque[bytes] = deque()
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.address: tuple[str, int] | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        if self.read_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.read_buffer)
            granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            # Linux reports twice what it grants for bookkeeping; it caps at net.core.rmem_max.
            if granted // 2 < self.read_buffer:
                log.warning(
                    "udp receive buffer: asked %d bytes, kernel granted %d "
                    "(raise net.core.rmem_max)",
                    self.read_buffer,
                    granted // 2,
                )
        sock.bind((host, port))
        sock.setblocking(False)
        await self._loop.create_datagram_endpoint(lambda: self, sock=sock)
        addr = sock.getsockname()
        self.address = (addr[0], addr[1])
        return self.address

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport is not an asyncio.DatagramTransport subclass, hence the cast.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: object) -> None:
        if len(self._queue) >= self.queue_size:
            self.telemetry.queue_dropped += 1
            return
        self._queue.append(data)
        if not self._scheduled:
            self._scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self.drain)

    def error_received(self, exc: Exception) -> None:
        log.warning("udp socket error: %s", exc)

    def drain(self) -> None:
        """Parses everything queued. Never raises into the loop."""
        self._scheduled = False
        q = self._queue
        statsd = self.ingest.statsd
        tenant = self.tenant
        while q:
            data = q.popleft()
            try:
                statsd(tenant, data, "udp")
            except Exception:  # a bug must not kill the listener; count it and go on
                self.telemetry.reject("udp", "internal_error")
                log.exception("internal error while ingesting a datagram")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        self.drain()
