"""The Prometheus HTTP API under /api/v1, as Grafana, promtool and a user's curl see it: every
endpoint's shape (Prometheus' documented JSON), its parameters (RFC 3339 and float times, steps
as durations or seconds, GET and form POST), its errors (status, errorType, the message naming
the parameter or the construct), auth and tenants, and the names StatsD metrics and tags get.

The values here are small enough to check by hand; test_promql_answers.py compares answers
with a model of random data.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import ClientSession, encode_basic_auth
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from statsd_gateway.api.prometheus_results import format_value, format_values
from statsd_gateway.config import ApiKey, hash_key
from statsd_gateway.gateway import Gateway
from tests.conftest import (
    ADMIN_KEY,
    KEY,
    OTHER_KEY,
    READ_ONLY_KEY,
    T0,
    Api,
    ManualClock,
    make_config,
    running,
)

NOW = int(T0) + 5  # the clock fixture's time
T = int(T0)
WRITE_ONLY_KEY = "test-key-write-only"


def points() -> list[dict[str, Any]]:
    """Six buckets [T0 - 60, T0): api.hits 1…6 (a, GET) and 2 each (b, POST); api.latency
    10…60 ms (a) and 20…120 (b); gauge temp 0…5 (a) and 100…95 (b); a set; two counters
    whose names escape alike; a name starting with a digit."""
    out: list[dict[str, Any]] = []
    for i in range(6):
        ts = T0 - 60 + 10 * i + 1
        a, b = {"host": "a"}, {"host": "b"}
        out += [
            {"name": "api.hits", "type": "counter", "value": i + 1, "timestamp": ts,
             "tags": {**a, "http.method": "GET"}},
            {"name": "api.hits", "type": "counter", "value": 2, "timestamp": ts,
             "tags": {**b, "http.method": "POST"}},
            {"name": "api.latency", "type": "timing", "value": 10 * (i + 1), "timestamp": ts,
             "tags": a},
            {"name": "api.latency", "type": "timing", "value": 20 * (i + 1), "timestamp": ts,
             "tags": b},
            {"name": "temp", "type": "gauge", "value": i, "timestamp": ts, "tags": a},
            {"name": "temp", "type": "gauge", "value": 100 - i, "timestamp": ts, "tags": b},
        ]  # fmt: skip
    out += [
        {"name": "users", "type": "set", "value": "u1", "timestamp": T0 - 15},
        {"name": "a.b", "type": "counter", "value": 1, "timestamp": T0 - 15},
        {"name": "a_b", "type": "counter", "value": 2, "timestamp": T0 - 15},
        {"name": "5xx.count", "type": "counter", "value": 3, "timestamp": T0 - 15},
    ]
    return out


@pytest.fixture
async def loaded(api: Api, gateway: Gateway) -> AsyncIterator[Api]:
    status, body = await api.batch(points())
    assert status == 200 and body["rejected"] == 0, body
    await gateway.flusher.flush()
    yield api


async def get(api: Api, path: str, key: str | None = KEY, **params: Any) -> tuple[int, Any]:
    return await api.request("GET", "/api/v1" + path, params=params, key=key)


async def ok(api: Api, path: str, **params: Any) -> Any:
    status, body = await get(api, path, **params)
    assert status == 200, body
    assert set(body) == {"status", "data"} and body["status"] == "success", body
    return body["data"]


def assert_error(status: int, body: Any, want_status: int, error_type: str, *words: str) -> None:
    assert status == want_status, body
    assert set(body) == {"status", "errorType", "error"}, body
    assert body["status"] == "error" and body["errorType"] == error_type, body
    assert isinstance(body["error"], str) and body["error"], body
    for w in words:
        assert w in body["error"], (w, body)


def by_metric(result: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(result, key=lambda s: sorted(s["metric"].items()))


# -- /api/v1/query ------------------------------------------------------------------------------


async def test_instant_vector_shape(loaded: Api) -> None:
    data = await ok(loaded, "/query", query="temp", time=T)
    assert data["resultType"] == "vector"
    assert by_metric(data["result"]) == [
        {"metric": {"__name__": "temp", "host": "a"}, "value": [T, "5"]},
        {"metric": {"__name__": "temp", "host": "b"}, "value": [T, "95"]},
    ]
    data = await ok(loaded, "/query", query="sum by (host) (rate(api_hits[1m]))", time=T)
    assert by_metric(data["result"]) == [
        {"metric": {"host": "a"}, "value": [T, "0.35"]},
        {"metric": {"host": "b"}, "value": [T, "0.2"]},
    ]


async def test_scalar_and_string_shapes(loaded: Api) -> None:
    assert await ok(loaded, "/query", query="1+1", time=T) == {
        "resultType": "scalar",
        "result": [T, "2"],
    }
    assert await ok(loaded, "/query", query='"hello"', time=T) == {
        "resultType": "string",
        "result": [T, "hello"],
    }


async def test_an_unknown_metric_is_an_empty_vector(loaded: Api) -> None:
    for query in ("nothing_here", "rate(nothing_here[1m])", "sum(rate(nothing[5m]))"):
        data = await ok(loaded, "/query", query=query, time=T)
        assert data == {"resultType": "vector", "result": []}, query


@pytest.mark.parametrize(
    ("query", "want"),
    [
        ("0.5", "0.5"),
        ("1/0", "+Inf"),
        ("-1/0", "-Inf"),
        ("0/0", "NaN"),
        ("2^60", "1152921504606847000"),  # Go's 'f', shortest: 1.152921504606847e18
        ("1e-7", "0.0000001"),
        ("-2.25", "-2.25"),
    ],
)
async def test_scalar_values_are_strings_as_prometheus_writes_them(
    loaded: Api, query: str, want: str
) -> None:
    data = await ok(loaded, "/query", query=query, time=T)
    assert data == {"resultType": "scalar", "result": [T, want]}


@pytest.mark.parametrize(
    ("query", "want"),
    [
        ("histogram_quantile(2, sum(rate(api_latency[1m])))", "+Inf"),
        ("histogram_quantile(-1, sum(rate(api_latency[1m])))", "-Inf"),
        ("histogram_quantile(1, sum(rate(api_latency[1m])))", "120"),
        ("histogram_quantile(0, sum(rate(api_latency[1m])))", "10"),
        ("sum(temp) / 0", "+Inf"),
        ("vector(1e-7)", "0.0000001"),
    ],
)
async def test_vector_values_are_strings_as_prometheus_writes_them(
    loaded: Api, query: str, want: str
) -> None:
    data = await ok(loaded, "/query", query=query, time=T)
    assert data == {"resultType": "vector", "result": [{"metric": {}, "value": [T, want]}]}


@pytest.mark.parametrize(
    ("query", "want"),
    [
        ("1/0", "+Inf"),
        ("-1/0", "-Inf"),
        ("2^60", "1152921504606847000"),
        ("1e-7", "0.0000001"),
        ("-2.25", "-2.25"),
        ("3", "3"),
    ],
)
async def test_range_values_are_strings_as_prometheus_writes_them(
    loaded: Api, query: str, want: str
) -> None:
    data = await ok(loaded, "/query_range", query=query, start=T - 10.5, end=T, step=10)
    assert data == {
        "resultType": "matrix",
        "result": [{"metric": {}, "values": [[T - 10.5, want], [T - 0.5, want]]}],
    }


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), max_size=50))
def test_a_row_of_values_is_written_as_each_value_alone(values: list[float]) -> None:
    """A range query writes a row's values at once (format_values); each as an instant
    query's would be (format_value)."""
    assert format_values(np.array(values, dtype=np.float64)) == [format_value(v) for v in values]
    assert format_values(values) == [format_value(v) for v in values]


