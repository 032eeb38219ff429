"""The real daemon as a subprocess: `python -m statsd_gateway serve --config FILE`."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from statsd_gateway import native
from tests.conftest import require_native_core
from tests.daemon import Daemon, poll_until, poll_value, wait_for_log, write_config


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "statsd-gateway.yaml"
    write_config(path, tmp_path / "state", flush_interval="1s")
    return path


def assert_within_1pct(got: float, want: float) -> None:
    assert abs(got - want) <= 0.01 * want, (got, want)


def test_daemon_ingests_serves_and_keeps_data_over_a_restart(
    tmp_path: Path, config_file: Path, daemons: list[Daemon]
) -> None:
    d = Daemon(config_file)
    daemons.append(d)
    key_file = tmp_path / "state" / "api-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text(encoding="utf-8").strip()
    assert key

    rng = np.random.default_rng(1126)
    timings = rng.lognormal(mean=3.0, sigma=0.7, size=500).round(2).tolist()
    datagrams = [b"e2e.hits:1|c\ne2e.hits:2|c|#env:prod" for _ in range(10)]
    for i in range(0, len(timings), 50):
        datagrams.append("\n".join(f"e2e.udp_ms:{v}|ms" for v in timings[i : i + 50]).encode())
    d.send_udp(*datagrams)

    http_values = rng.uniform(1, 100, size=200).round(3).tolist()
    points = [{"name": "e2e.http", "type": "timing", "value": v} for v in http_values]
    status, body, _ = d.request("POST", "/v1/metrics/batch", key, {"points": points})
    assert (status, body["accepted"], body["rejected"]) == (200, 200, 0), body
    # An HTTP point is in the answer at once.
    status, body = d.query(key, name="e2e.http", agg="count")
    assert (status, body["points"][0]["value"]) == (200, 200), body

    poll_value(d, key, 30, name="e2e.hits", agg="sum")
    poll_value(d, key, len(timings), name="e2e.udp_ms", agg="count")

    def check_all(d: Daemon) -> None:
        assert d.query(key, name="e2e.hits", agg="sum")[1]["points"][0]["value"] == 30
        assert d.query(key, name="e2e.hits", agg="count")[1]["points"][0]["value"] == 20
        body = d.query(key, name="e2e.hits", agg="sum", tags="env:prod")[1]
        assert body["points"][0]["value"] == 20
        body = d.query(key, name="e2e.udp_ms", agg="sum")[1]
        assert body["points"][0]["value"] == pytest.approx(sum(timings), rel=1e-9)
        body = d.query(key, name="e2e.udp_ms", agg="p99")[1]
        want = float(np.quantile(timings, 0.99, method="lower"))
        assert_within_1pct(body["points"][0]["value"], want)
        body = d.query(key, name="e2e.http", agg="count")[1]
        assert body["points"][0]["value"] == len(http_values)
        body = d.query(key, name="e2e.http", agg="p99")[1]
        want = float(np.quantile(http_values, 0.99, method="lower"))
        assert_within_1pct(body["points"][0]["value"], want)

    check_all(d)
    status, body, headers = d.request("GET", "/v1/metrics", "wrong-key")
    assert (status, body["error"]["code"]) == (401, "UNAUTHENTICATED"), body
    assert headers.get("WWW-Authenticate", "").startswith("Bearer")

    assert d.terminate() == 0, d.stderr

    again = Daemon(config_file)
    daemons.append(again)
    assert key_file.read_text(encoding="utf-8").strip() == key  # the key is not regenerated
    check_all(again)
    status, body = again.query("wrong-key", name="e2e.hits", agg="sum")
    assert (status, body["error"]["code"]) == (401, "UNAUTHENTICATED"), body
    assert again.terminate() == 0, again.stderr


# The daemon's environment for each ingest core, and what its log says at start.
CORES = {
    "native": ({native.PURE_PYTHON_ENV: ""}, "ingest core: native (compiled core)"),
    "pure": ({native.PURE_PYTHON_ENV: "1"}, "ingest core: pure Python"),
}


# Each core in turn. The pure variant sets the daemon's STATSD_GATEWAY_PURE_PYTHON itself, so both
# passes run it the same: the pure-Python pass skips it (tests/conftest.py).
CORE_PARAMS = [
    pytest.param("native"),
    pytest.param("pure", marks=pytest.mark.same_in_both_passes),
]


@pytest.fixture(params=CORE_PARAMS)
def core(request: pytest.FixtureRequest) -> str:
    """Each ingest core in turn (the native one where it is built)."""
    if request.param == "native":
        require_native_core()
    return str(request.param)


def start_on(core: str, config_file: Path, daemons: list[Daemon]) -> Daemon:
    """The daemon on `core`, which its log at start names."""
    env, said = CORES[core]
    d = Daemon(config_file, env=env)
    daemons.append(d)
    assert any(said in line for line in d.lines), d.stderr
    return d


def big_buffer_config(tmp_path: Path, flush_interval: str) -> Path:
    """A config asking for a 4 MiB UDP receive buffer (the kernel may grant less)."""
    path = tmp_path / "gw.yaml"
    write_config(path, tmp_path / "state", flush_interval=flush_interval)
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("read_buffer: 0", "read_buffer: 4194304"), encoding="utf-8")
    return path


def test_sigterm_loses_no_udp_data(tmp_path: Path, daemons: list[Daemon], core: str) -> None:
    # A flush interval far longer than the test: only the shutdown flush can save the data.
    config_file = big_buffer_config(tmp_path, "1h")
    d = start_on(core, config_file, daemons)
    key = (tmp_path / "state" / "api-key").read_text(encoding="utf-8").strip()
    d.send_udp(b"term:5|c")
    poll_value(d, key, 5, name="term", agg="sum")  # read from memory; nothing flushed yet
    # A burst the receive buffer holds whole (the kernel drops none), SIGTERM at once: what the
    # daemon has not read yet when the signal comes is read before it stops.
    datagram = b"\n".join([b"burst:1|c"] * 800)
    burst = max(1, d.receive_buffer() // 2 // len(datagram))
    d.send_udp(*[datagram] * burst)
    started = time.monotonic()
    assert d.terminate() == 0, d.stderr
    assert time.monotonic() - started < 5, d.stderr
    again = start_on(core, config_file, daemons)
    for name, want in (("term", 5), ("burst", 800 * burst)):
        status, body = again.query(key, name=name, agg="sum")
        assert status == 200, body
        assert [p["value"] for p in body["points"]] == [want], name


def test_sigterm_stops_the_daemon_promptly_under_a_flood(
    tmp_path: Path, daemons: list[Daemon], core: str
) -> None:
    """A sender faster than the daemon keeps the socket full; SIGTERM still stops it at once,
    after it parsed what the socket held (the flood's later datagrams are the kernel's to
    drop)."""
    d = start_on(core, big_buffer_config(tmp_path, "1s"), daemons)
    datagram = b"\n".join([b"flood:1|c"] * 6000)
    stop = threading.Event()

    def flood() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            while not stop.is_set():
                s.sendto(datagram, ("127.0.0.1", d.udp_port))

    sender = threading.Thread(target=flood)
    sender.start()
    try:
        full = d.receive_buffer() // len(datagram) + 1
        poll_until(
            lambda: (
                True
                if d.self_metric("statsd_gateway_kernel_drops_total", transport="udp") > full
                else None
            ),
            lambda: f"the flood filled no receive buffer\n{d.stderr}",
        )
        started = time.monotonic()
        assert d.terminate() == 0, d.stderr
        assert time.monotonic() - started < 5, d.stderr
    finally:
        stop.set()
        sender.join()
    assert d.lines[-1].endswith("stopped"), d.stderr


def test_http_200_survives_kill_9(tmp_path: Path, daemons: list[Daemon]) -> None:
    """DESIGN.md §4 Durability: an HTTP 200 means the points survive kill -9 right after it."""
    config_file = tmp_path / "slow.yaml"
    write_config(config_file, tmp_path / "state", flush_interval="1h")
    d = Daemon(config_file)
    daemons.append(d)
    key = (tmp_path / "state" / "api-key").read_text(encoding="utf-8").strip()
    status, body, _ = d.request(
        "POST", "/v1/metrics/report", key, {"name": "durable", "type": "counter", "value": 9}
    )
    assert (status, body) == (200, {"ok": True})
    d.kill()  # SIGKILL
    again = Daemon(config_file)
    daemons.append(again)
    status, body = again.query(key, name="durable", agg="sum")
    assert status == 200, body
    assert body["points"] == [{"timestamp": body["since"], "value": 9}]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "statsd_gateway", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )


# `check-config` and `keygen` never reach the ingest path: the same in both passes, skipped in the
# pure-Python one (tests/conftest.py).
@pytest.mark.same_in_both_passes
def test_check_config(tmp_path: Path, config_file: Path) -> None:
    r = run_cli("check-config", str(config_file), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{config_file}: ok"
    empty = tmp_path / "empty.yaml"  # the embedded defaults alone are a valid config
    empty.write_text("", encoding="utf-8")
    r = run_cli("check-config", str(empty), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("udp:\n  listen: 127.0.0.1:0\n  lisen: oops\n", encoding="utf-8")
    r = run_cli("check-config", str(bad), cwd=tmp_path)
    assert r.returncode != 0
    assert "udp.lisen" in r.stderr, r.stderr


@pytest.mark.same_in_both_passes
def test_keygen_prints_a_key_and_its_sha256(tmp_path: Path) -> None:
    r = run_cli("keygen", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    key_line = re.search(r"^key: (\S+)$", r.stdout, re.MULTILINE)
    sha_line = re.search(r"^\s*sha256: ([0-9a-f]{64})$", r.stdout, re.MULTILINE)
    assert key_line and sha_line, r.stdout
    assert hashlib.sha256(key_line.group(1).encode()).hexdigest() == sha_line.group(1)
    other = run_cli("keygen", cwd=tmp_path)
    assert key_line.group(1) not in other.stdout  # a new key each time


def test_sighup_reloads_keys_and_keeps_the_old_config_on_a_bad_file(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    path = tmp_path / "reload.yaml"
    write_config(path, tmp_path / "state", flush_interval="1s")
    base = path.read_text()

    def with_key(key: str) -> str:
        sha = hashlib.sha256(key.encode()).hexdigest()
        return base + f"auth:\n  keys:\n    - name: k\n      sha256: {sha}\n"

    path.write_text(with_key("first-key"))
    d = Daemon(path)
    daemons.append(d)
    assert d.request("GET", "/v1/metrics", "first-key")[0] == 200
    assert d.request("GET", "/v1/metrics", "second-key")[0] == 401
    d.send_udp(b"hup:1|c")
    poll_value(d, "first-key", 1, name="hup", agg="sum")

    # A new key and log level apply at once; a new flush interval and UDP listener settings
    # need a restart, and say so; UDP goes on as it was.
    new = with_key("second-key").replace("flush_interval: 1s", "flush_interval: 2s")
    new = new.replace("  read_buffer: 0\n", "  read_buffer: 0\n  readers: 2\n")
    path.write_text(new + "log:\n  level: debug\n")
    mark = len(d.lines)
    d.proc.send_signal(signal.SIGHUP)
    wait_for_log(d, "reloaded", mark)
    for key in ("aggregation.flush_interval", "udp"):
        assert any(
            f"{key} changed; it takes effect after a restart" in line for line in d.lines[mark:]
        ), key
    assert d.request("GET", "/v1/metrics", "second-key")[0] == 200
    assert d.request("GET", "/v1/metrics", "first-key")[0] == 401
    d.send_udp(b"hup:2|c")
    poll_value(d, "second-key", 3, name="hup", agg="sum")
    status, body, _ = d.request("GET", "/readyz", None)
    assert status == 200, body

    path.write_text(with_key("third-key") + "udp:\n  bogus: 1\n")
    mark = len(d.lines)
    d.proc.send_signal(signal.SIGHUP)
    wait_for_log(d, "keeping the running config", mark)
    assert "udp.bogus" in d.stderr
    assert d.request("GET", "/v1/metrics", "second-key")[0] == 200
    assert d.request("GET", "/v1/metrics", "third-key")[0] == 401
    assert d.terminate() == 0


def test_query_command_prints_a_table(
    tmp_path: Path, config_file: Path, daemons: list[Daemon]
) -> None:
    d = Daemon(config_file)
    daemons.append(d)
    key = (tmp_path / "state" / "api-key").read_text(encoding="utf-8").strip()
    points = [
        {"name": "cli.lat", "type": "timing", "value": v, "tags": {"env": e}}
        for v, e in ((12.553937179918435, "prod"), (40.0, "dev"), (0.000123456, "test"))
    ]
    assert d.request("POST", "/v1/metrics/batch", key, {"points": points})[0] == 200
    url = d.base
    until = str(int(time.time()) + 60)  # both calls below answer for the same range
    args = ("query", "cli.lat", "max", "--url", url, "--key", key, "--group-by", "env")
    args += ("--until", until)
    r = run_cli(*args, "--utc", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["time", "value", "tags"]
    assert sorted(line.split()[1:] for line in lines[1:]) == [
        ["0.0001235", "env:test"],
        ["12.554", "env:prod"],
        ["40", "env:dev"],
    ]
    as_json = run_cli(*args, "--json", cwd=tmp_path)
    body = json.loads(as_json.stdout)
    assert isinstance(body["since"], int) and isinstance(body["until"], int), body
    stamp = body["series"][0]["points"][0]["timestamp"]
    assert isinstance(stamp, int)
    iso = datetime.datetime.fromtimestamp(stamp, datetime.UTC).isoformat()
    assert {line.split()[0] for line in lines[1:]} == {iso}
    bad = run_cli("query", "cli.lat", "max", "--url", url, "--key", "wrong", cwd=tmp_path)
    assert bad.returncode == 1
    assert "UNAUTHENTICATED" in bad.stderr
