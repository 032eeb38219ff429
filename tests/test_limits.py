"""Limits that protect memory: series per tenant over HTTP and UDP; a 500 leaks nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from statsd_gateway.gateway import Gateway
from tests.conftest import OTHER_KEY, Api, ManualClock, make_config, running, send_udp, wait_for_udp


@pytest.fixture
async def small(tmp_path: Path, clock: ManualClock) -> AsyncIterator[tuple[Gateway, Api]]:
    cfg = make_config(tmp_path, aggregation={"max_series_per_tenant": 2})
    async with running(cfg, clock) as r:
        yield r


def point(name: str, **tags: str) -> dict[str, Any]:
    return {"name": name, "type": "counter", "value": 1, "tags": tags}


async def test_new_series_beyond_the_limit_get_429_and_old_ones_keep_working(
    small: tuple[Gateway, Api],
) -> None:
    gw, api = small
    assert (await api.report(point("a")))[0] == 200
    assert (await api.report(point("a", env="prod")))[0] == 200
    status, body = await api.report(point("b"))
    assert status == 429
    assert body["error"]["code"] == "CARDINALITY_LIMIT"
    assert (await api.report(point("a", env="prod")))[0] == 200
    # Another tenant has its own budget.
    assert (await api.report(point("b"), key=OTHER_KEY))[0] == 200
    await gw.flusher.flush()
    status, body = await api.batch([point("a"), point("c"), point("a", env="prod")])
    assert (status, body["accepted"], body["rejected"]) == (200, 2, 1)
    assert body["errors"][0]["index"] == 1
    assert body["errors"][0]["code"] == "CARDINALITY_LIMIT"


async def test_udp_counts_the_cardinality_reject(small: tuple[Gateway, Api]) -> None:
    gw, api = small
    send_udp(gw, b"x:1|c\ny:1|c\nz:1|c\nx:1|c")
    await wait_for_udp(gw, 1)
    assert gw.telemetry.rejects[("udp", "cardinality_limit")] == 1
    status, body = await api.query(name="x", agg="count", since="-1h")
    assert (status, body["points"][0]["value"]) == (200, 2)


async def test_an_internal_error_is_an_envelope_without_details(
    small: tuple[Gateway, Api], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    gw, api = small

    async def boom(*args: object) -> None:
        raise RuntimeError("secret detail /etc/passwd")

    monkeypatch.setattr(gw.query_engine, "run_then", boom)
    await api.report(point("a"))
    status, body = await api.query(name="a", agg="sum")
    assert status == 500
    assert body == {
        "ok": False,
        "error": {"code": "INTERNAL", "message": "internal error", "field": None},
    }
    assert "secret detail" in caplog.text  # logged for the operator, not sent to the client


async def test_a_deeply_nested_body_is_a_400(small: tuple[Gateway, Api]) -> None:
    _, api = small
    headers = {"Content-Type": "application/json"}
    status, body = await api.request(
        "POST", "/v1/metrics/report", data=b"[" * 100_000, headers=headers
    )
    assert (status, body["error"]["code"]) == (400, "INVALID_ARGUMENT")


async def test_a_window_that_splits_the_finest_buckets_is_refused(
    small: tuple[Gateway, Api],
) -> None:
    _, api = small
    await api.report(point("a"))
    status, body = await api.query(name="a", agg="rate", window="5s")
    assert status == 400
    assert "window=10s" in body["error"]["message"]
    assert (await api.query(name="a", agg="rate", window="20s"))[0] == 200


async def test_a_snapshot_already_committed_is_not_written_twice(
    small: tuple[Gateway, Api],
) -> None:
    """What a flush cancelled while the writer thread committed it leaves behind."""
    gw, api = small
    await api.report(point("a"))
    snap = gw.aggregator.swap()
    rows = gw.aggregator.snapshot_rows(snap)
    assert await gw.flusher._finish_and_write(snap, rows, [], 0.0) == 1
    assert await gw.flusher._finish_and_write(snap, rows, [], 0.0) == 0
    gw.aggregator.release(snap)
    status, body = await api.query(name="a", agg="count", since="-1h")
    assert (status, body["points"][0]["value"]) == (200, 1)
