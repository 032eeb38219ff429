"""The real daemon as a benchmark's subprocess: HTTP on a free loopback port, one API key, the
rest of the config the benchmark's own; and VictoriaMetrics (Debian's `victoria-metrics`), the
store measured beside it, the same way."""

from __future__ import annotations

import hashlib
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

_LISTENING = re.compile(r"listening http 127\.0\.0\.1:(\d+)")


def start_http_daemon(
    state: Path, key: str, storage: str, *, extra: str = "", prefix: Sequence[str] = ()
) -> tuple[subprocess.Popen[str], int]:
    """Starts `python -m statsd_gateway serve` with UDP off, HTTP on 127.0.0.1:0, `storage` as
    the body of its `storage:` mapping, `extra` (whole YAML lines) appended to its config and
    `key` as its one API key; returns the process and its HTTP port, read from its log (at info,
    where the listening line is). The rest of its stderr is drained, so the pipe never fills and
    stalls the daemon. `prefix` goes before the command: `taskset -c 0` pins the daemon to a core
    (taskset execs it, so the process is still the daemon's own and its pid the daemon's)."""
    cfg = state / "config.yaml"
    cfg.write_text(
        "udp: {enabled: false}\n"
        "http: {listen: '127.0.0.1:0'}\n"
        f"storage: {{{storage}}}\n"
        "log: {level: info}\n"
        "auth:\n  keys:\n"
        f"    - {{name: bench, sha256: {hashlib.sha256(key.encode()).hexdigest()}}}\n" + extra
    )
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-m", "statsd_gateway", "serve", "--config", str(cfg)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    for line in proc.stderr:
        m = _LISTENING.search(line)
        if m:
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, int(m.group(1))
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise SystemExit("the daemon did not start")


def start_victoria_metrics(
    workdir: Path, *, prefix: Sequence[str] = (), flags: Sequence[str] = ()
) -> tuple[subprocess.Popen[str], str]:
    """Starts single-node VictoriaMetrics with its data in `workdir`/victoria-metrics-data and
    its log in `workdir`/victoria-metrics.log, on a free loopback port; returns the process and
    its base URL once it accepts connections. `flags` are added to its command line."""
    with socket.socket() as sock:  # a free port; VictoriaMetrics cannot report one it chose
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = (workdir / "victoria-metrics.log").open("w")
    proc = subprocess.Popen(
        [*prefix, "victoria-metrics", f"-storageDataPath={workdir / 'victoria-metrics-data'}",
         f"-httpListenAddr=127.0.0.1:{port}", "-loggerLevel=WARN", *flags],
        stdout=log, stderr=log, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("victoria-metrics did not start")