@pytest.mark.parametrize(
    ("time", "stamp"),
    [
        ("1764172800", T),
        ("1764172800.5", T0 + 0.5),
        ("2025-11-26T16:00:00Z", T),
        ("2025-11-26T16:00:00.250Z", T0 + 0.25),
        ("2025-11-26T17:00:00+01:00", T),
        ("2025-11-26T15:30:00-00:30", T),
    ],
)
async def test_time_is_unix_seconds_or_rfc3339(loaded: Api, time: str, stamp: float) -> None:
    data = await ok(loaded, "/query", query="time()", time=time)
    assert data["result"][0] == stamp, data
    assert float(data["result"][1]) == stamp


async def test_time_defaults_to_now(loaded: Api) -> None:
    data = await ok(loaded, "/query", query="temp{host='a'}")
    assert data["result"] == [{"metric": {"__name__": "temp", "host": "a"}, "value": [NOW, "5"]}]


@pytest.mark.parametrize("time", ["2025-11-26T16:00:00", "2025-11-26"])
async def test_a_time_without_an_offset_is_bad_data(loaded: Api, time: str) -> None:
    status, body = await get(loaded, "/query", query="time()", time=time)
    assert_error(status, body, 400, "bad_data", '"time"')


async def test_timeout_limit_and_stats_are_accepted(loaded: Api) -> None:
    data = await ok(loaded, "/query", query="1", time=T, timeout="5s", limit="3", stats="all")
    assert data == {"resultType": "scalar", "result": [T, "1"]}


