"""The HTTP contract of DESIGN.md §4, against the real aiohttp app on a real port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import ClientSession, web

from statsd_gateway.api.app import PUBLIC, ROUTE_SCOPES, create_app
from statsd_gateway.gateway import Gateway
from tests.conftest import (
    KEY,
    OTHER_KEY,
    READ_ONLY_KEY,
    T0,
    Api,
    ManualClock,
    make_config,
    running,
    send_udp,
    wait_for_udp,
)

SINCE = int(T0 - 3600)
UNTIL = int(T0 + 60)
V1_ENDPOINTS = [
    ("POST", "/v1/metrics/report", {"json": {"name": "a", "value": 1}}),
    ("POST", "/v1/metrics/batch", {"json": {"points": []}}),
    ("GET", "/v1/metrics/query", {"params": {"name": "a", "agg": "sum"}}),
    ("GET", "/v1/metrics/sketch", {"params": {"name": "a"}}),
    ("GET", "/v1/metrics", {}),
    ("GET", "/v1/metrics/tags", {"params": {"name": "a"}}),
]


def assert_error(status: int, body: Any, want_status: int, code: str, field: Any = ...) -> None:
    assert status == want_status, body
    assert body["ok"] is False, body
    assert set(body["error"]) == {"code", "message", "field"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    if field is not ...:
        assert body["error"]["field"] == field, body


def assert_close(got: float, want: float, rel: float = 0.01) -> None:
    assert abs(got - want) <= rel * abs(want), (got, want)


async def q(api: Api, key: str = KEY, **params: Any) -> Any:
    params.setdefault("since", SINCE)
    params.setdefault("until", UNTIL)
    status, body = await api.query(key=key, **params)
    assert status == 200, body
    return body


async def single(api: Api, **params: Any) -> float:
    body = await q(api, **params)
    assert len(body["points"]) == 1, body
    return float(body["points"][0]["value"])


# -- auth ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "kw"), V1_ENDPOINTS)
@pytest.mark.parametrize("key", [None, "not-a-key"])
async def test_v1_endpoints_refuse_missing_or_wrong_key(
    gateway: Gateway, method: str, path: str, kw: dict[str, Any], key: str | None
) -> None:
    assert gateway.http_address is not None
    host, port = gateway.http_address
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    async with (
        ClientSession() as session,
        session.request(method, f"http://{host}:{port}{path}", headers=headers, **kw) as r,
    ):
        body = await r.json(content_type=None)
        assert r.headers.get("WWW-Authenticate", "").startswith("Bearer"), r.headers
        assert r.content_type == "application/json"
    assert_error(r.status, body, 401, "UNAUTHENTICATED")


async def test_read_only_key_cannot_report(api: Api) -> None:
    status, body = await api.report({"name": "ro", "value": 1}, key=READ_ONLY_KEY)
    assert_error(status, body, 403, "PERMISSION_DENIED")
    status, body = await api.batch([{"name": "ro", "value": 1}], key=READ_ONLY_KEY)
    assert_error(status, body, 403, "PERMISSION_DENIED")
    status, body = await api.query(key=READ_ONLY_KEY, name="ro", agg="sum")
    assert_error(status, body, 404, "METRIC_NOT_FOUND")  # nothing was stored, but reading is ok


# -- report -------------------------------------------------------------------------------------


async def test_report_returns_ok(api: Api) -> None:
    status, body = await api.report({"name": "r.ok", "type": "counter", "value": 2})
    assert (status, body) == (200, {"ok": True})


@pytest.mark.parametrize(
    ("point", "field"),
    [
        ({"name": "...", "value": 1}, "name"),
        ({"name": "!!!", "value": 1}, "name"),
        ({"name": "", "value": 1}, "name"),
        ({"name": "x" * 201, "value": 1}, "name"),
        ({"value": 1}, "name"),
        ({"name": "v", "value": "NaN"}, "value"),
        ({"name": "v", "value": "12"}, "value"),
        ({"name": "v", "value": True}, "value"),
        ({"name": "v", "value": None}, "value"),
        ({"name": "v"}, "value"),
        ({"name": "v", "value": 1, "type": "meter"}, "type"),
        ({"name": "v", "value": 1, "tags": ["env:prod"]}, "tags"),
        ({"name": "v", "value": 1, "tags": {f"k{i}": "v" for i in range(33)}}, "tags"),
        ({"name": "v", "value": 1, "sample_rate": 0}, "sample_rate"),
        ({"name": "v", "value": 1, "sample_rate": 2}, "sample_rate"),
        ({"name": "v", "value": 1, "sample_rate": 1e-10}, "sample_rate"),
        ({"name": "v", "value": 1, "sample_rate": 5e-324}, "sample_rate"),
        ({"name": "v", "value": 1, "foo": 1}, "foo"),
        ({"name": "v", "value": 1, "timestamp": "yesterday"}, "timestamp"),
        ({"name": "v", "value": 1, "timestamp": "2025-11-26T15:59:00"}, "timestamp"),  # no offset
        ({"name": "v", "value": 1, "timestamp": 0}, "timestamp"),
        ({"name": "v", "value": 10**400}, "value"),
        ({"name": "v", "value": "", "type": "set"}, "value"),
        ({"name": "v", "value": 1, "tags": {"": "x"}}, "tags"),
        ({"name": "v", "value": 1, "tags": {"k": "x" * 201}}, "tags.k"),
        ({"name": "v", "value": 1, "idempotency_key": ""}, "idempotency_key"),
    ],
)
async def test_report_validation_names_the_field(
    api: Api, point: dict[str, Any], field: str
) -> None:
    status, body = await api.report(point)
    assert_error(status, body, 400, "INVALID_ARGUMENT", field)


async def test_report_tag_value_not_a_string_names_the_tag(api: Api) -> None:
    status, body = await api.report({"name": "v", "value": 1, "tags": {"env": 1}})
    assert_error(status, body, 400, "INVALID_ARGUMENT")
    assert body["error"]["field"] in ("tags", "tags.env"), body


async def test_report_name_at_the_limits_is_accepted(api: Api) -> None:
    name = "a" * 200
    status, body = await api.report({"name": name, "value": 1})
    assert status == 200, body
    status, body = await api.report(
        {"name": "x.y-z_/w:v", "value": 1, "tags": {f"k{i}": "v" for i in range(32)}}
    )
    assert status == 200, body


async def test_report_nan_literal_rejected(api: Api) -> None:
    # Python's json accepts the NaN literal; the gateway must not store it.
    status, body = await api.request(
        "POST",
        "/v1/metrics/report",
        data=b'{"name": "nan", "value": NaN}',
        headers={"Content-Type": "application/json"},
    )
    assert_error(status, body, 400, "INVALID_ARGUMENT", "value")


async def test_report_timestamp_limits(api: Api) -> None:
    now = T0 + 5
    for ts in (now - 6 * 3600 - 60, now + 660):
        status, body = await api.report({"name": "ts", "value": 1, "timestamp": ts})
        assert_error(status, body, 400, "INVALID_ARGUMENT", "timestamp")
    # ISO 8601 forms with an offset that are not strict RFC 3339 are read as they always were.
    iso = ("2025-11-26T15:59:00Z", "2025-11-26T15:59Z", "20251126T155900Z")
    for ts in (now - 5 * 3600, now + 540, *iso):
        status, body = await api.report({"name": "ts", "value": 1, "timestamp": ts})
        assert status == 200, (ts, body)
    status, body = await api.report({"name": "ts", "value": 1, "timestamp": "2025-11-26T15:59"})
    assert_error(status, body, 400, "INVALID_ARGUMENT", "timestamp")  # no offset: refused
    body = await q(api, name="ts", agg="count", since=int(now - 6 * 3600), until=int(now + 600))
    assert body["points"][0]["value"] == 5
    status, body = await api.batch([{"name": "ts", "value": 1, "timestamp": now + 3600}])
    assert body["errors"][0]["field"] == "points[0].timestamp", body


async def test_type_conflict(api: Api, gateway: Gateway) -> None:
    assert (await api.report({"name": "tc", "type": "counter", "value": 1}))[0] == 200
    status, body = await api.report({"name": "tc", "type": "gauge", "value": 1})
    assert_error(status, body, 409, "TYPE_CONFLICT")
    await gateway.flusher.flush()
    status, body = await api.report({"name": "tc", "type": "timing", "value": 1})
    assert_error(status, body, 409, "TYPE_CONFLICT")
    assert await single(api, name="tc", agg="sum") == 1


# -- batch --------------------------------------------------------------------------------------


async def test_batch_accepts_the_valid_points_and_names_the_bad_ones(api: Api) -> None:
    points = [
        {"name": "b.ok", "type": "counter", "value": 1},
        {"name": "b.ok", "type": "counter", "value": "x"},
        {"name": "b.ok", "type": "counter", "value": 2, "tags": {"env": "prod"}},
        {"name": "-._", "value": 1},  # no letter or digit
        {"name": "b.ok", "type": "gauge", "value": 1},
        {"name": "b.ok", "type": "counter", "value": 4},
    ]
    status, body = await api.batch(points)
    assert status == 200, body
    assert body["ok"] is False
    assert (body["accepted"], body["rejected"]) == (3, 3)
    errors = {e["index"]: e for e in body["errors"]}
    assert sorted(errors) == [1, 3, 4]
    assert errors[1]["field"] == "points[1].value"
    assert errors[1]["code"] == "INVALID_ARGUMENT"
    assert errors[3]["field"] == "points[3].name"
    assert errors[4]["code"] == "TYPE_CONFLICT"
    for e in body["errors"]:
        assert set(e) == {"index", "code", "message", "field"}
    assert await single(api, name="b.ok", agg="sum") == 7
    assert await single(api, name="b.ok", agg="count") == 3
    assert await single(api, name="b.ok", agg="sum", tags="env:prod") == 2


async def test_batch_all_valid_and_empty(api: Api) -> None:
    status, body = await api.batch([])
    assert (status, body) == (200, {"ok": True, "accepted": 0, "rejected": 0, "errors": []})
    status, body = await api.batch([{"name": "b2", "value": 1}, {"name": "b2", "value": 3}])
    assert (status, body) == (200, {"ok": True, "accepted": 2, "rejected": 0, "errors": []})


async def test_batch_over_max_points(tmp_path: Path, clock: ManualClock) -> None:
    cfg = make_config(tmp_path, http={"max_batch_points": 3})
    async with running(cfg, clock) as (_, api):
        status, body = await api.batch([{"name": "m", "value": i} for i in range(3)])
        assert status == 200 and body["accepted"] == 3, body
        status, body = await api.batch([{"name": "m", "value": i} for i in range(4)])
        assert_error(status, body, 400, "INVALID_ARGUMENT", "points")
        assert await single(api, name="m", agg="count") == 3
        status, doc = await api.request("GET", "/v1/openapi.json", key=None)
        assert status == 200
        assert doc["components"]["schemas"]["BatchBody"]["properties"]["points"]["maxItems"] == 3


async def test_batch_over_default_max_points(api: Api) -> None:
    status, body = await api.batch([{"name": "m", "value": 1}] * 10_001)
    assert_error(status, body, 400, "INVALID_ARGUMENT")
    status, body = await api.query(name="m", agg="count")
    assert_error(status, body, 404, "METRIC_NOT_FOUND")


@pytest.mark.parametrize("path", ["/v1/metrics/report", "/v1/metrics/batch"])
async def test_malformed_json(api: Api, path: str) -> None:
    status, body = await api.request(
        "POST", path, data=b'{"name": "x", ', headers={"Content-Type": "application/json"}
    )
    assert_error(status, body, 400, "INVALID_ARGUMENT")


async def test_batch_body_not_an_object(api: Api) -> None:
    status, body = await api.request("POST", "/v1/metrics/batch", json=[1, 2])
    assert_error(status, body, 400, "INVALID_ARGUMENT", "body")
    status, body = await api.request("POST", "/v1/metrics/batch", json={"points": {}})
    assert_error(status, body, 400, "INVALID_ARGUMENT", "points")
    status, body = await api.request("POST", "/v1/metrics/batch", json={})
    assert_error(status, body, 400, "INVALID_ARGUMENT", "points")
    status, body = await api.request("POST", "/v1/metrics/batch", json={"points": [], "pts": []})
    assert_error(status, body, 400, "INVALID_ARGUMENT", "pts")


async def test_body_over_max_body_bytes(tmp_path: Path, clock: ManualClock) -> None:
    cfg = make_config(tmp_path, http={"max_body_bytes": 2048})
    async with running(cfg, clock) as (_, api):
        small = [{"name": "big", "value": 1}]
        status, body = await api.batch(small)
        assert status == 200, body
        many = [{"name": "big", "value": i} for i in range(200)]
        status, body = await api.batch(many)
        assert_error(status, body, 413, "PAYLOAD_TOO_LARGE")

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the read must stop
            yield b'{"points": ['
            for i in range(199):
                yield b'{"name": "big", "value": %d},' % i
            yield b'{"name": "big", "value": 0}]}'

        status, body = await api.request(
            "POST",
            "/v1/metrics/batch",
            data=chunks(),
            headers={"Content-Type": "application/json"},
        )
        assert_error(status, body, 413, "PAYLOAD_TOO_LARGE")
        assert await single(api, name="big", agg="count") == 1


# -- routing ------------------------------------------------------------------------------------


def undeclared_routes(app: web.Application) -> list[str]:
    """The routes `app` serves (its sub-apps' included) that declare no scope."""
    scopes = app[ROUTE_SCOPES]
    assert set(scopes.values()) <= {"read", "write", "admin", PUBLIC}
    return [f"{r.method} {r.resource}" for r in app.router.routes() if r not in scopes]


def test_every_route_declares_its_scope(gateway: Gateway) -> None:
    """A route served without an entry in ROUTES (and so without a scope) fails here."""
    assert undeclared_routes(create_app(gateway, max_body_bytes=1024)) == []


async def test_each_route_needs_its_scope(api: Api) -> None:
    await api.report({"name": "s.c", "type": "counter", "value": 1})
    # The read-only key: no writes, no deletes; the query and discovery answer.
    status, body = await api.report({"name": "s.c", "value": 1}, key=READ_ONLY_KEY)
    assert_error(status, body, 403, "PERMISSION_DENIED")
    status, body = await api.request(
        "DELETE", "/v1/metrics", params={"name": "s.c"}, key=READ_ONLY_KEY
    )
    assert_error(status, body, 403, "PERMISSION_DENIED")
    assert "'admin'" in body["error"]["message"]
    for path in ("/v1/metrics", "/v1/metrics/query?name=s.c&agg=sum", "/v1/metrics/tags?name=s.c"):
        status, body = await api.request("GET", path, key=READ_ONLY_KEY)
        assert status == 200, (path, body)
    status, body = await api.request("HEAD", "/v1/metrics/query", key=READ_ONLY_KEY)
    assert status == 405  # no HEAD route that could answer without the route's scope


async def test_unknown_path_and_wrong_method_use_the_envelope(api: Api) -> None:
    status, body = await api.request("GET", "/nope")
    assert_error(status, body, 404, "NOT_FOUND")
    status, body = await api.request("GET", "/v1/metrics/nope")
    assert_error(status, body, 404, "NOT_FOUND")
    status, body = await api.request("GET", "/v1/metrics/report")
    assert_error(status, body, 405, "METHOD_NOT_ALLOWED")
    status, body = await api.request("DELETE", "/v1/metrics/query")
    assert_error(status, body, 405, "METHOD_NOT_ALLOWED")


async def test_health_endpoints_need_no_key(api: Api) -> None:
    for path in ("/healthz", "/readyz"):
        status, body = await api.request("GET", path, key=None)
        assert status == 200, (path, body)
        assert body["ok"] is True


async def test_prometheus_metrics_count_udp_rejects(api: Api, gateway: Gateway) -> None:
    send_udp(gateway, b"good:1|c\nthis is not statsd")
    await wait_for_udp(gateway, 1)
    async with api.session.get(api.base + "/metrics") as r:
        assert r.status == 200
        assert r.content_type == "text/plain"
        text = await r.text()
    lines = [ln for ln in text.splitlines() if ln.startswith("statsd_gateway_rejects_total{")]
    assert any('transport="udp"' in ln and 'reason="malformed_line"' in ln for ln in lines), text
    assert any(ln.endswith(" 1.0") for ln in lines), lines
    assert "# TYPE statsd_gateway_rejects_total counter" in text


# -- freshness and flushes ----------------------------------------------------------------------


async def test_reported_point_is_queryable_before_and_exactly_once_after_flush(
    api: Api, gateway: Gateway, clock: ManualClock
) -> None:
    assert (await api.report({"name": "fresh", "type": "counter", "value": 3}))[0] == 200
    assert await single(api, name="fresh", agg="sum") == 3
    assert await single(api, name="fresh", agg="count") == 1
    await gateway.flusher.flush()
    assert await single(api, name="fresh", agg="sum") == 3
    assert await single(api, name="fresh", agg="count") == 1
    # Same 10 s bucket again: the bucket on disk is merged with, not overwritten.
    clock.advance(1)
    assert (await api.report({"name": "fresh", "type": "counter", "value": 4}))[0] == 200
    assert await single(api, name="fresh", agg="sum") == 7
    await gateway.flusher.flush()
    await gateway.flusher.flush()
    body = await q(api, name="fresh", agg="sum", window="10s")
    assert body["points"] == [{"timestamp": int(T0), "value": 7}]
    assert await single(api, name="fresh", agg="count") == 2


# -- data across buckets, tags and windows ------------------------------------------------------


def _lognormal_points(seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    n = 1000
    values = rng.lognormal(mean=3.0, sigma=1.0, size=n).round(3)
    stamps = rng.uniform(T0 - 600, T0, size=n).round(3)
    envs = rng.choice(["prod", "staging"], size=n)
    hosts = rng.choice(["a", "b", "c"], size=n)
    return [
        {
            "name": "lat",
            "type": "timing",
            "value": float(v),
            "timestamp": float(t),
            "tags": {"env": str(e), "host": str(h)},
        }
        for v, t, e, h in zip(values, stamps, envs, hosts, strict=True)
    ]


def _quantile(values: list[float], qq: float) -> float:
    return float(np.quantile(np.asarray(values), qq, method="lower"))


async def _check_lognormal(api: Api, points: list[dict[str, Any]]) -> None:
    values = [p["value"] for p in points]
    base = {"name": "lat", "since": int(T0 - 600), "until": int(T0)}
    assert await single(api, **base, agg="count") == len(values)
    assert await single(api, **base, agg="sum") == pytest.approx(sum(values), rel=1e-9)
    assert await single(api, **base, agg="min") == min(values)
    assert await single(api, **base, agg="max") == max(values)
    assert_close(await single(api, **base, agg="p50"), _quantile(values, 0.5))
    assert_close(await single(api, **base, agg="p99"), _quantile(values, 0.99))
    assert_close(await single(api, **base, agg="p99.9"), _quantile(values, 0.999))

    # One point per aligned minute, each with the exact count and a merged-sketch p99.
    for agg in ("count", "p99"):
        body = await q(api, **base, agg=agg, window="1m")
        assert body["window"] == "1m"
        got = {p["timestamp"]: p["value"] for p in body["points"]}
        assert sorted(got) == [int(T0 - 600 + 60 * i) for i in range(10)]
        for minute, value in got.items():
            in_minute = [p["value"] for p in points if minute <= p["timestamp"] < minute + 60]
            if agg == "count":
                assert value == len(in_minute)
            else:
                assert_close(value, _quantile(in_minute, 0.99))

    prod = [p["value"] for p in points if p["tags"]["env"] == "prod"]
    assert await single(api, **base, agg="count", tags="env:prod") == len(prod)
    assert await single(api, **base, agg="sum", tags="env:prod") == pytest.approx(sum(prod))
    assert_close(await single(api, **base, agg="p99", tags="env:prod"), _quantile(prod, 0.99))
    prod_a = [p["value"] for p in points if p["tags"] == {"env": "prod", "host": "a"}]
    got_a = await single(api, **base, agg="count", tags='{"env": "prod", "host": "a"}')
    assert got_a == len(prod_a)
    assert await single(api, **base, agg="count", **{"tags[host]": "a"}) == len(
        [p for p in points if p["tags"]["host"] == "a"]
    )

    for agg in ("count", "p50"):
        body = await q(api, **base, agg=agg, group_by="env")
        assert "points" not in body
        by_env = {tuple(s["tags"].items()): s["points"] for s in body["series"]}
        assert sorted(by_env) == [(("env", "prod"),), (("env", "staging"),)]
        for (_, env), pts in ((k[0], v) for k, v in by_env.items()):
            vals = [p["value"] for p in points if p["tags"]["env"] == env]
            assert len(pts) == 1
            if agg == "count":
                assert pts[0]["value"] == len(vals)
            else:
                assert_close(pts[0]["value"], _quantile(vals, 0.5))


async def test_timings_over_many_buckets_and_tag_sets(api: Api, gateway: Gateway) -> None:
    points = _lognormal_points(seed=20251126)
    status, body = await api.batch(points)
    assert (status, body["accepted"]) == (200, 1000), body
    await _check_lognormal(api, points)  # all of it still in memory
    await gateway.flusher.flush()
    await _check_lognormal(api, points)  # all of it from the store


async def test_quantiles_across_series_are_merged_not_averaged(api: Api) -> None:
    rng = np.random.default_rng(7)
    fast = rng.uniform(1, 10, size=900).round(3).tolist()
    slow = rng.uniform(1000, 2000, size=100).round(3).tolist()
    points = [
        {"name": "mix", "type": "timing", "value": v, "tags": {"svc": svc}}
        for svc, vals in (("fast", fast), ("slow", slow))
        for v in vals
    ]
    assert (await api.batch(points))[1]["accepted"] == 1000
    union = fast + slow
    for agg, qq in (("p50", 0.5), ("p99", 0.99)):
        got = await single(api, name="mix", agg=agg)
        assert_close(got, _quantile(union, qq))
        mean_of_quantiles = (_quantile(fast, qq) + _quantile(slow, qq)) / 2
        assert abs(got - mean_of_quantiles) > 0.1 * mean_of_quantiles


# -- query parameters ---------------------------------------------------------------------------


async def test_quantile_of_a_counter_names_the_counter_aggregations(api: Api) -> None:
    await api.report({"name": "cnt", "type": "counter", "value": 1})
    status, body = await api.query(name="cnt", agg="p99")
    assert_error(status, body, 400, "INVALID_ARGUMENT", "agg")
    message = body["error"]["message"]
    for agg in ("count", "sum", "avg", "min", "max", "rate"):
        assert agg in message, message
    await api.report({"name": "members", "type": "set", "value": "u1"})
    for agg in ("sum", "avg", "p50"):
        status, body = await api.query(name="members", agg=agg)
        assert_error(status, body, 400, "INVALID_ARGUMENT", "agg")
        assert "distinct" in body["error"]["message"], body
    assert await single(api, name="members", agg="distinct") == 1


async def test_unknown_and_missing_aggregation(api: Api) -> None:
    await api.report({"name": "g", "value": 1})
    status, body = await api.query(name="g", agg="median")
    assert_error(status, body, 400, "INVALID_ARGUMENT", "agg")
    status, body = await api.query(name="g")
    assert_error(status, body, 400, "INVALID_ARGUMENT", "agg")
    status, body = await api.query(agg="sum")
    assert_error(status, body, 400, "INVALID_ARGUMENT", "name")


async def test_http_names_are_cleaned_as_statsd_names_are(gateway: Gateway, api: Api) -> None:
    """One name, one metric, whichever way it came in: `a/b` is `a-b` over UDP and HTTP alike."""
    send_udp(gateway, b"svc/api latency:1|c")
    await wait_for_udp(gateway, 1)
    status, body = await api.report({"name": "svc/api  latency", "type": "counter", "value": 2})
    assert status == 200, body
    status, body = await api.request("GET", "/v1/metrics")
    assert [m["name"] for m in body["metrics"]] == ["svc-api_latency"], body
    assert await single(api, name="svc-api_latency", agg="sum") == 3
    for name in ("...", "-", "$%!", " "):
        status, body = await api.report({"name": name, "type": "counter", "value": 1})
        assert_error(status, body, 400, "INVALID_ARGUMENT", "name")
    status, body = await api.report({"name": "...", "value": 1})
    assert "letter or digit" in body["error"]["message"], body


async def test_metric_names_filter_by_glob(api: Api) -> None:
    names = ["api.latency", "api.errors", "db.latency", "api.x.y", "a[b]"]
    await api.batch([{"name": n, "type": "counter", "value": 1} for n in names])

    async def matching(match: str) -> list[str]:
        status, body = await api.request("GET", "/v1/metrics", params={"match": match})
        assert status == 200, body
        return [m["name"] for m in body["metrics"]]

    assert await matching("api.*") == ["api.errors", "api.latency", "api.x.y"]
    assert await matching("*.latency") == ["api.latency", "db.latency"]
    assert await matching("db.late?cy") == ["db.latency"]
    assert await matching("api.") == []  # a glob matches the whole name
    assert await matching("a[b]") == []  # [ is literal: "a-b" is not "ab"
    await api.report({"name": "a" * 200, "type": "counter", "value": 1})
    # A pattern that backtracks for minutes with a naive regex, blocking the event loop.
    assert await asyncio.wait_for(matching("*a" * 12 + "*b"), 5) == []


async def test_tag_values_most_frequent_first_bounded_and_flagged(api: Api) -> None:
    points = [
        {"name": "req", "type": "counter", "value": 1, "tags": {"env": env, "host": f"h{i}"}}
        for i, env in enumerate(["prod"] * 5 + ["dev"] * 2 + ["test"] * 2 + ["qa"])
    ]
    assert (await api.batch(points))[0] == 200
    await api.report({"name": "other", "type": "counter", "value": 1, "tags": {"env": "x"}})
    status, body = await api.request("GET", "/v1/metrics/tags", params={"name": "req"})
    assert status == 200, body
    by_key = {t["key"]: t for t in body["tags"]}
    assert list(by_key) == ["env", "host"]
    assert by_key["env"]["values"] == [
        {"value": "prod", "series": 5},
        {"value": "dev", "series": 2},
        {"value": "test", "series": 2},
        {"value": "qa", "series": 1},
    ]
    assert by_key["env"]["truncated"] is False
    params = {"name": "req", "limit": "2"}
    status, body = await api.request("GET", "/v1/metrics/tags", params=params)
    env = body["tags"][0]
    assert [v["value"] for v in env["values"]] == ["prod", "dev"] and env["truncated"] is True
    for bad in ("0", "x", "²", "9" * 5000):
        params = {"name": "req", "limit": bad}
        status, body = await api.request("GET", "/v1/metrics/tags", params=params)
        assert_error(status, body, 400, "INVALID_ARGUMENT", "limit")
    status, body = await api.request("GET", "/v1/metrics/tags", params={"name": "nope"})
    assert_error(status, body, 404, "METRIC_NOT_FOUND", "name")
    status, body = await api.request("GET", "/v1/metrics/tags", params={"nam": "req"})
    assert_error(status, body, 400, "INVALID_ARGUMENT", "nam")


async def test_every_time_in_an_answer_is_a_whole_second(api: Api, clock: ManualClock) -> None:
    clock.advance(0.2468486)
    await api.report({"name": "w", "type": "counter", "value": 1})
    status, body = await api.query(name="w", agg="sum")
    assert status == 200, body
    since, until = body["since"], body["until"]
    assert (since, until) == (int(T0 + 6) - 3600, int(T0 + 6)), body
    assert body["points"] == [{"timestamp": since, "value": 1}]
    status, body = await api.query(name="w", agg="sum", since="-15m", until="now")
    assert (body["since"], body["until"]) == (int(T0 + 5) - 900, int(T0 + 6)), body


async def test_rate_is_what_statsd_users_expect_of_each_type(api: Api) -> None:
    """Etsy statsd's `count_ps` for timings, the sum per second for counters, none for gauges."""
    t = T0 + 1
    for v in (100.0, 200.0, 300.0):
        await api.report({"name": "lat", "type": "timing", "value": v, "timestamp": t})
    await api.report({"name": "hits", "type": "counter", "value": 30, "timestamp": t})
    await api.report({"name": "temp", "type": "gauge", "value": 20, "timestamp": t})
    q = {"since": int(T0), "until": int(T0 + 10), "window": "10s"}
    status, body = await api.query(name="lat", agg="rate", **q)
    assert status == 200 and body["points"] == [{"timestamp": T0, "value": 0.3}], body
    status, body = await api.query(name="hits", agg="rate", **q)
    assert status == 200 and body["points"] == [{"timestamp": T0, "value": 3}], body
    status, body = await api.query(name="temp", agg="rate", **q)
    assert_error(status, body, 400, "INVALID_ARGUMENT", "agg")


async def test_an_unknown_parameter_is_an_error_naming_it_and_the_valid_ones(api: Api) -> None:
    await api.report({"name": "c", "type": "counter", "value": 1, "tags": {"env": "dev"}})
    status, body = await api.query(name="c", agg="sum", tag="env:prod")  # a typo of tags=
    assert_error(status, body, 400, "INVALID_ARGUMENT", "tag")
    message = body["error"]["message"]
    assert "'tag'" in message and "name, agg, tags, window, since, until, group_by" in message
    status, body = await api.query(name="c", agg="sum", **{"tags[env]": "prod"})
    assert status == 200 and body["points"] == [], body  # tags[K] is the tags parameter
    status, body = await api.request(
        "GET", "/v1/metrics/sketch", params={"name": "c", "windw": "1m"}
    )
    assert_error(status, body, 400, "INVALID_ARGUMENT", "windw")
    assert "name, tags, since, until" in body["error"]["message"]
    status, body = await api.request("GET", "/v1/metrics", params={"nme": "c"})
    assert_error(status, body, 400, "INVALID_ARGUMENT", "nme")


async def test_every_missing_required_parameter_is_named_at_once(api: Api) -> None:
    status, body = await api.query()
    assert_error(status, body, 400, "INVALID_ARGUMENT", "name")
    assert body["error"]["message"] == "name and agg are required"
    status, body = await api.query(window="1m")
    assert body["error"]["message"] == "name and agg are required"


async def test_since_until_formats(api: Api, clock: ManualClock) -> None:
    await api.report({"name": "t", "type": "counter", "value": 2, "timestamp": T0 + 1})
    await api.report({"name": "t", "type": "counter", "value": 5, "timestamp": T0 - 1800})
    clock.advance(3600)  # now = T0 + 3605
    status, body = await api.query(name="t", agg="sum", since=int(T0), until=int(T0 + 10))
    assert status == 200, body
    assert (body["since"], body["until"]) == (int(T0), int(T0 + 10))
    assert body["points"] == [{"timestamp": int(T0), "value": 2}]

    status, body = await api.query(
        name="t", agg="sum", since="2025-11-26T16:00:00Z", until="2025-11-26T16:00:10+00:00"
    )
    assert status == 200, body
    assert (body["since"], body["until"]) == (int(T0), int(T0 + 10))
    assert body["points"][0]["value"] == 2

    status, body = await api.query(name="t", agg="sum", since="-1h")
    assert status == 200, body
    assert (body["since"], body["until"]) == (int(T0 + 5), int(T0 + 3605))
    assert body["points"] == []  # the point at T0 + 1 is before since

    status, body = await api.query(name="t", agg="sum", since="-2h", window="1h")
    assert status == 200, body
    assert body["points"] == [
        {"timestamp": int(T0 - 3600), "value": 5},
        {"timestamp": int(T0), "value": 2},
    ]
    status, body = await api.query(name="t", agg="sum")  # default: the last hour
    assert (body["since"], body["until"]) == (int(T0 + 5), int(T0 + 3605))

    for bad in ({"since": "yesterday"}, {"until": "2025-11-26T16:00:00"}):
        status, body = await api.query(name="t", agg="sum", **bad)
        assert_error(status, body, 400, "INVALID_ARGUMENT", next(iter(bad)))


async def test_too_many_points_names_a_window_that_fits(api: Api) -> None:
    await api.report({"name": "wide", "type": "counter", "value": 1})
    status, body = await api.query(name="wide", agg="sum", since="-2d", window="10s")
    assert_error(status, body, 400, "INVALID_ARGUMENT", "window")
    assert "window=1m" in body["error"]["message"], body
    status, body = await api.query(name="wide", agg="sum", since="-2d", window="1m")
    assert status == 200, body


async def test_too_many_points_with_a_small_limit(tmp_path: Path, clock: ManualClock) -> None:
    cfg = make_config(tmp_path, query={"max_points": 10})
    async with running(cfg, clock) as (_, api):
        await api.report({"name": "n", "value": 1})
        status, body = await api.query(name="n", agg="max", since="-1h", window="1m")
        assert_error(status, body, 400, "INVALID_ARGUMENT", "window")
        assert "window=" in body["error"]["message"], body
        status, body = await api.query(name="n", agg="max", since="-1h", window="10m")
        assert status == 200, body


async def test_unknown_metric_is_404(api: Api) -> None:
    status, body = await api.query(name="never.seen", agg="sum")
    assert_error(status, body, 404, "METRIC_NOT_FOUND")


# -- tenants and the metric list ----------------------------------------------------------------


async def test_tenants_are_isolated(api: Api, gateway: Gateway) -> None:
    assert (await api.report({"name": "shared", "type": "counter", "value": 5}))[0] == 200
    status, body = await api.query(key=OTHER_KEY, name="shared", agg="sum")
    assert_error(status, body, 404, "METRIC_NOT_FOUND")
    status, body = await api.request("GET", "/v1/metrics", key=OTHER_KEY)
    assert (status, body["metrics"]) == (200, [])

    # The other tenant's own metric of the same name may even have another type.
    status, body = await api.report({"name": "shared", "value": 7}, key=OTHER_KEY)
    assert (status, body) == (200, {"ok": True})
    await gateway.flusher.flush()
    mine = await q(api, name="shared", agg="sum")
    assert (mine["type"], mine["points"][0]["value"]) == ("counter", 5)
    theirs = await q(api, key=OTHER_KEY, name="shared", agg="last")
    assert (theirs["type"], theirs["points"][0]["value"]) == ("gauge", 7)
    status, body = await api.query(key=OTHER_KEY, name="shared", agg="count")
    assert body["points"][0]["value"] == 1


async def test_list_metrics(api: Api) -> None:
    await api.batch(
        [
            {"name": "req", "type": "counter", "value": 1, "tags": {"env": "prod"}},
            {"name": "req", "type": "counter", "value": 1, "tags": {"region": "eu"}},
            {"name": "lat", "type": "timing", "value": 3},
        ]
    )
    status, body = await api.request("GET", "/v1/metrics")
    assert status == 200, body
    assert body == {
        "ok": True,
        "metrics": [
            {
                "name": "lat",
                "type": "timing",
                "tag_keys": [],
                "aggregations": ["count", "sum", "avg", "min", "max", "rate", "pNN"],
            },
            {
                "name": "req",
                "type": "counter",
                "tag_keys": ["env", "region"],
                "aggregations": ["count", "sum", "avg", "min", "max", "rate"],
            },
        ],
        "tiers": [
            {"resolution": 10.0, "retention": 21600.0},
            {"resolution": 60.0, "retention": 604800.0},
            {"resolution": 3600.0, "retention": 34560000.0},
        ],
    }
    status, body = await api.request("GET", "/v1/metrics", key=READ_ONLY_KEY)
    assert status == 200 and len(body["metrics"]) == 2, body
