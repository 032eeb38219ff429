"""StatsD over a real UDP socket into the gateway, read back through the real query API."""

from __future__ import annotations

from typing import Any

import numpy as np

from statsd_gateway.gateway import Gateway
from tests.conftest import T0, Api, ManualClock, send_udp, wait_for_udp

SINCE = int(T0 - 3600)
UNTIL = int(T0 + 60)


async def values(api: Api, **params: Any) -> list[Any]:
    params.setdefault("since", SINCE)
    params.setdefault("until", UNTIL)
    status, body = await api.query(**params)
    assert status == 200, body
    return [p["value"] for p in body["points"]]


async def test_one_bad_line_does_not_stop_the_datagram(gateway: Gateway, api: Api) -> None:
    send_udp(gateway, b"a:1|c\nb:2|c\r\nthis is not statsd\nc:3|c|#env:prod\nd:4|zz")
    await wait_for_udp(gateway, 1)
    t = gateway.telemetry
    assert t.rejects[("udp", "malformed_line")] == 1
    assert t.rejects[("udp", "unknown_type")] == 1
    assert t.accepted["udp"] == 3
    assert t.lines["udp"] == 5
    for name, want in (("a", 1), ("b", 2), ("c", 3)):
        assert await values(api, name=name, agg="sum") == [want]
    status, body = await api.query(name="d", agg="sum", since=SINCE, until=UNTIL)
    assert status == 404, body


async def test_counter_sample_rate(gateway: Gateway, api: Api) -> None:
    send_udp(gateway, b"hits:1|c|@0.1\nhits:2|c")
    await wait_for_udp(gateway, 1)
    assert await values(api, name="hits", agg="sum") == [12]
    assert await values(api, name="hits", agg="count") == [11]
    await gateway.flusher.flush()
    assert await values(api, name="hits", agg="sum") == [12]
    assert await values(api, name="hits", agg="count") == [11]


async def test_gauge_deltas_across_a_flush(gateway: Gateway, api: Api, clock: ManualClock) -> None:
    send_udp(gateway, b"temp:10|g")
    await wait_for_udp(gateway, 1)
    await gateway.flusher.flush()
    clock.advance(10)
    send_udp(gateway, b"temp:+5|g\ntemp:-3|g")
    await wait_for_udp(gateway, 2)
    assert await values(api, name="temp", agg="last") == [12]
    assert await values(api, name="temp", agg="max") == [15]
    await gateway.flusher.flush()
    status, body = await api.query(
        name="temp", agg="last", window="10s", since=int(T0), until=int(T0 + 20)
    )
    assert status == 200, body
    assert body["points"] == [
        {"timestamp": int(T0), "value": 10},
        {"timestamp": int(T0 + 10), "value": 12},
    ]
    clock.advance(1)
    send_udp(gateway, b"temp:-20|g")  # a negative delta, not a negative absolute value
    await wait_for_udp(gateway, 3)
    assert await values(api, name="temp", agg="last") == [-8]


async def test_timer_quantiles(gateway: Gateway, api: Api) -> None:
    rng = np.random.default_rng(42)
    samples = rng.lognormal(mean=4.0, sigma=0.8, size=2000).round(2).tolist()
    datagrams = []
    for i in range(0, len(samples), 100):
        lines = [f"req.time:{v}|ms" for v in samples[i : i + 100]]
        datagrams.append("\n".join(lines).encode())
    send_udp(gateway, *datagrams)
    await wait_for_udp(gateway, len(datagrams))
    assert gateway.telemetry.queue_dropped == 0
    for flushed in (False, True):
        if flushed:
            await gateway.flusher.flush()
        assert await values(api, name="req.time", agg="count") == [len(samples)], flushed
        for agg, qq in (("p50", 0.5), ("p99", 0.99)):
            want = float(np.quantile(samples, qq, method="lower"))
            (got,) = await values(api, name="req.time", agg=agg)
            assert abs(got - want) <= 0.01 * want, (agg, got, want, flushed)


async def test_packed_values_and_sampled_timer(gateway: Gateway, api: Api) -> None:
    send_udp(gateway, b"pk:1:2:3|ms\npk:10|ms|@0.5")
    await wait_for_udp(gateway, 1)
    assert await values(api, name="pk", agg="count") == [5]
    assert await values(api, name="pk", agg="sum") == [26]
    assert await values(api, name="pk", agg="max") == [10]


