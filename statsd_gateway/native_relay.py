"""The relay of the native path: sg_relay.c's buffer and sender thread (see relay.py for the
contract both relays keep).

The cores that read StatsD text (the UDP reader threads, and the cores fed TCP and Unix socket
text on the event loop) are given `handle` (Core.set_relay) and append every datagram they
parse to it in C, the reader threads without the GIL: no line becomes a Python object. The
sender thread packs and sends on its own (waiting up to relay.SEND_WAIT a round for room in a
full socket buffer, where the event loop's relay cannot wait). Python only starts it, reads its
counts, warns about lost lines once a minute (the base class's tick task) and stops it:
close() waits, off the event loop, until it has sent what was buffered.
"""

from __future__ import annotations

import asyncio
from types import ModuleType
from typing import Any

from statsd_gateway.relay import (
    BUFFER_BYTES,
    DROP_REASONS,
    PERIOD,
    READY_BYTES,
    Relay,
    RelayCounts,
    errno_name,
    open_socket,
)


class NativeRelay(Relay):
    """The native core's relay (see the module's contract)."""

    def __init__(
        self,
        module: ModuleType,
        address: str,
        *,
        packet_bytes: int,
        buffer_bytes: int = BUFFER_BYTES,
        ready_bytes: int = READY_BYTES,
        period: float = PERIOD,
    ) -> None:
        super().__init__(address, period=period)
        with open_socket(address) as sock:  # the Relay sends on a duplicate of its own
            self.handle: Any = module.Relay(
                sock.fileno(), packet_bytes, buffer_bytes, ready_bytes, period
            )
        self._running = False

    def start(self) -> None:
        self.handle.start()
        self._running = True
        super().start()

    def counts(self) -> RelayCounts:
        lines, packets, nbytes, dropped, errors = self.handle.counts()
        return RelayCounts(
            lines,
            packets,
            nbytes,
            dict(zip(DROP_REASONS, dropped, strict=True)),
            {errno_name(code): n for code, n in errors.items()},
        )

    def problem(self) -> str | None:
        if self._running and not self.handle.running:
            return "the relay's sender thread has stopped"
        return super().problem()

    async def close(self) -> None:
        await super().close()
        self._running = False
        await asyncio.to_thread(self.handle.stop)
        self.report()
