"""A torn or corrupt write-ahead-log segment: what is intact before the bad record is replayed,
and what was dropped is reported (the segment, the bytes) and counted.

Before: a bad record ended its segment's replay without a word."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from statsd_gateway.wal import WriteAheadLog
from tests.conftest import T0, ManualClock, make_config, running

# Every test making a config runs on both backends (tests/conftest.py).
STORE_BACKENDS = ("sqlite", "postgresql")


def point(value: float) -> dict[str, Any]:
    return {"name": "t.c", "type": "counter", "value": value}


async def write_log(directory: Path, seq: int, values: list[float]) -> list[int]:
    """One record per value in segment `seq`; returns the byte offset where each record ends."""
    wal = WriteAheadLog(directory)
    wal.replay(0)
    wal.start()
    seg = directory / f"{seq:012d}.log"
    ends = []
    for v in values:
        header = {"k": "body", "form": "report", "tenant": "default", "now": T0 + 1, "keep": None}
        wal.append(seq, header, json.dumps(point(v)).encode())
        await wal.barrier()
        ends.append(seg.stat().st_size)
    await asyncio.to_thread(wal.stop)
    return ends


def cut_tail(seg: Path, ends: list[int]) -> int:
    """A crash mid-write: the last record is cut short. Returns the bytes left of it."""
    seg.write_bytes(seg.read_bytes()[: ends[-1] - 5])
    return ends[-1] - 5 - ends[-2]


def flip_middle(seg: Path, ends: list[int]) -> int:
    """A byte of the second record's payload damaged on disk; returns the bytes from it on."""
    data = bytearray(seg.read_bytes())
    data[ends[0] + 12] ^= 0xFF
    seg.write_bytes(bytes(data))
    return ends[-1] - ends[0]


@pytest.mark.parametrize(
    ("damage", "replayed"), [(cut_tail, 1 + 2 + 4), (flip_middle, 1)], ids=["torn", "corrupt"]
)
async def test_a_damaged_segment_replays_what_is_intact_and_reports_the_rest(
    tmp_path: Path, clock: ManualClock, caplog: pytest.LogCaptureFixture, damage: Any, replayed: int
) -> None:
    config = make_config(tmp_path)
    ends = await write_log(config.storage.wal_directory, 1, [1, 2, 4, 8])
    seg = config.storage.wal_directory / f"{1:012d}.log"
    dropped = damage(seg, ends)
    async with running(config, clock) as (gw, api):
        assert gw.telemetry.wal_replay_dropped_bytes == dropped
        assert f"write-ahead log {seg}: dropped its last {dropped} bytes" in caplog.text
        _, q = await api.query(name="t.c", agg="sum")
        assert q["points"][0]["value"] == replayed
        async with api.session.get(api.base + "/metrics") as r:
            exposition = await r.text()
        assert f"statsd_gateway_wal_replay_dropped_bytes_total {dropped:.1f}" in exposition
        assert await gw.flusher.flush()
    caplog.clear()
    async with running(config, clock) as (gw, api):  # written and released: nothing again
        assert gw.telemetry.wal_replay_dropped_bytes == 0
        _, q = await api.query(name="t.c", agg="sum")
        assert q["points"][0]["value"] == replayed
