"""The HTTP write-ahead log: group commit, replay after a crash, segments released after flush."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from aiohttp import ClientSession

from statsd_gateway.config import Config
from statsd_gateway.gateway import Gateway
from statsd_gateway.wal import WalError, WriteAheadLog
from tests.conftest import KEY, T0, Api, ManualClock


def segments(config: Config) -> list[str]:
    return sorted(p.name for p in config.storage.wal_directory.iterdir())


async def crash(gw: Gateway) -> None:
    """What kill -9 leaves: no final flush; the log's worker and the store are just dropped."""
    assert gw.udp is not None and gw.wal is not None and gw._runner is not None
    gw.udp.close()
    await gw._runner.cleanup()
    await gw.flusher.stop()
    await asyncio.to_thread(gw.wal.stop)
    await gw.store.close()


async def started(config: Config, clock: ManualClock) -> tuple[Gateway, ClientSession, Api]:
    gw = Gateway(config, clock=clock, flush_on_ticks=False)
    await gw.start()
    assert gw.http_address is not None
    session = ClientSession()
    return gw, session, Api(session, "http://{}:{}".format(*gw.http_address))


async def test_acknowledged_points_and_keys_survive_a_crash(
    config: Config, clock: ManualClock
) -> None:
    gw, session, api = await started(config, clock)
    try:
        assert (await api.report({"name": "paid", "type": "counter", "value": 5}))[0] == 200
        body = {
            "points": [{"name": "paid", "type": "counter", "value": 2}],
            "idempotency_key": "k1",
        }
        status, _ = await api.request("POST", "/v1/metrics/batch", json=body)
        assert status == 200
        assert segments(config)  # the log holds them; nothing is flushed
    finally:
        await session.close()
        await crash(gw)
    clock.advance(8 * 3600)  # down for longer than the back-dating limit: still replayed
    gw, session, api = await started(config, clock)
    try:
        status, answer = await api.query(name="paid", agg="sum", since=int(T0), until=int(T0 + 60))
        assert (status, answer["points"][0]["value"]) == (200, 7)
        h = {"Authorization": f"Bearer {KEY}"}
        async with session.post(api.base + "/v1/metrics/batch", json=body, headers=h) as r:
            assert r.headers.get("Idempotent-Replayed") == "true"
        await gw.flusher.flush()
        assert gw.wal is not None
        await gw.wal.barrier()  # the release is queued behind earlier appends
        assert segments(config) == []  # released once the store holds them
    finally:
        await session.close()
        await gw.stop()
    gw, session, api = await started(config, clock)  # and nothing is replayed twice
    try:
        status, answer = await api.query(name="paid", agg="sum", since=int(T0), until=int(T0 + 60))
        assert answer["points"][0]["value"] == 7
    finally:
        await session.close()
        await gw.stop()


async def test_concurrent_requests_share_fsyncs(gateway: Gateway, api: Api) -> None:
    assert gateway.wal is not None
    before = gateway.wal.synced_batches
    n = 40
    results = await asyncio.gather(
        *(api.report({"name": "burst", "type": "counter", "value": 1}) for _ in range(n))
    )
    assert all(status == 200 for status, _ in results)
    assert 1 <= gateway.wal.synced_batches - before < n


async def test_a_torn_record_ends_the_replay_of_its_segment(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path / "wal")
    wal.replay(0)
    wal.start()
    wal.append(3, {"k": "body", "n": 1}, b'{"name": "a", "value": 1}')
    wal.append(3, {"k": "body", "n": 2}, b'{"name": "b", "value": 2}')
    await wal.barrier()
    wal.stop()
    seg = tmp_path / "wal" / "000000000003.log"
    data = seg.read_bytes()
    seg.write_bytes(data[:-3])  # the second record was cut short by a crash
    assert WriteAheadLog(tmp_path / "wal").replay(0) == [
        (3, {"k": "body", "n": 1}, b'{"name": "a", "value": 1}')
    ]
    assert WriteAheadLog(tmp_path / "wal").replay(3) == []
    assert not seg.exists()  # segments the store already holds are deleted


