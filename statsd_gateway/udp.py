"""Datagram listeners: datagram endpoint → bounded queue → ingest.

`DatagramListener` is the part UDP and the Unix datagram socket (unixgram.py) share:
`datagram_received` only appends to the queue (or drops and counts when it is full); the queue is
drained in one loop callback, so a burst of datagrams is parsed in a batch. close() parses what the
socket and the queue still hold: what the kernel received before the stop is not lost.
`UdpListener` adds the socket: address family, SO_RCVBUF, and the kernel's drop count for the
socket.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import socket
import struct
from collections import deque
from typing import cast

from statsd_gateway.ingest import Ingest
from statsd_gateway.telemetry import Telemetry

log = logging.getLogger(__name__)

_PROC_NET_UDP = {socket.AF_INET: "/proc/net/udp", socket.AF_INET6: "/proc/net/udp6"}
# Linux's SO_ATTACH_FILTER (asm-generic/socket.h), which the socket module does not name.
_SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
# A classic BPF program of one instruction, `ret #0`: keep no byte of any datagram.
_KEEP_NOTHING = ctypes.create_string_buffer(struct.pack("=HBBI", 0x06, 0, 0, 0))
# The largest datagram read at a stop: a Unix datagram may be larger than UDP's 64 KiB.
_MAX_DATAGRAM = 256 * 1024


class DatagramListener(asyncio.DatagramProtocol):
    """The queue and drain shared by every datagram transport; `kind` is the transport label."""

    kind = "datagram"

    def __init__(self, ingest: Ingest, telemetry: Telemetry, *, tenant: str, queue_size: int):
        self.ingest = ingest
        self.telemetry = telemetry
        self.tenant = tenant
        self.queue_size = queue_size
        self._queue: deque[bytes] = deque()
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self._sock: socket.socket | None = None

    async def _open(self, sock: socket.socket) -> None:
        """Starts receiving on a bound socket."""
        self._loop = asyncio.get_running_loop()
        sock.setblocking(False)
        await self._loop.create_datagram_endpoint(lambda: self, sock=sock)
        self._sock = sock

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
        log.warning("%s socket error: %s", self.kind, exc)

    def drain(self) -> None:
        """Parses everything queued. Never raises into the loop."""
        self._scheduled = False
        q = self._queue
        statsd = self.ingest.statsd_lines
        tenant = self.tenant
        kind = self.kind
        while q:
            data = q.popleft()
            try:
                statsd(tenant, data, kind)
            except Exception:  # a bug must not kill the listener; count it and go on
                self.telemetry.reject(kind, "internal_error")
                log.exception("internal error while ingesting a datagram")

    def close(self) -> None:
        """Stops receiving, then parses what the socket and the queue still hold."""
        if self.transport is not None:
            self._read_what_the_socket_holds()
            self.transport.close()
            self.transport = None
        self.drain()

    def _read_what_the_socket_holds(self) -> None:
        """Queues the datagrams the kernel received but the loop did not read yet. The queue's
        bound does not apply: what is read is bounded by the socket's receive buffer."""
        sock, self._sock = self._sock, None
        if sock is None or not refuse_new_datagrams(sock):
            return
        while True:
            try:
                self._queue.append(sock.recv(_MAX_DATAGRAM))
            except OSError:  # BlockingIOError: nothing left
                return


class UdpListener(DatagramListener):
    kind = "udp"

    def __init__(
        self,
        ingest: Ingest,
        telemetry: Telemetry,
        *,
        tenant: str,
        queue_size: int,
        read_buffer: int,
    ) -> None:
        super().__init__(ingest, telemetry, tenant=tenant, queue_size=queue_size)
        self.read_buffer = read_buffer
        self.address: tuple[str, int] | None = None
        self._family = socket.AF_INET
        self._inode = 0

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(self._family, socket.SOCK_DGRAM)
        try:
            self._set_receive_buffer(sock)
            sock.bind((host, port))
            await self._open(sock)
        except BaseException:
            sock.close()
            raise
        self._inode = os.fstat(sock.fileno()).st_ino
        addr = sock.getsockname()
        self.address = (addr[0], addr[1])
        return self.address

    def _set_receive_buffer(self, sock: socket.socket) -> None:
        set_receive_buffer(sock, self.read_buffer)

    def kernel_drops(self) -> int | None:
        """Datagrams the kernel dropped on this socket (its receive buffer was full), as Linux
        reports in /proc/net/udp[6]; None where the system does not say."""
        if not self._inode:
            return None
        return read_proc_drops(_PROC_NET_UDP[self._family], self._inode)


def set_receive_buffer(sock: socket.socket, read_buffer: int) -> None:
    """SO_RCVBUF as `udp.read_buffer` asks (0: the system's default), and a warning if the
    kernel granted less."""
    if read_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, read_buffer)
    # Linux reports twice what it grants for bookkeeping; it caps at net.core.rmem_max.
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
    if not read_buffer:
        log.info("udp receive buffer: system default, granted %d bytes", granted)
        return
    log.info("udp receive buffer: asked %d bytes, granted %d", read_buffer, granted)
    if granted < read_buffer:
        log.warning(
            "udp receive buffer: the kernel granted %d of the %d bytes asked "
            "(raise net.core.rmem_max)",
            granted,
            read_buffer,
        )


def refuse_new_datagrams(sock: socket.socket) -> bool:
    """From now on the kernel drops what arrives on `sock` (a socket filter that keeps nothing)
    and keeps what it holds already: a stop reads what was received before it, and ends even
    while a flood arrives faster than it is read. False where the system refuses the filter."""
    program = struct.pack("HP", 1, ctypes.addressof(_KEEP_NOTHING))  # struct sock_fprog
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, program)
    except OSError as e:
        log.warning("stopping: cannot refuse new datagrams on %s: %s", sock.getsockname(), e)
        return False
    return True


def read_proc_drops(path: str, inode: int) -> int | None:
    """The `drops` column (the last) of the /proc/net/udp-style row whose inode matches."""
    try:
        with open(path, encoding="ascii") as f:
            next(f, None)  # the header
            want = str(inode)
            for row in f:
                fields = row.split()
                # sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
                if len(fields) >= 13 and fields[9] == want:
                    return int(fields[-1])
    except (OSError, ValueError):
        return None
    return None
