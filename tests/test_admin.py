"""The admin scope: DELETE /v1/metrics removes a metric's series, their history in every tier
and in memory, and frees their cardinality slots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from statsd_gateway.config import ConfigError, config_from_dict
from tests.conftest import ADMIN_KEY, KEY, T0, Api, ManualClock, make_config, running


def counter(value: float, ts: float | None = None, **tags: str) -> dict[str, Any]:
    point: dict[str, Any] = {"name": "jobs", "type": "counter", "value": value, "tags": tags}
    if ts is not None:
        point["timestamp"] = ts
    return point


async def delete(api: Api, key: str = ADMIN_KEY, **params: str) -> tuple[int, Any]:
    return await api.request("DELETE", "/v1/metrics", params=params, key=key)


async def total(api: Api, **params: Any) -> Any:
    status, body = await api.query(name="jobs", agg="sum", since=int(T0 - 7200), **params)
    if status == 404:
        return None
    assert status == 200, body
    return sum(p["value"] for p in body["points"])


async def test_without_the_admin_scope_a_delete_is_403(api: Api) -> None:
    await api.report(counter(1))
    status, body = await delete(api, key=KEY, name="jobs")
    assert status == 403 and body["error"]["code"] == "PERMISSION_DENIED", body
    assert "admin" in body["error"]["message"]
    assert await total(api) == 1


async def test_a_delete_removes_history_memory_and_frees_the_slots(
    tmp_path: Path, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path, aggregation={"max_series_per_tenant": 3})
    async with running(config, clock) as (gw, api):
        # Stored history in every tier (an hour back, rolled up), then points only in memory.
        for env, v in (("prod", 1), ("dev", 10)):
            await api.report(counter(v, T0 - 3600, env=env))
        clock.advance(3600)
        assert await gw.flusher.flush()
        await api.batch([counter(2, env="prod"), counter(20, env="dev"), counter(100)])
        assert await total(api) == 133
        status, body = await api.report(counter(1, env="qa"))  # a fourth series: refused
        assert status == 429, body

        status, body = await delete(api, name="jobs", tags="env:dev")
        assert status == 200, body
        assert body["deleted"]["series"] == 1 and body["deleted"]["stored_series"] == 1
        assert body["deleted"]["rows"] >= 3  # its rows in the 10 s, 1 m and 1 h tiers
        assert "key 'ops' deleted 1 series of 'jobs'" in caplog.text
        assert await total(api) == 103
        assert await total(api, tags="env:dev") == 0
        assert (await api.report(counter(5, env="qa")))[0] == 200  # the slot is free again
        clock.advance(10)
        assert await gw.flusher.flush()
        assert await total(api) == 108

        status, body = await delete(api, name="jobs")
        assert status == 200 and body["deleted"]["series"] == 3, body
        assert await total(api) is None  # no series left: the metric is gone
        status, body = await delete(api, name="jobs")
        assert status == 404, body
    async with running(config, clock) as (gw, api):  # nothing comes back from the log or store
        assert await total(api) is None
        await api.report({"name": "jobs", "type": "gauge", "value": 1})  # free to be a gauge now
        status, body = await api.query(name="jobs", agg="last")
        assert status == 200 and body["points"][0]["value"] == 1, body


async def test_a_delete_is_strict_about_its_parameters(api: Api) -> None:
    await api.report(counter(1))
    status, body = await delete(api)
    assert status == 400 and body["error"]["field"] == "name", body
    status, body = await delete(api, name="jobs", tag="env:x")
    assert status == 400 and body["error"]["field"] == "tag", body
    assert await total(api) == 1


def test_scopes_in_config_include_admin() -> None:
    key = {"name": "ops", "sha256": "a" * 64, "scopes": ["admin"]}
    cfg = config_from_dict({"auth": {"keys": [key]}})
    assert cfg.auth.keys[0].scopes == ("admin",)
    with pytest.raises(ConfigError, match="read, write, admin"):
        config_from_dict({"auth": {"keys": [{**key, "scopes": ["root"]}]}})