# -- /api/v1/query_range --------------------------------------------------------------------------


async def test_range_matrix_shape(loaded: Api) -> None:
    data = await ok(
        loaded, "/query_range", query="increase(api_hits[30s])", start=T - 60, end=T, step=30
    )
    assert data == {
        "resultType": "matrix",
        "result": [
            {
                "metric": {"host": "a", "http_method": "GET"},
                "values": [[T - 30, "6"], [T, "15"]],  # nothing ends in (T-90, T-60]
            },
            {"metric": {"host": "b", "http_method": "POST"}, "values": [[T - 30, "6"], [T, "6"]]},
        ],
    }


async def test_range_of_a_scalar_is_one_series_without_labels(loaded: Api) -> None:
    data = await ok(loaded, "/query_range", query="1+1", start=T - 20, end=T, step=10)
    assert data == {
        "resultType": "matrix",
        "result": [{"metric": {}, "values": [[T - 20, "2"], [T - 10, "2"], [T, "2"]]}],
    }


@pytest.mark.parametrize("step", ["30s", "30", "30.0", "3e1", "30000ms"])
async def test_step_is_seconds_or_a_duration(loaded: Api, step: str) -> None:
    data = await ok(loaded, "/query_range", query="time()", start=T - 60, end=T, step=step)
    assert data["result"] == [
        {"metric": {}, "values": [[T - 60, str(T - 60)], [T - 30, str(T - 30)], [T, str(T)]]}
    ]


async def test_range_times_as_rfc3339_and_buckets_count_at_their_end(loaded: Api) -> None:
    data = await ok(
        loaded,
        "/query_range",
        query="temp{host='b'}",
        start="2025-11-26T15:59:47.5Z",  # T0 - 12.5
        end="2025-11-26T16:00:00Z",
        step="10s",
    )
    # b was 100 - i in the bucket [T0 - 60 + 10 i, …): at T0 - 12.5 the latest bucket ended
    # at T0 - 20 (97), at T0 - 2.5 at T0 - 10 (96).
    assert data["result"] == [
        {
            "metric": {"__name__": "temp", "host": "b"},
            "values": [[T0 - 12.5, "97"], [T0 - 2.5, "96"]],
        }
    ]
    # A step of 1 m reads 1 m cells: the one [T0 - 60, T0) counts at T0 only.
    data = await ok(
        loaded, "/query_range", query="temp{host='b'}", start=T0 - 62.5, end=T0, step="1m"
    )
    assert data["result"] == []
    data = await ok(loaded, "/query_range", query="temp{host='b'}", start=T - 60, end=T, step="1m")
    assert data["result"] == [{"metric": {"__name__": "temp", "host": "b"}, "values": [[T, "95"]]}]


async def test_range_leaves_out_the_steps_without_a_value(loaded: Api) -> None:
    data = await ok(loaded, "/query_range", query="temp", start=T - 600, end=T, step=300)
    assert by_metric(data["result"]) == [
        {"metric": {"__name__": "temp", "host": "a"}, "values": [[T, "5"]]},
        {"metric": {"__name__": "temp", "host": "b"}, "values": [[T, "95"]]},
    ]


async def test_the_step_count_is_bounded_by_query_max_points(loaded: Api) -> None:
    data = await ok(loaded, "/query_range", query="1", start=T - 9999, end=T, step=1)
    assert len(data["result"][0]["values"]) == 10_000
    status, body = await get(loaded, "/query_range", query="1", start=T - 10_000, end=T, step=1)
    assert_error(
        status, body, 400, "bad_data", "exceeded maximum resolution of 10000 points per timeseries"
    )


# -- parameters and their errors -------------------------------------------------------------------


