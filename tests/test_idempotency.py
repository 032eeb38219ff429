"""Idempotency keys: applied once, replayed with the stored answer, durable with the points."""

from __future__ import annotations

import asyncio

from aiohttp import ClientSession

from statsd_gateway.config import Config
from statsd_gateway.gateway import Gateway
from tests.conftest import KEY, OTHER_KEY, T0, Api, ManualClock

# Every test making a config runs on both backends (tests/conftest.py).
STORE_BACKENDS = ("sqlite", "postgresql")

BATCH = {
    "points": [
        {"name": "orders", "type": "counter", "value": 2},
        {"name": "orders", "type": "counter", "value": "two"},
    ],
    "idempotency_key": "batch-1",
}


async def _sum(api: Api, key: str = KEY) -> object:
    status, body = await api.query(
        key=key, name="orders", agg="sum", since=int(T0), until=int(T0 + 60)
    )
    assert status == 200, body
    return body["points"][0]["value"]


async def _post(api: Api, path: str, body: object, **headers: str) -> tuple[int, object, str]:
    h = {"Authorization": f"Bearer {KEY}", **headers}
    async with api.session.post(api.base + path, json=body, headers=h) as r:
        return r.status, await r.json(), r.headers.get("Idempotent-Replayed", "")


async def test_retry_with_same_body_is_replayed_and_applied_once(api: Api) -> None:
    first = await _post(api, "/v1/metrics/batch", BATCH)
    again = await _post(api, "/v1/metrics/batch", BATCH)
    assert first[0] == again[0] == 200
    assert "replayed" not in first[1]  # type: ignore[operator]
    assert again[1] == {**first[1], "replayed": True}  # type: ignore[dict-item]
    assert first[1]["accepted"] == 1  # type: ignore[index]
    assert (first[2], again[2]) == ("", "true")
    assert await _sum(api) == 2


async def test_same_key_other_body_is_refused(api: Api) -> None:
    await _post(api, "/v1/metrics/batch", BATCH)
    other = {**BATCH, "points": [{"name": "orders", "type": "counter", "value": 5}]}
    status, body, _ = await _post(api, "/v1/metrics/batch", other)
    assert status == 409
    assert body["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"  # type: ignore[index]
    assert await _sum(api) == 2


async def test_header_key_on_report(api: Api) -> None:
    point = {"name": "orders", "type": "counter", "value": 3}
    for i in range(3):
        status, body, _ = await _post(api, "/v1/metrics/report", point, **{"Idempotency-Key": "r1"})
        assert status == 200
        assert body == ({"ok": True} if i == 0 else {"ok": True, "replayed": True})
    assert await _sum(api) == 3


async def test_concurrent_requests_with_one_key_apply_once(api: Api) -> None:
    results = await asyncio.gather(*(_post(api, "/v1/metrics/batch", BATCH) for _ in range(8)))
    assert sorted(r[2] for r in results) == [""] + ["true"] * 7
    assert await _sum(api) == 2


async def test_keys_are_per_tenant(api: Api) -> None:
    await _post(api, "/v1/metrics/batch", BATCH)
    h = {"Authorization": f"Bearer {OTHER_KEY}"}
    async with api.session.post(api.base + "/v1/metrics/batch", json=BATCH, headers=h) as r:
        assert r.status == 200
        assert r.headers.get("Idempotent-Replayed") is None
    assert await _sum(api, OTHER_KEY) == 2


async def test_failed_request_leaves_the_key_unused(api: Api) -> None:
    bad = {"name": "orders", "type": "counter", "value": "x", "idempotency_key": "k"}
    status, _, _ = await _post(api, "/v1/metrics/report", bad)
    assert status == 400
    good = {**bad, "value": 4}
    status, _, replayed = await _post(api, "/v1/metrics/report", good)
    assert (status, replayed) == (200, "")


async def test_key_survives_flush_and_restart(config: Config, clock: ManualClock) -> None:
    for round_ in range(2):
        gw = Gateway(config, clock=clock, flush_on_ticks=False)
        await gw.start()
        try:
            assert gw.http_address is not None
            async with ClientSession() as session:
                api = Api(session, "http://{}:{}".format(*gw.http_address))
                _, _, replayed = await _post(api, "/v1/metrics/batch", BATCH)
                assert replayed == ("true" if round_ else "")
                await gw.flusher.flush()
                _, _, replayed = await _post(api, "/v1/metrics/batch", BATCH)
                assert replayed == "true"
                assert await _sum(api) == 2
        finally:
            await gw.stop()