async def test_set_distinct(gateway: Gateway, api: Api) -> None:
    send_udp(gateway, b"users:alice|s\nusers:bob|s\nusers:alice|s", b"users:carol|s")
    await wait_for_udp(gateway, 2)
    assert await values(api, name="users", agg="distinct") == [3]
    await gateway.flusher.flush()
    send_udp(gateway, b"users:bob|s\nusers:dave|s")
    await wait_for_udp(gateway, 3)
    assert await values(api, name="users", agg="distinct") == [4]


async def test_dogstatsd_tags_are_queryable(gateway: Gateway, api: Api) -> None:
    send_udp(
        gateway,
        b"req:1|c|#env:prod,region:eu\nreq:2|c|#env:dev\nreq:4|c|@1|#env:prod|#region:us\n"
        b"req:8|c|#canary",
    )
    await wait_for_udp(gateway, 1)
    assert await values(api, name="req", agg="sum") == [15]
    assert await values(api, name="req", agg="sum", tags="env:prod") == [5]
    assert await values(api, name="req", agg="sum", tags="env:prod,region:eu") == [1]
    assert await values(api, name="req", agg="sum", **{"tags[region]": "us"}) == [4]
    assert await values(api, name="req", agg="sum", tags="canary:") == [8]
    status, body = await api.query(name="req", agg="sum", group_by="env", since=SINCE)
    assert status == 200, body
    by_env = {s["tags"].get("env"): s["points"][0]["value"] for s in body["series"]}
    assert by_env == {"prod": 5, "dev": 2, None: 8}


async def test_backdated_line_lands_in_its_own_bucket(gateway: Gateway, api: Api) -> None:
    old = int(T0 - 100)
    send_udp(gateway, f"late:5|c|T{old}\nlate:1|c".encode())
    await wait_for_udp(gateway, 1)

    async def points() -> list[dict[str, Any]]:
        status, body = await api.query(
            name="late", agg="sum", window="10s", since=int(T0 - 200), until=int(T0 + 60)
        )
        assert status == 200, body
        return list(body["points"])

    want = [{"timestamp": old, "value": 5}, {"timestamp": int(T0), "value": 1}]
    assert await points() == want
    await gateway.flusher.flush()
    assert await points() == want
    send_udp(gateway, f"late:7|c|T{old + 3}".encode())  # merged into the bucket on disk
    await wait_for_udp(gateway, 2)
    await gateway.flusher.flush()
    assert await points() == [{"timestamp": old, "value": 12}, {"timestamp": int(T0), "value": 1}]


async def test_udp_data_survives_flush_and_restart(
    gateway: Gateway, api: Api, clock: ManualClock
) -> None:
    send_udp(gateway, b"dur:1|c\ndur.t:5|ms\ndur.t:15|ms")
    await wait_for_udp(gateway, 1)
    await gateway.flusher.flush()
    clock.advance(10)
    send_udp(gateway, b"dur:2|c\ndur.t:25|ms")  # still in memory when stop() is called
    await wait_for_udp(gateway, 2)
    await gateway.stop()

    again = Gateway(gateway.config, clock=clock, flush_on_ticks=False)
    await again.start()
    try:
        assert again.http_address is not None
        host, port = again.http_address
        api2 = Api(api.session, f"http://{host}:{port}")
        assert await values(api2, name="dur", agg="sum") == [3]
        assert await values(api2, name="dur.t", agg="count") == [3]
        assert await values(api2, name="dur.t", agg="max") == [25]
        (p50,) = await values(api2, name="dur.t", agg="p50")
        assert abs(p50 - 15) <= 0.15
        status, body = await api2.query(
            name="dur", agg="sum", window="10s", since=int(T0), until=int(T0 + 20)
        )
        assert status == 200, body
        assert body["points"] == [
            {"timestamp": int(T0), "value": 1},
            {"timestamp": int(T0 + 10), "value": 2},
        ]
        # The type survives too: a gauge of that name is still a conflict.
        send_udp(again, b"dur:1|g")
        await wait_for_udp(again, 1)
        assert again.telemetry.rejects[("udp", "type_conflict")] == 1
    finally:
        await again.stop()


async def test_gauge_last_with_equal_timestamps_is_the_later_value(
    gateway: Gateway, api: Api
) -> None:
    # DogStatsD timestamps are whole seconds: two values of one second, one already on disk.
    ts = int(T0 - 100)
    send_udp(gateway, f"level:1|g|T{ts}".encode())
    await wait_for_udp(gateway, 1)
    await gateway.flusher.flush()
    send_udp(gateway, f"level:2|g|T{ts}".encode())
    await wait_for_udp(gateway, 2)
    before = await values(api, name="level", agg="last")
    await gateway.flusher.flush()
    after = await values(api, name="level", agg="last")
    assert (before, after) == ([2], [2])