BAD_PARAMETERS: list[tuple[str, dict[str, Any], str]] = [
    ("/query", {}, '"query"'),
    ("/query", {"query": ""}, '"query"'),
    ("/query", {"query": "temp", "time": "yesterday"}, '"time"'),
    ("/query", {"query": "temp", "time": "nan"}, '"time"'),
    ("/query", {"query": "temp", "bogus": "1"}, "'bogus'"),
    ("/query", {"query": "sum(temp"}, "parse error"),
    ("/query", {"query": "temp{"}, "parse error"),
    ("/query", {"query": "1 > 2"}, "parse error"),  # scalar comparison without bool
    ("/query_range", {"start": T - 60, "end": T, "step": 10}, '"query"'),
    ("/query_range", {"query": "temp", "end": T, "step": 10}, '"start"'),
    ("/query_range", {"query": "temp", "start": T - 60, "step": 10}, '"end"'),
    ("/query_range", {"query": "temp", "start": T - 60, "end": T}, '"step"'),
    ("/query_range", {"query": "temp", "start": T, "end": T - 60, "step": 10}, '"end"'),
    ("/query_range", {"query": "temp", "start": T - 60, "end": T, "step": 0}, "zero or negative"),
    ("/query_range", {"query": "temp", "start": T - 60, "end": T, "step": -5}, "zero or negative"),
    ("/query_range", {"query": "temp", "start": T - 60, "end": T, "step": "fast"}, '"step"'),
    ("/query_range", {"query": "temp", "start": T - 60, "end": T, "step": "0.5m"}, '"step"'),
    ("/query_range", {"query": "temp", "start": "x", "end": T, "step": 10}, '"start"'),
    ("/query_range", {"query": "temp", "start": T - 60, "end": T, "step": 10, "time": T}, "'time'"),
    ("/labels", {"start": "soon"}, '"start"'),
    ("/labels", {"match[]": "sum(temp)"}, "match[]"),
    ("/labels", {"query": "temp"}, "'query'"),
    ("/series", {}, "match[]"),
    ("/series", {"match[]": "temp{"}, "parse error"),
    ("/series", {"match[]": "rate(temp[1m])"}, "match[]"),
    ("/label/host/values", {"end": "later"}, '"end"'),
    ("/metadata", {"limit": "many"}, '"limit"'),
]


async def test_bad_parameters_are_bad_data_naming_them(api: Api) -> None:
    """One gateway for the whole table (none needs data): every row is checked, and every
    wrong one reported."""
    wrong = []
    for path, params, named in BAD_PARAMETERS:
        status, body = await get(api, path, **params)
        try:
            assert_error(status, body, 400, "bad_data", named)
        except AssertionError:
            wrong.append((path, params, status, body))
    assert not wrong, wrong


async def test_a_form_post_answers_as_get(loaded: Api) -> None:
    cases: list[tuple[str, dict[str, Any]]] = [
        ("/query", {"query": "sum(rate(api_hits[1m]))", "time": T}),
        ("/query_range", {"query": "temp", "start": T - 60, "end": T, "step": "30s"}),
        ("/labels", {}),
        ("/series", {"match[]": "temp"}),
    ]
    for path, params in cases:
        status, by_get = await get(loaded, path, **params)
        assert status == 200, by_get
        status, by_post = await loaded.request("POST", "/api/v1" + path, data=params)
        assert status == 200 and by_post == by_get, (path, by_post, by_get)
    # Parameters may be split between the query string and the body, and repeated.
    status, body = await loaded.request(
        "POST", "/api/v1/series", params={"match[]": "temp"}, data=[("match[]", "api_hits")]
    )
    assert status == 200
    assert {s["__name__"] for s in body["data"]} == {"temp", "api_hits"}


async def test_a_post_body_that_is_not_a_form_is_bad_data(loaded: Api) -> None:
    status, body = await loaded.request("POST", "/api/v1/query", json={"query": "1"})
    assert_error(status, body, 400, "bad_data", "form")
    status, body = await loaded.request("POST", "/api/v1/query", data={"query": "1", "x": "2"})
    assert_error(status, body, 400, "bad_data", "'x'")


