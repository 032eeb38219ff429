"""Steps of the wall clock (NTP, a VM resumed, an operator's `date -s`), minutes backward or
forward, while the daemon runs: no crash, nothing counted twice, no interval lost, flushing
carries on.

Before: after a failed write, a backward step kept the flusher in its backoff for as long as the
step (minutes, with /readyz 503); and an absolute gauge value received after a backward step did
not become the current value, so the deltas after it applied to the value from before the step.
"""

from __future__ import annotations

from typing import Any

import pytest

from statsd_gateway.config import Config
from statsd_gateway.model import RowBatch
from statsd_gateway.store.sqlite import StoreError
from tests.conftest import T0, Api, ManualClock, running, send_udp, wait_for_udp

STEP = 300.0  # five minutes


async def total(api: Api, name: str, agg: str = "sum", window: str | None = None) -> float:
    params: dict[str, Any] = {"name": name, "agg": agg, "since": int(T0 - 3600)}
    params["until"] = int(T0 + 3600)
    if window is not None:
        params["window"] = window
    status, body = await api.query(**params)
    assert status == 200, body
    return float(sum(p["value"] for p in body["points"]))


async def send(gw: Any, datagram: bytes, sent: list[int]) -> None:
    sent[0] += 1
    send_udp(gw, datagram)
    await wait_for_udp(gw, sent[0])


@pytest.mark.parametrize("step", [-STEP, STEP], ids=["backward", "forward"])
async def test_a_clock_step_neither_doubles_nor_loses_points(
    config: Config, clock: ManualClock, step: float
) -> None:
    sent = [0]
    async with running(config, clock) as (gw, api):
        for _ in range(7):  # a minute and more of flushes, so coarse buckets are complete
            await send(gw, b"c.n:1|c\nc.t:5|ms", sent)
            clock.advance(10)
            assert await gw.flusher.flush()
        until_before = dict(gw.flusher.rollup.complete_until) if gw.flusher.rollup else {}
        clock.advance(step)
        for _ in range(7):  # lands in buckets already written (backward) or skips ahead
            await send(gw, b"c.n:1|c\nc.t:5|ms", sent)
            clock.advance(10)
            assert await gw.flusher.flush()
        assert gw.readiness() == []
        assert gw.flusher.rollup is not None
        for res, until in until_before.items():  # never moves back
            assert gw.flusher.rollup.complete_until[res] >= until
        for window in (None, "10s", "1m", "1h"):
            assert await total(api, "c.n", window=window) == 14, window
            assert await total(api, "c.t", "count", window=window) == 14, window
    async with running(config, clock) as (gw, api):  # and as stored, after a restart
        for window in (None, "1m", "1h"):
            assert await total(api, "c.n", window=window) == 14, window


async def test_a_backward_step_does_not_stretch_the_backoff_of_a_failed_flush(
    config: Config, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = [0]
    async with running(config, clock) as (gw, api):
        real = gw.store.write_flush
        down = [True]

        def write_flush(rows: RowBatch, flushed_seq: int | None = None, **kw: Any) -> None:
            if down[0]:
                raise StoreError("write failed: disk I/O error")
            real(rows, flushed_seq, **kw)

        monkeypatch.setattr(gw.store, "write_flush", write_flush)
        await send(gw, b"b.n:1|c", sent)
        assert not await gw.flusher.flush()  # backs off for one interval
        down[0] = False
        clock.advance(-STEP)
        await send(gw, b"b.n:1|c", sent)
        clock.advance(10)
        assert await gw.flusher.flush()  # not five minutes later
        assert gw.readiness() == []
        assert await total(api, "b.n") == 2


async def test_a_gauge_value_received_after_a_backward_step_is_the_current_one(
    config: Config, clock: ManualClock
) -> None:
    sent = [0]
    async with running(config, clock) as (gw, api):
        await send(gw, b"s.g:10|g", sent)
        clock.advance(10)
        assert await gw.flusher.flush()
        clock.advance(-STEP)
        await send(gw, b"s.g:3|g", sent)
        await send(gw, b"s.g:+1|g", sent)
        _, q = await api.query(name="s.g", agg="last", since=int(clock() - 5))
        assert q["points"][0]["value"] == 4, q
        assert await gw.flusher.flush()
    async with running(config, clock) as (gw, api):  # and so it is stored
        await send(gw, b"s.g:+1|g", [0])
        _, q = await api.query(name="s.g", agg="last", since=int(clock() - 5))
        assert q["points"][0]["value"] == 5, q
