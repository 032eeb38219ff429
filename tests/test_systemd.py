"""The sd_notify protocol through a real NOTIFY_SOCKET datagram socket."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

from statsd_gateway.systemd import Notifier


async def _recv(sock: socket.socket) -> str:
    loop = asyncio.get_running_loop()
    data = await asyncio.wait_for(loop.sock_recv(sock, 4096), timeout=5)
    return data.decode()


async def test_ready_watchdog_and_stopping(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.setblocking(False)
        env = {
            "NOTIFY_SOCKET": str(path),
            "WATCHDOG_USEC": "20000",
            "WATCHDOG_PID": str(os.getpid()),
        }
        n = Notifier(env)
        n.ready("ingesting")
        assert (await _recv(sock)).startswith("READY=1\n")
        assert await _recv(sock) == "WATCHDOG=1"
        assert await _recv(sock) == "WATCHDOG=1"  # pinged repeatedly from the loop
        await n.stopping()
        msgs = [await _recv(sock)]
        while msgs[-1] != "STOPPING=1":
            msgs.append(await _recv(sock))
        assert msgs[-1] == "STOPPING=1"


def test_silent_without_notify_socket() -> None:
    n = Notifier({})
    n.notify("READY=1")  # must not raise
    assert n.watchdog_interval is None


def test_watchdog_for_another_pid_is_ignored() -> None:
    n = Notifier({"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert n.watchdog_interval is None