async def test_grafana_save_and_test(loaded: Api) -> None:
    """What Grafana's Prometheus data source does on "Save & test": a form POST of 1+1 to
    /api/v1/query, then the build info (whose version picks the features it uses)."""
    status, body = await loaded.request(
        "POST",
        "/api/v1/query",
        data="query=1%2B1&time=1764172805",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 200, body
    assert body == {"status": "success", "data": {"resultType": "scalar", "result": [NOW, "2"]}}
    status, body = await loaded.request("GET", "/api/v1/status/buildinfo")
    assert status == 200 and body["status"] == "success", body
    assert body["data"]["version"] == "2.45.0"
    assert "statsd-gateway" in body["data"]["application"]


# -- the series index -----------------------------------------------------------------------------


async def test_labels(loaded: Api) -> None:
    assert await ok(loaded, "/labels") == ["__name__", "host", "http_method"]
    assert await ok(loaded, "/labels", **{"match[]": "temp"}) == ["__name__", "host"]
    assert await ok(loaded, "/labels", limit="2") == ["__name__", "host"]
    assert await ok(loaded, "/labels", start=T - 3600, end=T) == ["__name__", "host", "http_method"]


async def test_label_values(loaded: Api) -> None:
    assert await ok(loaded, "/label/__name__/values") == [
        "_5xx_count", "a_b", "api_hits", "api_latency", "api_latency_bucket",
        "api_latency_count", "api_latency_sum", "temp", "users",
    ]  # fmt: skip
    assert await ok(loaded, "/label/host/values") == ["a", "b"]
    assert await ok(loaded, "/label/http_method/values") == ["GET", "POST"]
    assert await ok(loaded, "/label/http.method/values") == []  # label names are escaped
    assert await ok(loaded, "/label/nope/values") == []
    assert await ok(loaded, "/label/http_method/values", **{"match[]": "temp"}) == []
    got = await ok(loaded, "/label/__name__/values", **{"match[]": "api_latency"})
    assert got == ["api_latency", "api_latency_bucket", "api_latency_count", "api_latency_sum"]


async def test_series(loaded: Api) -> None:
    assert await ok(loaded, "/series", **{"match[]": "temp"}) == [
        {"__name__": "temp", "host": "a"},
        {"__name__": "temp", "host": "b"},
    ]
    got = await ok(loaded, "/series", **{"match[]": 'api_hits{http_method="POST"}'})
    assert got == [{"__name__": "api_hits", "host": "b", "http_method": "POST"}]
    got = await ok(loaded, "/series", **{"match[]": "api_latency_count"})
    assert got == [
        {"__name__": "api_latency_count", "host": "a"},
        {"__name__": "api_latency_count", "host": "b"},
    ]
    got = await ok(loaded, "/series", **{"match[]": '{__name__=~"api_.*", host="a"}'})
    assert sorted(s["__name__"] for s in got) == ["api_hits", "api_latency"]


async def test_a_selector_of_labels_alone_selects_every_metric(loaded: Api) -> None:
    got = await ok(loaded, "/series", **{"match[]": '{host="a"}'})
    assert sorted(s["__name__"] for s in got) == ["api_hits", "api_latency", "temp"]
    got = await ok(loaded, "/label/__name__/values", **{"match[]": '{host="a"}'})
    assert "temp" in got and "api_hits" in got


async def test_metadata(loaded: Api) -> None:
    data = await ok(loaded, "/metadata")
    types = {name: [m["type"] for m in entries] for name, entries in data.items()}
    assert types == {
        "_5xx_count": ["counter"],
        "a_b": ["counter", "counter"],  # a.b and a_b
        "api_hits": ["counter"],
        "api_latency": ["histogram"],
        "temp": ["gauge"],
        "users": ["gauge"],  # a set
    }
    for entries in data.values():
        for m in entries:
            assert set(m) == {"type", "help", "unit"}, m
    assert list(await ok(loaded, "/metadata", metric="api_latency")) == ["api_latency"]
    assert await ok(loaded, "/metadata", metric="nothing") == {}
    assert len(await ok(loaded, "/metadata", limit="2")) == 2


async def test_metadata_types_of_every_statsd_type(api: Api) -> None:
    kinds = ["counter", "gauge", "timing", "histogram", "distribution", "set"]
    status, _ = await api.batch(
        [{"name": f"m.{k}", "type": k, "value": 1 if k != "set" else "x"} for k in kinds]
    )
    assert status == 200
    data = await ok(api, "/metadata")
    assert {name: entries[0]["type"] for name, entries in data.items()} == {
        "m_counter": "counter",
        "m_gauge": "gauge",
        "m_timing": "histogram",
        "m_histogram": "histogram",
        "m_distribution": "histogram",
        "m_set": "gauge",
    }


async def test_buildinfo(api: Api) -> None:
    data = await ok(api, "/status/buildinfo")
    assert data["version"] == "2.45.0"
    assert all(isinstance(v, str) for v in data.values()), data


async def test_unknown_endpoint_and_method_have_the_error_shape(api: Api) -> None:
    status, body = await get(api, "/nothing")
    assert_error(status, body, 404, "not_found", "/api/v1/nothing")
    status, body = await api.request("DELETE", "/api/v1/query")
    assert_error(status, body, 405, "bad_data", "DELETE")


# -- auth and tenants ---------------------------------------------------------------------------


ENDPOINTS: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/api/v1/query", {"params": {"query": "1"}}),
    ("POST", "/api/v1/query", {"data": {"query": "1"}}),
    ("GET", "/api/v1/query_range", {"params": {"query": "1", "start": T, "end": T, "step": 1}}),
    ("POST", "/api/v1/query_range", {"data": {"query": "1", "start": T, "end": T, "step": 1}}),
    ("GET", "/api/v1/labels", {}),
    ("POST", "/api/v1/labels", {"data": {}}),
    ("GET", "/api/v1/label/__name__/values", {}),
    ("GET", "/api/v1/series", {"params": {"match[]": "temp"}}),
    ("POST", "/api/v1/series", {"data": {"match[]": "temp"}}),
    ("GET", "/api/v1/metadata", {}),
    ("GET", "/api/v1/status/buildinfo", {}),
]


