"""The sd_notify protocol through a real NOTIFY_SOCKET datagram socket."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from statsd_gateway.systemd import Notifier
from tests.conftest import missing_prerequisite

# The Notifier and the unit file alone are the same in both passes: those tests are marked
# same_in_both_passes, skipped in the pure-Python pass (tests/conftest.py). The real daemon's
# test runs in both.


async def _recv(sock: socket.socket) -> str:
    loop = asyncio.get_running_loop()
    data = await asyncio.wait_for(loop.sock_recv(sock, 4096), timeout=5)
    return data.decode()


@pytest.mark.same_in_both_passes
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


@pytest.mark.same_in_both_passes
def test_silent_without_notify_socket() -> None:
    n = Notifier({})
    n.notify("READY=1")  # must not raise
    assert n.watchdog_interval is None


@pytest.mark.same_in_both_passes
def test_watchdog_for_another_pid_is_ignored() -> None:
    n = Notifier({"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert n.watchdog_interval is None


UNIT = Path(__file__).resolve().parent.parent / "systemd" / "statsd-gateway.service"


@pytest.mark.same_in_both_passes
def test_unit_file_verifies(tmp_path: Path) -> None:
    """`systemd-analyze verify` on the shipped unit, its ExecStart pointed at this install."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        missing_prerequisite("systemd-analyze is not installed (apt-get install systemd)")
    exe = Path(sys.executable).parent / "statsd-gateway"
    assert exe.exists()
    text = UNIT.read_text().replace("/opt/statsd-gateway/.venv/bin/statsd-gateway", str(exe))
    unit = tmp_path / "statsd-gateway.service"
    unit.write_text(text)
    r = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "", r.stderr
    for directive in (
        "Type=notify",
        "WatchdogSec=",
        "ExecReload=",
        "StateDirectory=",
        "ConfigurationDirectory=",
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=",
        "CapabilityBoundingSet=\n",
    ):
        assert directive in text


def test_the_daemon_speaks_the_notify_protocol(tmp_path: Path) -> None:
    """The real daemon under a NOTIFY_SOCKET: READY once bound, WATCHDOG pings, RELOADING/READY
    around SIGHUP, STOPPING on SIGTERM."""
    path = tmp_path / "notify.sock"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "udp: {listen: '127.0.0.1:0'}\n"
        "http: {listen: '127.0.0.1:0'}\n"
        f"storage: {{path: '{tmp_path / 'data' / 'm.db'}'}}\n"
    )
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(15)
        env = {**os.environ, "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "statsd_gateway", "serve", "--config", str(cfg)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:

            def next_state(*skip: str) -> str:
                while True:
                    msg = sock.recv(4096).decode()
                    if msg not in skip:
                        return msg

            ready = next_state()
            assert ready.startswith("READY=1")
            assert next_state() == "WATCHDOG=1"
            proc.send_signal(signal.SIGHUP)
            assert next_state("WATCHDOG=1") == "RELOADING=1"
            assert next_state("WATCHDOG=1") == "READY=1"
            proc.send_signal(signal.SIGTERM)
            assert next_state("WATCHDOG=1") == "STOPPING=1"
            assert proc.wait(15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            assert proc.stderr is not None
            proc.stderr.close()
