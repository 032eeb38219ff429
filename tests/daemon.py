"""The real daemon as a subprocess (`python -m statsd_gateway serve --config FILE`), for the
end-to-end and fault tests: start it, talk to it over its sockets, stop or kill it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
POLL_TIMEOUT = 10.0
# `listening https …` when http.tls is configured.
_LISTENING_RE = re.compile(r"listening (udp|https?) 127\.0\.0\.1:(\d+)")


class Daemon:
    """One run of the daemon; stderr is drained by a thread so the pipe never fills."""

    def __init__(
        self,
        config_path: Path,
        *,
        env: dict[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`env`: variables added to this process's environment for the daemon; `ssl_context`:
        the client side of an HTTPS listener (trusting its certificate)."""
        self.ssl_context = ssl_context
        self.http_scheme = "http"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "statsd_gateway", "serve", "--config", str(config_path)],
            env=None if env is None else {**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.udp_port, self.http_port = self._wait_listening()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def stderr(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def _wait_listening(self) -> tuple[int, int]:
        deadline = time.monotonic() + START_TIMEOUT
        ports: dict[str, int] = {}
        with self._changed:
            while True:
                for line in self.lines:
                    m = _LISTENING_RE.search(line)
                    if m:
                        scheme = m.group(1)
                        if scheme != "udp":
                            self.http_scheme = scheme
                        ports["udp" if scheme == "udp" else "http"] = int(m.group(2))
                if len(ports) == 2:
                    return ports["udp"], ports["http"]
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    break
                self._changed.wait(min(left, 0.2))
        self.kill()
        pytest.fail(f"the daemon did not report both listeners; stderr:\n{self.stderr}")

    @property
    def base(self) -> str:
        return f"{self.http_scheme}://127.0.0.1:{self.http_port}"

    def send_udp(self, *datagrams: bytes) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for d in datagrams:
                s.sendto(d, ("127.0.0.1", self.udp_port))

    def request(
        self, method: str, path: str, key: str | None, body: Any = None
    ) -> tuple[int, Any, dict[str, str]]:
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10, context=self.ssl_context) as r:
                return r.status, json.load(r), dict(r.headers)
        except urllib.error.HTTPError as e:
            with e:
                return e.code, json.load(e), dict(e.headers)

    def query(self, key: str, **params: Any) -> tuple[int, Any]:
        status, body, _ = self.request(
            "GET", "/v1/metrics/query?" + urllib.parse.urlencode(params), key
        )
        return status, body

    def self_metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """The daemon's own metrics from /metrics: (sample name, its labels) -> value."""
        url = self.base + "/metrics"
        with urllib.request.urlopen(url, timeout=10, context=self.ssl_context) as r:
            text = r.read().decode()
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def self_metric(self, name: str, **labels: str) -> float:
        """One of the daemon's own metrics (0 where it has no sample yet)."""
        return self.self_metrics().get((name, frozenset(labels.items())), 0.0)

    def receive_buffer(self) -> int:
        """The UDP receive buffer the kernel granted, as the log at start says."""
        for line in self.lines:
            found = re.search(r"udp receive buffer: .*granted (\d+)", line)
            if found:
                return int(found.group(1))
        raise AssertionError(f"no udp receive buffer in the log:\n{self.stderr}")

    def vm_rss(self) -> int:
        """The daemon's resident memory, in bytes (/proc/PID/status)."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text(encoding="ascii")
        found = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.M)
        assert found is not None, status
        return int(found.group(1)) * 1024

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the daemon did not stop on SIGTERM; stderr:\n{self.stderr}")
        self._close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(STOP_TIMEOUT)
        self._close()

    def _close(self) -> None:
        self._reader.join(STOP_TIMEOUT)
        if self.proc.stderr is not None and not self._reader.is_alive():
            self.proc.stderr.close()


def write_config(path: Path, state: Path, *, flush_interval: str) -> None:
    path.write_text(
        "udp:\n"
        "  listen: 127.0.0.1:0\n"
        "  read_buffer: 0\n"
        "http:\n"
        "  listen: 127.0.0.1:0\n"
        "storage:\n"
        f"  path: {state / 'metrics.db'}\n"
        # The finest tier must hold whole flush intervals: with a 1 h flush, one 1 h tier.
        + ("  tiers: [{resolution: 1h, retention: 30d}]\n" if flush_interval == "1h" else "")
        + "aggregation:\n"
        f"  flush_interval: {flush_interval}\n",
        encoding="utf-8",
    )


def poll_until(
    check: Callable[[], T | None], failure: Callable[[], str], timeout: float = POLL_TIMEOUT
) -> T:
    """Calls `check` until it returns something other than None, and returns that: waiting for
    what the daemon does in its own time (a flush, a log line), never for time to pass;
    `timeout` only bounds a failure, reported as `failure()` says."""
    deadline = time.monotonic() + timeout
    while (found := check()) is None:
        if time.monotonic() > deadline:
            pytest.fail(failure())
        time.sleep(0.02)
    return found


def poll_value(d: Daemon, key: str, want: float, **params: Any) -> Any:
    """Polls the query until its single value equals `want` (the flush is the daemon's own)."""
    last: list[Any] = [None]

    def answered() -> Any:
        status, body = d.query(key, **params)
        last[0] = body
        if status == 404:  # not known yet: the reader thread admits a new series on its own
            return None
        assert status == 200, body
        return body if body["points"] and body["points"][0]["value"] == want else None

    return poll_until(
        answered, lambda: f"{params} never reached {want}: last answer {last[0]}\n{d.stderr}"
    )


def wait_for_log(d: Daemon, text: str, after: int) -> None:
    """Waits until a stderr line past index `after` contains `text`."""

    def logged() -> bool | None:
        assert d.proc.poll() is None, f"the daemon exited; stderr:\n{d.stderr}"
        return True if any(text in line for line in d.lines[after:]) else None

    poll_until(logged, lambda: f"no log line with {text!r}; stderr:\n{d.stderr}")


def fresh_config(tmp_path: Path) -> tuple[Path, Path]:
    """A config (1 s flushes) at tmp_path/gw.yaml with its state in tmp_path/state."""
    path, state = tmp_path / "gw.yaml", tmp_path / "state"
    write_config(path, state, flush_interval="1s")
    return path, state


def generated_key(state: Path) -> str:
    """The API key the daemon generated at its first start (no auth.keys configured)."""
    return (state / "api-key").read_text(encoding="utf-8").strip()