@pytest.mark.parametrize(("method", "path", "kw"), ENDPOINTS)
async def test_every_endpoint_wants_a_valid_key(
    gateway: Gateway, method: str, path: str, kw: dict[str, Any]
) -> None:
    assert gateway.http_address is not None
    base = "http://{}:{}".format(*gateway.http_address)
    async with ClientSession() as session:
        for headers in ({}, {"Authorization": "Bearer not-a-key"}, {"Authorization": "Basic x"}):
            async with session.request(method, base + path, headers=headers, **kw) as r:
                body = await r.json()
                assert_error(r.status, body, 401, "unauthorized")
                assert r.headers["WWW-Authenticate"].startswith("Bearer"), r.headers
        for key in (KEY, READ_ONLY_KEY, ADMIN_KEY):
            headers = {"Authorization": f"Bearer {key}"}
            async with session.request(method, base + path, headers=headers, **kw) as r:
                assert r.status == 200, (key, await r.text())


async def test_the_key_may_be_basic_auths_password(loaded: Api) -> None:
    """promtool sends no header of its own: http://user:key@host/ works."""
    headers = {"Authorization": encode_basic_auth("promtool", KEY)}
    status, body = await loaded.request(
        "GET", "/api/v1/query", params={"query": "1+1", "time": T}, key=None, headers=headers
    )
    assert status == 200 and body["data"]["result"] == [T, "2"], body


async def test_a_key_without_the_read_scope_is_forbidden(tmp_path: Path) -> None:
    """conftest has no such key (every one reads): a write-only key of this test's own."""
    cfg = make_config(tmp_path)
    writer = ApiKey(name="writer", sha256=hash_key(WRITE_ONLY_KEY), scopes=("write",))
    cfg = replace(cfg, auth=replace(cfg.auth, keys=(*cfg.auth.keys, writer)))
    async with running(cfg, ManualClock()) as (_, api):
        for method, path, kw in ENDPOINTS:
            status, body = await api.request(method, path, key=WRITE_ONLY_KEY, **kw)
            assert_error(status, body, 403, "forbidden", "read")


async def test_another_tenant_sees_none_of_the_metrics(loaded: Api) -> None:
    async def other(path: str, **params: Any) -> Any:
        status, body = await get(loaded, path, key=OTHER_KEY, **params)
        assert status == 200, body
        return body["data"]

    for query in ("temp", "sum(rate(api_hits[1m]))", "histogram_count(rate(api_latency[1m]))"):
        assert (await other("/query", query=query, time=T))["result"] == [], query
    assert (await other("/query_range", query="temp", start=T - 60, end=T, step=10))["result"] == []
    assert set(await other("/labels")) <= {"__name__"}
    assert await other("/label/__name__/values") == []
    assert await other("/label/host/values") == []
    assert await other("/series", **{"match[]": "temp"}) == []
    assert await other("/series", **{"match[]": '{__name__=~".+"}'}) == []
    assert await other("/metadata") == {}
    # The clash of a.b and a_b is the default tenant's alone.
    assert (await other("/query", query="a_b", time=T))["result"] == []


# -- what is not evaluated: 422 naming it ---------------------------------------------------------


