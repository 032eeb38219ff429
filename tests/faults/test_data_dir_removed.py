"""The data directory removed while the daemon runs: it notices at the next write or flush,
refuses HTTP writes (503), says so in /readyz and the log, holds what it receives in memory,
and writes it once the path is back or at stop; the stop stays quick.

Before: the log's writer thread died with a traceback, HTTP writes hung, flushes "succeeded"
into the unlinked database with /readyz 200, SIGTERM took a minute, and after the restart
nothing received since the removal existed."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
import urllib.request
from pathlib import Path
from typing import Any

from statsd_gateway.config import Config
from tests.conftest import ManualClock, remove_tree, running, send_udp, wait_for_udp
from tests.daemon import Daemon, fresh_config, generated_key, poll_until, poll_value, wait_for_log


def copy_database(source: Path, dest: Path) -> None:
    src, dst = sqlite3.connect(source), sqlite3.connect(dest)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def wait_until_written(d: Daemon) -> None:
    def written() -> bool | None:
        with urllib.request.urlopen(urllib.request.Request(d.base + "/metrics"), timeout=10) as r:
            text = r.read().decode()
        rows = re.search(r"^statsd_gateway_flush_rows_total (\S+)$", text, re.M)
        return True if rows and float(rows.group(1)) > 0 else None

    poll_until(written, lambda: f"no flush wrote a row\n{d.stderr}")


def point(name: str, value: float) -> dict[str, Any]:
    return {"name": name, "type": "counter", "value": value}


async def test_flushes_are_held_until_the_directory_is_back_then_written(
    config: Config, clock: ManualClock
) -> None:
    data = Path(config.storage.path).parent
    async with running(config, clock) as (gw, api):
        assert (await api.report(point("before", 1)))[0] == 200
        assert await gw.flusher.flush()
        remove_tree(data)
        send_udp(gw, b"after:5|c")
        await wait_for_udp(gw, 1)
        status, answer = await api.report(point("after", 100))
        assert status == 503, answer
        assert answer["error"]["code"] == "UNAVAILABLE"
        clock.advance(10)
        assert not await gw.flusher.flush()
        assert any("was removed" in p for p in gw.readiness()), gw.readiness()
        status, answer = await api.report(point("after", 100))
        assert status == 503 and "was removed" in answer["error"]["message"], answer
        status, ready = await api.request("GET", "/readyz", key=None)
        assert status == 503 and "metrics.db was removed" in ready["error"]["message"], ready
        status, answer = await api.query(name="after", agg="sum")
        assert (status, answer["error"]["code"]) == (503, "UNAVAILABLE"), answer
        assert gw.aggregator.pending  # held in memory
        data.mkdir()  # the operator puts the directory back
        assert await gw.flusher.flush(force=True)
        assert gw.wal is not None
        await gw.wal.barrier()  # the log's worker has taken the release: it made its directory
        assert gw.readiness() == []
        assert gw.aggregator.pending == []
        assert (await api.report(point("after", 2)))[0] == 200  # the log made its directory
        assert await gw.flusher.flush(force=True)
        _, q = await api.query(name="after", agg="sum")
        assert q["points"][0]["value"] == 7
    async with running(config, clock) as (gw, api):  # on disk, not in an unlinked file
        _, q = await api.query(name="after", agg="sum")
        assert q["points"][0]["value"] == 7


async def test_a_database_file_replaced_is_opened_as_it_is(
    config: Config, clock: ManualClock, tmp_path: Path
) -> None:
    """A restore from a backup: the file at the path now is the store; nothing is written into
    the one replaced."""
    path = Path(config.storage.path)
    async with running(config, clock) as (gw, api):
        assert (await api.report(point("kept", 1)))[0] == 200
        assert await gw.flusher.flush()
        backup = tmp_path / "backup.db"
        await asyncio.to_thread(copy_database, path, backup)
        assert (await api.report(point("kept", 2)))[0] == 200
        backup.replace(path)
        for extra in ("-wal", "-shm"):
            Path(str(path) + extra).unlink(missing_ok=True)
        assert await gw.flusher.flush()
        _, q = await api.query(name="kept", agg="sum")
        assert q["points"][0]["value"] == 3


def test_the_daemon_keeps_what_it_received_after_its_data_directory_was_removed(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    path, state = fresh_config(tmp_path)
    d = Daemon(path)
    daemons.append(d)
    key = generated_key(state)
    d.send_udp(b"gone.c:1|c")
    poll_value(d, key, 1, name="gone.c", agg="sum")
    wait_until_written(d)  # the point from before the removal is in the file removed
    mark = len(d.lines)
    remove_tree(state)
    d.send_udp(b"gone.c:5|c")
    status, answer, _ = d.request("POST", "/v1/metrics/report", key, point("gone.h", 1))
    assert status == 503, answer
    assert answer["error"]["code"] == "UNAVAILABLE"
    wait_for_log(d, "metrics.db was removed while running", mark)
    status, ready, _ = d.request("GET", "/readyz", None)
    assert status == 503 and "was removed" in ready["error"]["message"], ready
    started = time.monotonic()
    assert d.terminate() == 0
    assert time.monotonic() - started < 10  # systemd's TimeoutStopSec is 60
    assert "Traceback" not in d.stderr
    assert "reopened the database" in d.stderr
    again = Daemon(path)
    daemons.append(again)
    key = generated_key(state)  # the old key file went with the directory
    # The finest tier: the new file's rows are what arrived after the removal (the coarse
    # tiers' open buckets, held in memory, still count the point from before it too).
    status, answer = again.query(key, name="gone.c", agg="sum", window="10s", since="-15m")
    assert status == 200, answer
    assert sum(p["value"] for p in answer["points"]) == 5, answer
    status, answer = again.query(key, name="gone.h", agg="sum")
    assert status == 404, answer  # refused with 503, so never applied