async def test_a_failed_log_write_answers_503_and_leaves_the_key_unused(
    gateway: Gateway, api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert gateway.wal is not None
    wal = gateway.wal
    real_write = wal._write
    calls = {"n": 0}

    def failing_once(seq: int, record: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(28, "No space left on device")
        real_write(seq, record)

    monkeypatch.setattr(wal, "_write", failing_once)
    body = {"points": [{"name": "paid", "type": "counter", "value": 2}], "idempotency_key": "k9"}
    status, answer = await api.request("POST", "/v1/metrics/batch", json=body)
    assert status == 503
    assert answer["error"]["code"] == "UNAVAILABLE"
    h = {"Authorization": f"Bearer {KEY}"}
    async with api.session.post(api.base + "/v1/metrics/batch", json=body, headers=h) as r:
        assert r.status == 200
        assert r.headers.get("Idempotent-Replayed") is None  # applied, not replayed


async def test_a_half_written_record_does_not_hide_later_ones(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path / "wal")
    wal.replay(0)
    wal.start()
    real_write = wal._write

    def torn(seq: int, record: bytes) -> None:
        real_write(seq, record[: len(record) // 2])
        raise OSError(5, "Input/output error")

    wal.append(4, {"k": "body", "n": "A"})
    await wal.barrier()
    wal._write = torn  # type: ignore[method-assign]
    wal.append(4, {"k": "body", "n": "B"})
    with pytest.raises(WalError):
        await wal.barrier()
    wal._write = real_write  # type: ignore[method-assign]
    wal.append(4, {"k": "body", "n": "C"})
    await wal.barrier()
    wal.stop()
    replayed = [h["n"] for _, h, _ in WriteAheadLog(tmp_path / "wal").replay(0)]
    assert replayed == ["A", "C"]


async def test_only_the_newest_segment_stays_open(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path / "wal")
    wal.replay(0)
    wal.start()
    for seq in range(1, 50):  # fifty intervals while the store is down: nothing released
        wal.append(seq, {"k": "body", "n": seq})
        await wal.barrier()
    assert len(wal._segments) == 1
    wal.stop()
    assert len(WriteAheadLog(tmp_path / "wal").replay(0)) == 49


async def test_a_barrier_is_answered_by_the_batch_that_wrote_its_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request's record and its barrier can fall in different group commits: a failure of the
    later one does not fail the barrier of a record already synced (a 503 for it would be
    untrue: the record is replayed after a crash), and what the failed batch wrote is cut back,
    even from a segment it had synced before another failed."""
    wal = WriteAheadLog(tmp_path / "wal")
    wal.replay(0)
    wal.start()
    real_write, real_sync = wal._write, wal._sync
    gate = threading.Event()
    writes: list[int] = []

    def gated(seq: int, record: bytes) -> None:
        writes.append(seq)
        if len(writes) == 1:
            gate.wait(10)  # the worker holds A's batch while the next items queue up
        real_write(seq, record)

    def second_segment_fails(seqs: set[int]) -> Exception | None:
        if 6 not in seqs:
            return real_sync(seqs)
        return real_sync(seqs - {6}) or OSError(5, "Input/output error")

    monkeypatch.setattr(wal, "_write", gated)
    monkeypatch.setattr(wal, "_sync", second_segment_fails)
    wal.append(5, {"k": "body", "n": "A"})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not writes:
        assert loop.time() < deadline, "the worker never took A"
        await asyncio.sleep(0.001)
    a_done = wal.barrier()  # A's barrier, in the next batch, ahead of B and C
    wal.append(5, {"k": "body", "n": "B"})
    wal.append(6, {"k": "body", "n": "C"})
    bc_done = wal.barrier()
    gate.set()
    await a_done
    with pytest.raises(WalError):
        await bc_done
    wal.stop()
    replayed = [h["n"] for _, h, _ in WriteAheadLog(tmp_path / "wal").replay(0)]
    assert replayed == ["A"]
