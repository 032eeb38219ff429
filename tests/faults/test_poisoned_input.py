"""A string no store can encode (a lone surrogate, `\\ud800`) is refused at every door, and a
bad series that reaches a flush anyway is set aside instead of failing the flush for everyone.

Before: one authenticated point `{"tags": {"k": "\\ud800"}}` was accepted, every flush after it
failed for every tenant, the final flush at SIGTERM too, and the point came back from the
write-ahead log at every start."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from statsd_gateway.config import Config
from statsd_gateway.flusher import QUARANTINE_AFTER
from statsd_gateway.model import MetricType, Sample
from statsd_gateway.store.base import FlushWrite
from statsd_gateway.wal import WriteAheadLog
from tests.conftest import KEY, T0, ManualClock, make_config, running
from tests.daemon import Daemon, fresh_config, generated_key, poll_value

# Every test making a config runs on both backends (tests/conftest.py).
STORE_BACKENDS = ("sqlite", "postgresql")

POISON = "\ud800"


def point(name: str, value: float, **tags: str) -> dict[str, Any]:
    return {"name": name, "type": "counter", "value": value, "tags": tags}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (point("p.c", 1, k=POISON), "tags.k"),
        ({"name": "p.c", "type": "counter", "value": 1, "tags": {POISON: "v"}}, "tags"),
        ({"name": "p.s", "type": "set", "value": "a" + POISON}, "value"),
        ({**point("p.c", 1), "idempotency_key": POISON}, "idempotency_key"),
    ],
)
async def test_a_lone_surrogate_is_refused_naming_the_field(
    config: Config, clock: ManualClock, body: dict[str, Any], field: str
) -> None:
    async with running(config, clock) as (gw, api):
        status, answer = await api.report(body)
        assert status == 400, answer
        assert answer["error"]["code"] == "INVALID_ARGUMENT"
        assert answer["error"]["field"] == field
        assert await gw.flusher.flush()
        assert gw.readiness() == []


async def test_a_poisoned_point_in_a_batch_is_reported_by_index_and_the_rest_kept(
    config: Config, clock: ManualClock
) -> None:
    async with running(config, clock) as (gw, api):
        status, answer = await api.batch(
            [point("p.c", 1), point("p.c", 2, k=POISON), point("p.c", 4)]
        )
        assert status == 200, answer
        assert [e["index"] for e in answer["errors"]] == [1]
        assert answer["errors"][0]["field"] == "points[1].tags.k"
        assert await gw.flusher.flush()
        status, q = await api.query(name="p.c", agg="sum")
        assert q["points"][0]["value"] == 5


def raw_http(address: tuple[str, int], request: bytes) -> bytes:
    with socket.create_connection(address, timeout=5) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def test_an_idempotency_key_header_that_is_not_utf8_is_refused(
    config: Config, clock: ManualClock
) -> None:
    async with running(config, clock) as (gw, _):
        assert gw.http_address is not None
        body = json.dumps(point("p.c", 1)).encode()
        request = (
            b"POST /v1/metrics/report HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Authorization: Bearer " + KEY.encode() + b"\r\n"
            b"Content-Type: application/json\r\nIdempotency-Key: k\xed\xa0\x80\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        answer = await asyncio.to_thread(raw_http, gw.http_address, request)
        assert answer.startswith(b"HTTP/1.1 400"), answer
        assert b'"field": "Idempotency-Key"' in answer


async def test_an_api_key_header_that_is_not_utf8_is_a_401(
    config: Config, clock: ManualClock
) -> None:
    async with running(config, clock) as (gw, _):
        assert gw.http_address is not None
        request = (
            b"GET /v1/metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Authorization: Bearer k\xed\xa0\x80\xff\r\n\r\n"
        )
        answer = await asyncio.to_thread(raw_http, gw.http_address, request)
        assert answer.startswith(b"HTTP/1.1 401"), answer


async def test_a_series_that_cannot_be_written_is_set_aside_and_the_rest_written(
    config: Config, clock: ManualClock
) -> None:
    """Past every door's validation (a future path, a bug): the flush's own last line."""
    async with running(config, clock) as (gw, api):
        good = [Sample("q.c", (("host", "a"),), MetricType.COUNTER, 1.0, 1.0, None, False)]
        good += [Sample("q.c", (("host", "z"),), MetricType.COUNTER, 2.0, 1.0, None, False)]
        for i in range(40):
            good.append(
                Sample("q.t", (("i", str(i)),), MetricType.TIMING, float(i), 1.0, None, False)
            )
        bad = Sample("q.c", (("host", POISON),), MetricType.COUNTER, 100.0, 1.0, None, False)
        assert gw.aggregator.add_samples("default", [*good[:20], bad, *good[20:]]) == []
        assert gw.aggregator.add_samples("other", [good[0]]) == []
        assert await gw.flusher.flush()
        assert gw.readiness() == []
        assert gw.telemetry.flush_quarantined_series == 1
        assert gw.aggregator.pending == []
        _, q = await api.query(name="q.c", agg="sum")
        assert q["points"][0]["value"] == 3
        _, q = await api.query(name="q.t", agg="count")
        assert q["points"][0]["value"] == 40
        # The flushes after it are not affected.
        await api.report(point("q.c", 5))
        clock.advance(10)
        assert await gw.flusher.flush()
        _, q = await api.query(name="q.c", agg="sum", since=T0 - 60)
        assert sum(p["value"] for p in q["points"]) == 8


@pytest.mark.parametrize("trials_fail_too", [False, True])
async def test_a_snapshot_failing_with_no_series_to_blame_is_dropped_after_bounded_tries(
    config: Config, clock: ManualClock, monkeypatch: pytest.MonkeyPatch, trials_fail_too: bool
) -> None:
    """Whether the failure is outside the rows (the trial writes pass) or fails every write,
    rows or none (no row can be to blame): no row is set aside, the snapshot is retried and
    dropped whole after QUARANTINE_AFTER failures."""
    async with running(config, clock) as (gw, api):
        await api.report(point("r.c", 1))
        doomed = gw.aggregator.next_seq
        real = gw.store.write_flush

        async def write_flush(flush: FlushWrite, *, trial: bool = False) -> bool:
            if flush.seq == doomed and (trials_fail_too or not trial):
                raise ValueError("fails whatever its rows")
            return await real(flush, trial=trial)

        monkeypatch.setattr(gw.store, "write_flush", write_flush)
        for _ in range(QUARANTINE_AFTER - 1):
            assert not await gw.flusher.flush(force=True)
            assert gw.readiness() != []
        await api.report(point("r.c", 2))
        assert await gw.flusher.flush(force=True)
        assert gw.telemetry.flush_quarantined_series == 1
        assert gw.aggregator.pending == []
        _, q = await api.query(name="r.c", agg="sum")
        assert q["points"][0]["value"] == 2


async def write_old_log(
    directory: Path, seq: int, points: list[dict[str, Any]], now: float = T0 + 1
) -> None:
    """A segment as the daemon before this fix logged it: the poisoned point accepted."""
    wal = WriteAheadLog(directory)
    wal.replay(0)
    wal.start()
    header = {"k": "body", "form": "batch", "tenant": "default", "now": now, "keep": None}
    wal.append(seq, header, json.dumps({"points": points}).encode())
    await wal.barrier()
    await asyncio.to_thread(wal.stop)


async def test_a_poisoned_record_in_the_log_is_reported_and_skipped_at_start(
    tmp_path: Path, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path)
    await write_old_log(
        config.storage.wal_directory, 1, [point("w.c", 1), point("w.c", 2, k=POISON)]
    )
    async with running(config, clock) as (gw, api):
        assert "write-ahead log segment 1: skipped point 1" in caplog.text
        assert gw.telemetry.wal_replay_skipped == 1
        assert await gw.flusher.flush()
        assert gw.readiness() == []
        _, q = await api.query(name="w.c", agg="sum")
        assert q["points"][0]["value"] == 1
    caplog.clear()
    async with running(config, clock) as (gw, _):  # written and released: not replayed again
        assert "skipped" not in caplog.text
        assert gw.telemetry.wal_replay_skipped == 0


def test_the_daemon_refuses_the_poison_and_survives_an_old_poisoned_log(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    path, state = fresh_config(tmp_path)
    wal_dir = Path(str(state / "metrics.db") + ".http-wal")
    logged = [point("d.c", 3), point("d.c", 1, k=POISON)]
    asyncio.run(write_old_log(wal_dir, 1, logged, now=time.time()))
    d = Daemon(path)
    daemons.append(d)
    key = generated_key(state)
    assert "write-ahead log segment 1: skipped point 1" in d.stderr
    status, answer, _ = d.request("POST", "/v1/metrics/report", key, point("d.c", 1, k=POISON))
    assert status == 400 and answer["error"]["field"] == "tags.k", answer
    d.send_udp(b"d.udp:7|c|#k:v")
    poll_value(d, key, 7, name="d.udp", agg="sum")
    poll_value(d, key, 3, name="d.c", agg="sum")
    status, ready, _ = d.request("GET", "/readyz", None)
    assert status == 200, ready
    started = time.monotonic()
    assert d.terminate() == 0
    assert time.monotonic() - started < 5
    assert "flush failed" not in d.stderr
    again = Daemon(path)
    daemons.append(again)
    assert "skipped" not in again.stderr
    poll_value(again, key, 7, name="d.udp", agg="sum")