UNSUPPORTED = [
    ("topk(1, temp)", ["topk"]),
    ("bottomk(1, temp)", ["bottomk"]),
    ("quantile(0.5, temp)", ["quantile"]),
    ("stddev(temp)", ["stddev"]),
    ('count_values("v", temp)', ["count_values"]),
    ("max_over_time(temp[5m:1m])", ["subquer"]),
    ("rate(api_hits[5m:])", ["subquer"]),
    ("temp / on(host) group_left temp", ["group_left"]),
    ("temp * on(host) group_right temp", ["group_right"]),
    ("temp and temp", ["and"]),
    ("temp or temp", ["or"]),
    ("temp unless temp", ["unless"]),
    ("absent(temp)", ["absent"]),
    ('label_replace(temp, "x", "$1", "host", "(.*)")', ["label_replace"]),
    ("api_hits", ["api_hits", "rate(api_hits[5m])", "increase(api_hits[5m])"]),
    ("api_latency_count", ["rate(api_latency_count[5m])"]),
    ("api_latency", ["api_latency", "histogram_quantile"]),
    ("rate(api_latency[5m])", ["histogram"]),
    ("sum by (host) (rate(api_latency[5m]))", ["histogram"]),
    ("sum by (host) (rate(api_latency_bucket[5m]))", ["le"]),
    ("histogram_quantile(0.9, sum by (host) (rate(api_latency_bucket[5m])))", ["le"]),
    ("histogram_quantile(0.9, sum(rate(api_latency_bucket[5m])))", ["le"]),
    ("max by (host) (rate(api_latency[5m]))", ["max"]),
    ("irate(api_latency[5m])", ["irate"]),
    ("users", ["users", "set"]),
    ("temp[5m]", ["range vector"]),
    ("rate(temp[5m])", ["temp", "gauge"]),
    ("max_over_time(api_hits[5m])", ["api_hits", "counter"]),
    ('rate({__name__=~"api_.*"}[5m])', ["histograms and counters"]),
    ("temp - ignoring(host) temp", ["many-to-many"]),
]


async def test_what_is_not_evaluated_is_a_422_naming_it(loaded: Api) -> None:
    wrong = []
    for query, named in UNSUPPORTED:
        ways: list[tuple[str, dict[str, Any]]] = [
            ("/query", {"time": T}),
            ("/query_range", {"start": T - 60, "end": T, "step": 30}),
        ]
        for path, params in ways:
            status, body = await get(loaded, path, query=query, **params)
            try:
                assert_error(status, body, 422, "execution", *named)
            except AssertionError:
                wrong.append((path, query, status, body))
    assert not wrong, wrong


async def test_a_string_is_no_range_result(loaded: Api) -> None:
    status, body = await get(loaded, "/query_range", query='"x"', start=T - 60, end=T, step=30)
    assert_error(status, body, 422, "execution", "string")


async def test_a_query_past_the_timeout_is_a_503_timeout(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, query={"timeout": "1ms"})
    async with running(cfg, ManualClock()) as (_, api):
        lat = [
            {"name": "lat", "type": "timing", "value": i % 997 + 1, "timestamp": T0 - 3600 + i}
            for i in range(3600)
        ]
        assert (await api.batch(lat))[0] == 200
        params = {
            "query": "histogram_quantile(0.5, sum(rate(lat[5m])))",
            "start": T - 3000,
            "end": T,
            "step": 1,
        }
        status, body = await api.request("GET", "/api/v1/query_range", params=params)
        assert_error(status, body, 503, "timeout", "query.timeout")
        # In this API's words: start and end, not /v1's since and until.
        assert "since" not in body["error"] and "until" not in body["error"], body


# -- names ----------------------------------------------------------------------------------------


async def test_two_names_escaping_alike_are_a_422_naming_both(loaded: Api) -> None:
    for query in ("a_b", "increase(a_b[1m])", "sum(increase(a_b[1m]))"):
        status, body = await get(loaded, "/query", query=query, time=T)
        assert_error(status, body, 422, "execution", "a.b", "a_b", '{__name__="a.b"}')
    data = await ok(loaded, "/query", query='increase({__name__="a.b"}[1m])', time=T)
    assert data["result"] == [{"metric": {}, "value": [T, "1"]}]


async def test_the_name_as_sent_selects_the_metric_that_has_it(loaded: Api) -> None:
    data = await ok(loaded, "/query", query='increase({__name__="a_b"}[1m])', time=T)
    assert data["result"] == [{"metric": {}, "value": [T, "2"]}]


