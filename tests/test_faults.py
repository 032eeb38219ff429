"""Store faults: a full disk or a locked database loses nothing up to the bound, and says so."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import ClientSession

from statsd_gateway.config import Config
from statsd_gateway.gateway import Gateway
from statsd_gateway.store import SqliteStore
from tests.conftest import (
    T0,
    Api,
    ManualClock,
    make_config,
    missing_prerequisite,
    on_sqlite_writer,
    running,
    send_udp,
    wait_for_udp,
)


async def pragma(gw: Gateway, sql: str) -> None:
    assert isinstance(gw.store, SqliteStore)
    await on_sqlite_writer(gw.store, lambda conn: conn.execute(sql))


async def counter_sum(api: Api, name: str) -> object:
    status, body = await api.query(name=name, agg="sum", since=int(T0), until=int(T0 + 3600))
    assert status == 200, body
    return body["points"][0]["value"] if body["points"] else None


async def readyz(api: Api) -> int:
    status, body = await api.request("GET", "/readyz", key=None)
    if status != 200:
        assert body["error"]["code"] == "UNAVAILABLE"
    return status


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB filesystem (tmpfs); needs root, as CI and the dev machines have."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        missing_prerequisite(f"cannot mount a tmpfs (it needs root): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


async def test_a_full_disk_keeps_data_in_memory_and_writes_it_once_cleared(
    small_disk: Path, tmp_path: Path, clock: ManualClock
) -> None:
    cfg = make_config(tmp_path, storage={"path": str(small_disk / "metrics.db")})
    gw = Gateway(cfg, clock=clock, flush_on_ticks=False)
    await gw.start()
    filler = small_disk / "filler"
    try:
        assert gw.http_address is not None
        async with ClientSession() as session:
            api = Api(session, "http://{}:{}".format(*gw.http_address))
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
            with contextlib.suppress(OSError):  # fill the disk to the last block
                while os.write(fd, b"x" * 4096):
                    pass
            os.close(fd)
            lines = "\n".join(f"orders:1|c|#shard:{i}" for i in range(60))
            send_udp(gw, lines.encode())
            await wait_for_udp(gw, 1)
            assert await gw.flusher.flush() is False
            assert "full" in (gw.flusher.last_error or "")
            assert gw.telemetry.flush_errors == 1
            assert await readyz(api) == 503
            send_udp(gw, b"orders:4|c")  # still receiving
            await wait_for_udp(gw, 2)
            assert await counter_sum(api, "orders") == 64  # answered from memory
            # Within the backoff no write is tried; after it, everything pending is written.
            assert await gw.flusher.flush() is False
            assert gw.telemetry.flush_errors == 1
            filler.unlink()
            clock.advance(gw.aggregator.interval)
            assert await gw.flusher.flush() is True
            assert await readyz(api) == 200
            assert gw.aggregator.pending == []
            assert await counter_sum(api, "orders") == 64  # from disk, not counted twice
    finally:
        filler.unlink(missing_ok=True)
        await gw.stop()


async def test_a_locked_database_is_retried(gateway: Gateway, api: Api, clock: ManualClock) -> None:
    await pragma(gateway, "PRAGMA busy_timeout=20")
    locker = sqlite3.connect(gateway.store.path, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")  # as a backup tool might
        assert (await api.report({"name": "jobs", "type": "counter", "value": 2}))[0] == 200
        assert await gateway.flusher.flush() is False
        assert "locked" in (gateway.flusher.last_error or "")
        assert await readyz(api) == 503
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    clock.advance(gateway.aggregator.interval)
    assert await gateway.flusher.flush() is True
    assert await counter_sum(api, "jobs") == 2


@pytest.fixture
async def bounded(tmp_path: Path, clock: ManualClock) -> AsyncIterator[tuple[Gateway, Api]]:
    async with running(make_config(tmp_path, aggregation={"max_pending_rows": 2}), clock) as r:
        yield r


async def test_past_the_bound_the_oldest_flushes_are_dropped_and_counted(
    bounded: tuple[Gateway, Api], clock: ManualClock
) -> None:
    gw, api = bounded
    await pragma(gw, "PRAGMA busy_timeout=20")
    locker = sqlite3.connect(gw.store.path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    for i in range(3):  # three intervals of two series each, the store failing throughout
        assert (await api.batch([{"name": f"m{i}", "value": 1}, {"name": f"n{i}", "value": 1}]))[
            0
        ] == 200
        await gw.flusher.flush(force=True)
        clock.advance(gw.aggregator.interval)
    assert gw.telemetry.flush_dropped_series == 4
    assert sum(s.series_count() for s in gw.aggregator.pending) == 2
    locker.execute("ROLLBACK")
    locker.close()
    assert await gw.flusher.flush(force=True) is True
    status, body = await api.query(name="m2", agg="count", since=int(T0), until=int(T0 + 3600))
    assert (status, body["points"][0]["value"]) == (200, 1)
    status, body = await api.query(name="m0", agg="count", since=int(T0), until=int(T0 + 3600))
    assert (status, body["points"]) == (200, [])  # dropped


def test_a_corrupt_database_is_a_clear_error(tmp_path: Path, config: Config) -> None:
    db = Path(config.storage.path)
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not a database" * 100)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "udp: {listen: '127.0.0.1:0'}\n"
        "http: {listen: '127.0.0.1:0'}\n"
        f"storage: {{path: '{db}'}}\n"
    )
    r = subprocess.run(
        [sys.executable, "-m", "statsd_gateway", "serve", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 1
    assert "cannot open the database" in r.stderr
    assert "Traceback" not in r.stderr
