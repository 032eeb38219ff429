"""The systemd notify protocol (sd_notify), without libsystemd: one datagram per state change.

Does nothing when NOTIFY_SOCKET is unset (not run by systemd). A leading `@` is an abstract socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + addr[1:] if addr.startswith("@") else addr
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        wanted = usec.isdigit() and (not pid or pid == str(os.getpid()))
        self.watchdog_interval = int(usec) / 1e6 / 2 if wanted else None
        self._task: asyncio.Task[None] | None = None

    def notify(self, state: str) -> None:
        if not self.address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.sendto(state.encode(), self.address)
        except OSError as e:
            log.warning("sd_notify %r failed: %s", state, e)

    def ready(self, status: str) -> None:
        self.notify(f"READY=1\nSTATUS={status}")
        if self.watchdog_interval:
            self._task = asyncio.create_task(self._watchdog(self.watchdog_interval))

    async def _watchdog(self, interval: float) -> None:
        # Pinged from the event loop itself: a stuck loop stops the pings and systemd restarts us.
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def stopping(self) -> None:
        self.notify("STOPPING=1")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
