from statsd_gateway.gateway import Gateway
from tests.conftest import T0, Api, ManualClock, send_udp, wait_for_udp


async def test_udp_counter_and_http_timing_come_back(
    gateway: Gateway, api: Api, clock: ManualClock
) -> None:
    send_udp(gateway, b"hits:1|c\nhits:2|c|@0.5\nbad line")
    await wait_for_udp(gateway, 1)
    status, body = await api.report({"name": "lat", "type": "timing", "value": 12.5})
    assert status == 200, body
    status, body = await api.query(name="hits", agg="sum", since=int(T0), until=int(T0 + 60))
    assert status == 200, body
    assert body["points"] == [{"timestamp": int(T0), "value": 5}]
    await gateway.flusher.flush()
    status, body = await api.query(name="lat", agg="p99", since=int(T0), until=int(T0 + 60))
    assert body["points"][0]["value"] == 12.5
    assert gateway.telemetry.rejects[("udp", "malformed_line")] == 1
