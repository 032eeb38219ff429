"""Flusher.run, the tick loop: flushes at wall-clock multiples of the interval (the test owns
the clock and the sleep), and no exception from a flush ends it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from statsd_gateway.aggregator import IntervalAggregator
from statsd_gateway.errors import StoreError
from statsd_gateway.flusher import Flusher
from statsd_gateway.model import MetricType, Sample
from statsd_gateway.series_registry import SeriesRegistry
from statsd_gateway.store.memory import MemoryStore
from statsd_gateway.telemetry import Telemetry
from tests.conftest import T0, ManualClock, Ticks, make_config, running


@pytest.fixture
def parts() -> tuple[Flusher, ManualClock]:
    clock = ManualClock(T0 + 3.5)
    store = MemoryStore(resolutions=(10.0,), clock=clock)
    aggregator = IntervalAggregator(interval=10.0, clock=clock, registry=SeriesRegistry(),
                                    max_series_per_tenant=100, max_backdate=3600.0)  # fmt: skip
    return Flusher(aggregator, store, Telemetry(), clock=clock), clock


async def test_ticks_fall_on_multiples_of_the_interval(parts: tuple[Flusher, ManualClock]) -> None:
    flusher, clock = parts
    flusher.aggregator.add_samples(
        "default", [Sample("c", (), MetricType.COUNTER, 1.0, 1.0, None, False)]
    )
    ticks = Ticks(clock, 3)
    with pytest.raises(asyncio.CancelledError):
        await flusher.run(sleep=ticks)
    assert ticks.woke_at == [T0 + 10, T0 + 20, T0 + 30]
    assert flusher.telemetry.flushes == 3 and flusher.aggregator.pending == []
    assert flusher.telemetry.flushed_rows == 1  # the one counter, in the first tick's flush
    await flusher.store.close()
    flusher.close()


async def test_a_flush_that_raises_does_not_end_the_ticks(
    parts: tuple[Flusher, ManualClock], monkeypatch: pytest.MonkeyPatch
) -> None:
    flusher, clock = parts
    calls = 0
    real = flusher.flush

    async def flush_raising_once(*, force: bool = False) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug")
        return await real(force=force)

    monkeypatch.setattr(flusher, "flush", flush_raising_once)
    with pytest.raises(asyncio.CancelledError):
        await flusher.run(sleep=Ticks(clock, 3))
    assert calls == 3
    assert flusher.telemetry.flush_errors == 1
    assert flusher.last_error is None  # the flushes after it succeeded
    await flusher.store.close()
    flusher.close()


async def test_each_step_of_a_flush_is_timed_in_the_self_metrics(
    tmp_path: Path, clock: ManualClock
) -> None:
    async with running(make_config(tmp_path), clock) as (gw, api):
        await api.report({"name": "c", "type": "counter", "value": 1})
        assert await gw.flusher.flush()
        async with api.session.get(api.base + "/metrics") as r:
            text = await r.text()
    timed = {
        line.split('step="')[1].split('"')[0]: float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("statsd_gateway_last_flush_step_duration_seconds{")
    }
    assert set(timed) == {"swap", "finish", "fold", "write", "release"}, text
    assert all(seconds >= 0 for seconds in timed.values())


async def test_a_store_outage_keeps_the_snapshot_and_the_retry_writes_it_once(
    parts: tuple[Flusher, ManualClock],
) -> None:
    flusher, clock = parts
    store = flusher.store
    assert isinstance(store, MemoryStore)
    flusher.aggregator.add_samples(
        "default", [("c", (), MetricType.COUNTER, 2.0, 1.0, None, False)]
    )
    store.outage = StoreError("the disk is full")
    assert not await flusher.flush()
    assert len(flusher.aggregator.pending) == 1 and flusher.last_error == "the disk is full"
    assert not await flusher.flush()  # backing off: not even tried
    assert store.writes == 0
    store.outage = None
    clock.advance(10.0)  # the backoff (one interval) has run out
    assert await flusher.flush()
    assert flusher.aggregator.pending == [] and flusher.last_error is None
    assert store.writes == 3  # the kept snapshot, then those swapped since (empty), in order
    got = await store.read_for_rebuild(10.0, 0.0)
    assert got.sum.tolist() == [2.0]
    flusher.close()


async def test_a_series_that_cannot_be_finished_is_set_aside_alone(
    parts: tuple[Flusher, ManualClock],
) -> None:
    """State past every door's validation (here a value that is not a number in a timing's
    buffer) fails the finish of the whole snapshot: that series-bucket is set aside, logged and
    counted, and the rest of the interval is written at once."""
    flusher, _ = parts
    agg = flusher.aggregator
    agg.add_samples(
        "default",
        [
            ("good", (), MetricType.TIMING, 3.0, 1.0, None, False),
            ("bad", (), MetricType.TIMING, 4.0, 1.0, None, False),
        ],
    )
    bad = agg.registry.id_of(("default", "bad", ()))
    (bucket,) = agg._live.values()
    bucket[bad].values.append("not a number")  # type: ignore[union-attr, arg-type]
    assert await flusher.flush()
    assert flusher.telemetry.flush_quarantined_series == 1
    got = await flusher.store.read_for_rebuild(10.0, 0.0)
    assert [k[1] for k in got.keys] == ["good"] and got.sum.tolist() == [3.0]
    assert agg.pending == []
    flusher.close()
