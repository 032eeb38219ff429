"""Requests that need no key cannot flood the log, and a slow client cannot hold a connection.

Before: a header over 8 KiB, a NUL in a header, or bytes after a body each wrote an ERROR with a
traceback (aiohttp's), as did a client that dropped mid-body (ours), with nothing counted; a body
sent one byte at a time was waited for without limit."""

from __future__ import annotations

import hashlib
import logging
import re
import socket
import urllib.request
from pathlib import Path

import pytest

from statsd_gateway.api.connections import BadRequests
from statsd_gateway.telemetry import Telemetry
from tests.conftest import ManualClock
from tests.daemon import POLL_TIMEOUT, Daemon, poll_until, wait_for_log, write_config

KEY = "abuse-key"
REPORT = (
    b"POST /v1/metrics/report HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
    + KEY.encode()
    + b"\r\nContent-Type: application/json\r\n"
)


def _start(tmp_path: Path, daemons: list[Daemon], http: str = "") -> Daemon:
    path = tmp_path / "abuse.yaml"
    write_config(path, tmp_path / "state", flush_interval="1s")
    sha = hashlib.sha256(KEY.encode()).hexdigest()
    text = path.read_text(encoding="utf-8").replace("http:\n", "http:\n" + http)
    path.write_text(text + f"auth:\n  keys:\n    - name: k\n      sha256: {sha}\n", "utf-8")
    d = Daemon(path)
    daemons.append(d)
    return d


def _bad_requests(d: Daemon) -> dict[str, float]:
    with urllib.request.urlopen(d.base + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(
            r'statsd_gateway_http_bad_requests_total\{reason="(\w+)"\} (\S+)', text
        )
    }


def _wait_count(d: Daemon, reason: str, want: float) -> None:
    poll_until(
        lambda: True if _bad_requests(d).get(reason, 0) == want else None,
        lambda: f"{reason} never reached {want}: {_bad_requests(d)}\n{d.stderr}",
    )


def _exchange(d: Daemon, *parts: bytes) -> bytes:
    """Sends `parts` in order on one connection and reads until the server closes it."""
    with socket.create_connection(("127.0.0.1", d.http_port), timeout=POLL_TIMEOUT) as s:
        for part in parts:
            s.sendall(part)
        received = b""
        while chunk := s.recv(65536):
            received += chunk
        return received


def _log_lines(d: Daemon, text: str) -> list[str]:
    """The stderr lines holding `text`, once one has been read: a thread drains stderr, so the
    counter can be seen before the line it was logged with."""
    wait_for_log(d, text, 0)
    return [line for line in d.lines if text in line]


@pytest.mark.parametrize(
    ("request_bytes", "reason"),
    [
        pytest.param(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
            "line_too_long",
            id="header-over-8KiB",
        ),
        pytest.param(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Nul: a\x00b\r\n\r\n", "malformed", id="nul"
        ),
        pytest.param(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n\x00trailing bytes\r\n\r\n",
            "bad_request_line",
            id="bytes-after-the-body",
        ),
    ],
)
def test_a_malformed_request_is_counted_and_logged_once_without_a_traceback(
    tmp_path: Path, daemons: list[Daemon], request_bytes: bytes, reason: str
) -> None:
    d = _start(tmp_path, daemons)
    for _ in range(3):
        assert b" 400 " in _exchange(d, request_bytes)
    _wait_count(d, reason, 3)
    assert (
        len(_log_lines(d, f"WARNING statsd_gateway.http: bad request from 127.0.0.1: {reason}"))
        == 1
    )
    assert "Traceback" not in d.stderr and " ERROR " not in d.stderr
    assert d.request("GET", "/v1/metrics", KEY)[0] == 200
    assert d.terminate() == 0


def test_a_client_that_drops_mid_body_is_counted_without_a_traceback(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    d = _start(tmp_path, daemons)
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", d.http_port)) as s:
            s.sendall(REPORT + b'Content-Length: 100\r\n\r\n{"na')
    _wait_count(d, "client_disconnected", 2)
    assert len(_log_lines(d, "bad request from 127.0.0.1: client_disconnected")) == 1
    assert "Traceback" not in d.stderr and " ERROR " not in d.stderr
    assert d.terminate() == 0


def test_a_request_trickled_past_the_read_timeout_is_closed_and_counted(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    d = _start(tmp_path, daemons, http="  read_timeout: 500ms\n")
    # Headers never finished, then a body never finished: the server closes both, unanswered.
    assert _exchange(d, b"GET /healthz HTTP/1.1\r\nHost: x\r\n") == b""
    assert _exchange(d, REPORT + b"Content-Length: 100\r\n\r\n", b'{"name"') == b""
    _wait_count(d, "read_timeout", 2)
    lines = _log_lines(d, "bad request from 127.0.0.1: read_timeout")
    assert len(lines) == 1 and "did not arrive within 0.5s" in lines[0]
    assert _bad_requests(d).get("client_disconnected", 0) == 0
    # A request that arrives in time is answered as before.
    assert d.request("POST", "/v1/metrics/report", KEY, {"name": "a.b", "value": 1})[0] == 200
    assert "Traceback" not in d.stderr
    assert d.terminate() == 0


def test_bad_requests_log_one_line_per_reason_per_interval_and_say_how_many_were_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    telemetry = Telemetry()
    bad = BadRequests(telemetry, interval=60.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="statsd_gateway.http"):
        for _ in range(3):
            bad.record("malformed", "127.0.0.1", "Invalid header value char")
        bad.record("read_timeout", "127.0.0.1", "slow")
        clock.advance(60.0)
        bad.record("malformed", "127.0.0.1", "Invalid header value char")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "bad request from 127.0.0.1: malformed: Invalid header value char",
        "bad request from 127.0.0.1: read_timeout: slow",
        "bad request from 127.0.0.1: malformed: Invalid header value char (2 more not logged)",
    ]
    assert telemetry.http_bad_requests == {"malformed": 4, "read_timeout": 1}