async def test_a_clash_fails_only_the_selectors_that_select_it(loaded: Api) -> None:
    selector = '{__name__!="temp", __name__=~"api_h.*"}'
    data = await ok(loaded, "/query", query=f"sum(increase({selector}[1m]))", time=T)
    assert data["result"] == [{"metric": {}, "value": [T, "33"]}]  # 21 + 12
    got = await ok(loaded, "/series", **{"match[]": selector})
    assert {s["__name__"] for s in got} == {"api_hits"}


async def test_tag_keys_are_escaped_into_label_names(loaded: Api) -> None:
    data = await ok(loaded, "/query", query='increase(api_hits{http_method="GET"}[1m])', time=T)
    assert data["result"] == [{"metric": {"host": "a", "http_method": "GET"}, "value": [T, "21"]}]
    data = await ok(loaded, "/query", query="sum by (http_method) (increase(api_hits[1m]))", time=T)
    assert by_metric(data["result"]) == [
        {"metric": {"http_method": "GET"}, "value": [T, "21"]},
        {"metric": {"http_method": "POST"}, "value": [T, "12"]},
    ]


async def test_names_are_escaped_and_raw_names_select_too(loaded: Api) -> None:
    for query in ("increase(_5xx_count[1m])", 'increase({__name__="5xx.count"}[1m])'):
        data = await ok(loaded, "/query", query=query, time=T)
        assert data["result"] == [{"metric": {}, "value": [T, "3"]}], query
    data = await ok(loaded, "/query", query='{__name__="temp", host="a"}', time=T)
    assert data["result"] == [{"metric": {"__name__": "temp", "host": "a"}, "value": [T, "5"]}]
    data = await ok(loaded, "/query", query='sum(increase({__name__="api.hits"}[1m]))', time=T)
    assert data["result"] == [{"metric": {}, "value": [T, "33"]}]


async def test_tags_escaping_alike_or_named_le_are_a_422(api: Api) -> None:
    status, _ = await api.batch([
        {"name": "dup", "type": "gauge", "value": 1, "timestamp": T0 - 15,
         "tags": {"http.method": "a"}},
        {"name": "dup", "type": "gauge", "value": 2, "timestamp": T0 - 15,
         "tags": {"http_method": "b"}},
        {"name": "lec", "type": "counter", "value": 3, "timestamp": T0 - 15, "tags": {"le": "x"}},
        {"name": "bare", "type": "gauge", "value": 4, "timestamp": T0 - 15,
         "tags": {"canary": ""}},
    ])  # fmt: skip
    assert status == 200
    status, body = await get(api, "/query", query="dup", time=T)
    assert_error(status, body, 422, "execution", "http.method", "http_method")
    status, body = await get(api, "/query", query="increase(lec[1m])", time=T)
    assert_error(status, body, 422, "execution", "le")
    # A bare tag has no label (Prometheus has no empty label values).
    data = await ok(api, "/query", query="bare", time=T)
    assert data["result"] == [{"metric": {"__name__": "bare"}, "value": [T, "4"]}]


async def test_histogram_views_answer_as_a_classic_histogram(loaded: Api) -> None:
    # a: 10…60 (sum 210), b: 20…120 (sum 420) over the last minute.
    async def one(query: str) -> list[dict[str, Any]]:
        return by_metric((await ok(loaded, "/query", query=query, time=T))["result"])

    assert await one("increase(api_latency_count[1m])") == [
        {"metric": {"host": "a"}, "value": [T, "6"]},
        {"metric": {"host": "b"}, "value": [T, "6"]},
    ]
    assert await one("sum(increase(api_latency_sum[1m]))") == [{"metric": {}, "value": [T, "630"]}]
    assert await one("histogram_avg(sum(rate(api_latency[1m])))") == [
        {"metric": {}, "value": [T, "52.5"]}
    ]
    native = await one("histogram_quantile(0.5, sum by (host) (rate(api_latency[1m])))")
    classic = await one("histogram_quantile(0.5, sum by (le, host) (rate(api_latency_bucket[1m])))")
    assert native == classic
    # rank 0.5 · 5 = 2.5: the third value, 30 and 60, within 1 %
    for series, want in zip(native, (30.0, 60.0), strict=True):
        assert abs(float(series["value"][1]) - want) <= 0.01 * want, series
