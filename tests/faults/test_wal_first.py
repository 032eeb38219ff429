"""An HTTP write is logged before it is applied: a 503 means nothing was applied, so a client's
retry counts its points once; and a log that cannot be written refuses writes at once.

Before: the points went into memory first and the log entry after, so a failed log write (a
full disk) answered 503 with the points already counted, and the retry counted them again; a
dead log writer left every later HTTP write hanging with no answer."""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from msgspec.structs import replace

from statsd_gateway.config import Config
from tests.conftest import ManualClock, running

# Every test making a config runs on both backends (tests/conftest.py).
STORE_BACKENDS = ("sqlite", "postgresql")


def point(name: str, value: float) -> dict[str, Any]:
    return {"name": name, "type": "counter", "value": value}


def fail_first_writes(wal: Any, monkeypatch: pytest.MonkeyPatch, n: int = 1) -> None:
    real_write = wal._write
    calls = {"n": 0}

    def failing(seq: int, record: bytes) -> None:
        calls["n"] += 1
        if calls["n"] <= n:
            raise OSError(28, "No space left on device")
        real_write(seq, record)

    monkeypatch.setattr(wal, "_write", failing)


@pytest.mark.parametrize("key", [None, "retry-1"])
async def test_a_retry_after_a_503_counts_the_points_once(
    config: Config, clock: ManualClock, monkeypatch: pytest.MonkeyPatch, key: str | None
) -> None:
    async with running(config, clock) as (gw, api):
        fail_first_writes(gw.wal, monkeypatch)
        body: dict[str, Any] = {"points": [point("paid", 2), point("paid", 3)]}
        if key is not None:
            body["idempotency_key"] = key
        status, answer = await api.request("POST", "/v1/metrics/batch", json=body)
        assert status == 503, answer
        status, q = await api.query(name="paid", agg="sum")
        assert status == 404, q  # nothing of it in memory
        assert answer["error"]["code"] == "UNAVAILABLE"
        assert "nothing was applied" in answer["error"]["message"]
        status, answer = await api.request("POST", "/v1/metrics/batch", json=body)
        assert (status, answer["accepted"]) == (200, 2)
        _, q = await api.query(name="paid", agg="sum")
        assert q["points"][0]["value"] == 5
        assert await gw.flusher.flush()
        _, q = await api.query(name="paid", agg="sum")
        assert q["points"][0]["value"] == 5
    async with running(config, clock) as (gw, api):  # and the log does not bring them back
        _, q = await api.query(name="paid", agg="sum")
        assert q["points"][0]["value"] == 5


async def test_a_write_logged_across_a_swap_lands_in_the_snapshot_its_entry_names(
    config: Config, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flush swaps the live interval while a write waits for its fsync: the flush waits
    for it, so the point is written with that snapshot, once, and its segment released."""
    async with running(config, clock) as (gw, api):
        assert gw.wal is not None
        real_write = gw.wal._write
        gate = threading.Event()

        def slow(seq: int, record: bytes) -> None:
            gate.wait(10)
            real_write(seq, record)

        monkeypatch.setattr(gw.wal, "_write", slow)
        write = asyncio.create_task(api.report(point("late", 4)))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not gw.ingest.holds.any():
            assert loop.time() < deadline, "the write never reached the log"
            await asyncio.sleep(0.005)
        flush = asyncio.create_task(gw.flusher.flush())
        await asyncio.sleep(0)
        assert not flush.done()
        gate.set()
        assert (await write)[0] == 200
        assert await flush
        assert gw.aggregator.pending == []
        _, q = await api.query(name="late", agg="sum")
        assert q["points"][0]["value"] == 4
    async with running(config, clock) as (gw, api):
        _, q = await api.query(name="late", agg="sum")
        assert q["points"][0]["value"] == 4  # not replayed a second time


class _WriterKilled(BaseException):
    pass


async def test_a_dead_log_writer_refuses_writes_at_once_and_shows_in_readyz(
    config: Config, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(config, clock) as (gw, api):
        assert gw.wal is not None

        def die(items: list[Any]) -> None:
            raise _WriterKilled("gone")

        monkeypatch.setattr(gw.wal, "_process", die)
        for _ in range(2):  # the write that met the death, then one after it
            status, answer = await asyncio.wait_for(api.report(point("w", 1)), 10)
            assert status == 503, answer
            assert answer["error"]["code"] == "UNAVAILABLE"
        status, ready = await api.request("GET", "/readyz", key=None)
        assert status == 503
        assert "writer died" in ready["error"]["message"]
        status, answer = await api.query(name="w", agg="sum")
        assert status == 404, answer  # nothing applied


async def test_a_log_writer_killed_by_a_bug_mid_write_leaves_nothing_to_replay(
    config: Config, clock: ManualClock, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A bug (not a failed write: a RuntimeError) kills the writer between writing a record and
    syncing it: the request's 503 says nothing was applied, so nothing may come back after a
    crash either, and every write after it is refused at once."""
    crashed = tmp_path / "crashed"
    async with running(config, clock) as (gw, api):
        assert gw.wal is not None

        def bug(seqs: set[int]) -> Exception | None:
            raise RuntimeError("a bug in the writer")

        monkeypatch.setattr(gw.wal, "_sync", bug)
        status, answer = await asyncio.wait_for(api.report(point("bug", 1)), 10)
        assert status == 503, answer
        assert "nothing was applied" in answer["error"]["message"]
        status, ready = await api.request("GET", "/readyz", key=None)
        assert status == 503
        assert (
            "write-ahead log writer died: RuntimeError: a bug in the writer"
            in (ready["error"]["message"])
        )
        status, answer = await asyncio.wait_for(api.report(point("bug", 2)), 10)
        assert status == 503, answer
        assert "writer died" in answer["error"]["message"]
        status, answer = await api.query(name="bug", agg="sum")
        assert status == 404, answer
        # What a kill -9 now would leave (a stop's final flush would release the segment).
        shutil.copytree(Path(config.storage.path).parent, crashed)
    restarted = replace(config, storage=replace(config.storage, path=str(crashed / "metrics.db")))
    async with running(restarted, clock) as (gw, api):
        status, answer = await api.query(name="bug", agg="sum")
        assert status == 404, answer  # the record written before the death was cut back
        assert (await api.report(point("bug", 4)))[0] == 200  # a new writer
