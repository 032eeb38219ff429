"""A SIGHUP with a file that is truncated, empty or not text keeps the running config.

Before: an empty file, or the first lines of the real one, was accepted: `auth.keys` became
empty, every configured key got 401 at once and a new key was generated; a file that is not
UTF-8 raised out of the signal handler (a traceback, and the reload never answered READY)."""

from __future__ import annotations

import hashlib
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from statsd_gateway.cli import main
from tests.daemon import Daemon, wait_for_log, write_config

KEY = "reload-key"


def _config_with_key(tmp_path: Path) -> Path:
    path = tmp_path / "reload.yaml"
    write_config(path, tmp_path / "state", flush_interval="1s")
    sha = hashlib.sha256(KEY.encode()).hexdigest()
    with path.open("a", encoding="utf-8") as f:
        f.write(f"auth:\n  keys:\n    - name: k\n      sha256: {sha}\n")
    return path


def _head(text: str, lines: int) -> str:
    return "".join(text.splitlines(keepends=True)[:lines])


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        pytest.param(lambda t: b"", "sets nothing", id="empty"),
        pytest.param(lambda t: b"# config\n\n", "sets nothing", id="comments-only"),
        pytest.param(lambda t: b"udp:\nhttp:\n", "sets nothing", id="empty-sections"),
        pytest.param(
            lambda t: _head(t, 3).encode(), "auth.keys: the file lists no key", id="first-3-lines"
        ),
        pytest.param(
            lambda t: t.encode().replace(b"name: k", b"name: \xe9t\xe9"),
            "not UTF-8",
            id="latin-1",
        ),
    ],
)
def test_a_reload_that_would_lock_every_key_out_keeps_the_running_config(
    tmp_path: Path, daemons: list[Daemon], damage: Callable[[str], bytes], reason: str
) -> None:
    path = _config_with_key(tmp_path)
    good = path.read_text(encoding="utf-8")
    d = Daemon(path)
    daemons.append(d)
    assert d.request("GET", "/v1/metrics", KEY)[0] == 200

    path.write_bytes(damage(good))
    mark = len(d.lines)
    d.proc.send_signal(signal.SIGHUP)
    wait_for_log(d, "keeping the running config", mark)
    refusal = [line for line in d.lines[mark:] if "keeping the running config" in line]
    assert reason in refusal[0], refusal
    assert d.request("GET", "/v1/metrics", KEY)[0] == 200
    assert not (tmp_path / "state" / "api-key").exists()
    assert "Traceback" not in d.stderr

    # The daemon still reloads a good file afterwards.
    path.write_text(good + "log:\n  level: debug\n", encoding="utf-8")
    mark = len(d.lines)
    d.proc.send_signal(signal.SIGHUP)
    wait_for_log(d, "reloaded", mark)
    assert d.request("GET", "/v1/metrics", KEY)[0] == 200
    assert d.terminate() == 0


# `check-config` alone: the same in both passes, skipped in the pure-Python one (tests/conftest.py).
@pytest.mark.same_in_both_passes
def test_a_file_that_is_not_utf8_is_refused_by_check_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"log:\n  level: d\xe9bug\n")
    assert main(["check-config", str(path)]) == 1
    assert "bad.yaml: not UTF-8 text (byte 15" in capsys.readouterr().err
