"""UDP received by the native core's reader threads: socket → recvmmsg → parse → native tables.

`udp.readers` sockets are bound to one port (SO_REUSEPORT when there are several, so the kernel
spreads senders over them), each read by a thread of its own in its own core, without the GIL;
the event loop is woken (an eventfd) once per burst, to add what the cores counted to the
telemetry and to let the memory bound start a flush. There is no queue in Python: the socket's
receive buffer is the queue, and the kernel counts what it drops (`kernel_drops()`).
close() stops the threads once they have parsed everything the sockets held at the stop (what
arrives after it is the kernel's to drop, so a flood faster than the readers cannot hold the
stop up).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from statsd_gateway.native import NativeLive
from statsd_gateway.udp import (
    _PROC_NET_UDP,
    read_proc_drops,
    refuse_new_datagrams,
    set_receive_buffer,
)

log = logging.getLogger(__name__)

# How often at most the reader threads wake the event loop (seconds).
NOTIFY_PERIOD = 0.01


class NativeUdpListener:
    """The UDP listener of the native path (see the module's contract)."""

    kind = "udp"

    def __init__(
        self,
        live: NativeLive,
        *,
        tenant: str,
        read_buffer: int,
        readers: int,
        nudge: Callable[[], None],
    ) -> None:
        self.live = live
        self.tenant = tenant
        self.read_buffer = read_buffer
        self.readers = readers
        self.nudge = nudge  # after each burst: the memory bound's check
        self.address: tuple[str, int] | None = None
        self._family = socket.AF_INET
        self._sockets: list[socket.socket] = []
        self._inodes: list[int] = []
        self._cores: list[Any] = []
        self._notify = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reopening = False

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            for _ in range(self.readers):
                sock = socket.socket(self._family, socket.SOCK_DGRAM)
                self._sockets.append(sock)
                if self.readers > 1:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                set_receive_buffer(sock, self.read_buffer)
                # The first socket takes the port (0: any free one); the others join it.
                sock.bind((host, port if self.address is None else self.address[1]))
                if self.address is None:
                    addr = sock.getsockname()
                    self.address = (addr[0], addr[1])
                self._inodes.append(os.fstat(sock.fileno()).st_ino)
            self._loop = asyncio.get_running_loop()
            self._notify = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            self._loop.add_reader(self._notify, self._on_burst)
            for sock in self._sockets:
                core = self.live.new_core(self.tenant, relayed=True)
                core.start(sock.fileno(), self._notify)
                self._cores.append(core)
        except BaseException:
            self.close()
            raise
        assert self.address is not None
        log.info("udp: %d native reader thread(s)", self.readers)
        return self.address

    def _on_burst(self) -> None:
        """A reader parsed a batch: counts to the telemetry, then the memory bound's check;
        the readers may wake the loop again NOTIFY_PERIOD later (at every batch, one line a
        datagram would wake it tens of thousands of times a second). Never raises into the
        loop."""
        with contextlib.suppress(BlockingIOError):  # another burst's callback read it
            os.eventfd_read(self._notify)
        self._sync()
        if not self._reopening and self._loop is not None:
            self._reopening = True
            self._loop.call_later(NOTIFY_PERIOD, self._reopen)

    def _reopen(self) -> None:
        self._reopening = False
        for core in self._cores:
            core.acknowledge()
        self._sync()  # what was parsed before the readers could notify again

    def _sync(self) -> None:
        try:
            for core in self._cores:
                self.live.sync_counts(core)
            self.nudge()
        except Exception:
            log.exception("internal error after a native UDP batch")

    def stopped_readers(self) -> int:
        """Reader threads that ended while the listener runs (for /readyz)."""
        return sum(1 for core in self._cores if not core.running)

    def close(self) -> None:
        """Stops the readers after they parsed what the sockets hold, then closes them."""
        # A reader stops once its socket is empty: nothing must arrive meanwhile.
        if self._cores:
            for sock in self._sockets:
                refuse_new_datagrams(sock)
        for core in self._cores:
            core.stop()
            self.live.sync_counts(core)
        self._cores = []
        if self._notify >= 0:
            if self._loop is not None:
                self._loop.remove_reader(self._notify)
            os.close(self._notify)
            self._notify = -1
        for sock in self._sockets:
            sock.close()
        self._sockets = []

    def kernel_drops(self) -> int | None:
        """Datagrams the kernel dropped on these sockets (their receive buffers were full)."""
        drops = [read_proc_drops(_PROC_NET_UDP[self._family], inode) for inode in self._inodes]
        known = [d for d in drops if d is not None]
        return sum(known) if known else None
