"""What a hostile or careless PromQL client cannot do to the gateway: crash it (a query nested
past the parser's stack), stall it (a regex with exponential backtracking), get a 500 (times
outside any calendar, patterns RE2 refuses), or make one query take the host's memory."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from statsd_gateway.errors import InvalidArgument
from statsd_gateway.gateway import Gateway
from statsd_gateway.promql.selection import matcher
from statsd_gateway.promql.syntax import LabelMatch
from tests.conftest import T0, Api

pytestmark = pytest.mark.asyncio
HOST_A = {"host": "a"}


async def query(api: Api, text: str, **params: Any) -> tuple[int, Any]:
    return await api.request("POST", "/api/v1/query", data={"query": text, **params})


async def seed(api: Api, gateway: Gateway) -> None:
    points = [
        {"name": "temp", "type": "gauge", "value": 20, "timestamp": T0 - 30, "tags": HOST_A},
        {"name": "hits", "type": "counter", "value": 2, "timestamp": T0 - 30},
        {"name": "api_latency_seconds_tot", "type": "gauge", "value": 1, "timestamp": T0 - 30},
    ]
    status, body = await api.batch(points)
    assert status == 200 and body["rejected"] == 0, body
    await gateway.flusher.flush()


@pytest.mark.parametrize(
    "text",
    ["(" * 10000 + "temp" + ")" * 10000, "-" * 20000 + "temp", "temp" + "+temp" * 20000],
    ids=["nested", "negated", "chained"],
)
async def test_a_query_past_the_parsers_depth_is_bad_data_not_a_crash(
    api: Api, gateway: Gateway, text: str
) -> None:
    await seed(api, gateway)
    status, body = await query(api, text)
    assert status == 400 and body["errorType"] == "bad_data", body
    assert (await query(api, "temp", time=T0))[0] == 200  # still serving


async def test_a_long_regex_of_alternatives_is_fine(api: Api, gateway: Gateway) -> None:
    await seed(api, gateway)
    hosts = "|".join(f"h{i}" for i in range(3000)) + "|a"
    status, body = await query(api, f'temp{{host=~"{hosts}"}}', time=T0)
    assert status == 200 and len(body["data"]["result"]) == 1, body


async def test_a_backtracking_regex_takes_linear_time(api: Api, gateway: Gateway) -> None:
    await seed(api, gateway)
    began = time.perf_counter()
    status, body = await api.request(
        "GET", "/api/v1/series", params={"match[]": '{__name__=~"(.*)*(.*)*(.*)*y"}'}
    )
    assert status == 200 and body["data"] == [], body
    assert time.perf_counter() - began < 1.0  # Python's re: minutes on a 23-letter name


@pytest.mark.parametrize(
    "text",
    ['temp{host=~"(?<=a)b"}', 'temp{host=~"(a)\\\\1"}', 'temp{host=~"["}'],
    ids=["lookbehind", "backreference", "unclosed"],
)
async def test_what_re2_refuses_is_bad_data(api: Api, gateway: Gateway, text: str) -> None:
    await seed(api, gateway)
    status, body = await query(api, text, time=T0)
    assert status == 400 and body["errorType"] == "bad_data", body


async def test_re2_classes_work(api: Api, gateway: Gateway) -> None:
    await seed(api, gateway)
    for pattern in ("\\\\p{L}", "[[:alpha:]]"):
        status, body = await query(api, f'temp{{host=~"{pattern}"}}', time=T0)
        assert status == 200 and len(body["data"]["result"]) == 1, (pattern, body)


@pytest.mark.parametrize(
    "params",
    [
        {"query": "temp @ 253402300800"},
        {"query": "temp @ -1"},
        {"query": "temp", "time": "1e300"},
        {"query": "temp", "time": "-1e300"},
    ],
    ids=["at-year-10000", "at-before-1970", "time-huge", "time-negative"],
)
async def test_times_outside_the_calendar_are_bad_data(
    api: Api, gateway: Gateway, params: dict[str, str]
) -> None:
    await seed(api, gateway)
    status, body = await api.request("POST", "/api/v1/query", data=params)
    assert status == 400 and body["errorType"] == "bad_data", body


async def test_a_range_too_wide_for_memory_is_refused(api: Api, gateway: Gateway) -> None:
    await seed(api, gateway)
    status, body = await query(api, "rate(hits[1000y])", time=T0)
    assert status == 422 and "too many samples" in body["error"], body
    wide = {"query": "sum(rate(hits[3650d]))", "start": T0 - 86400 * 400, "end": T0, "step": 3600}
    status, body = await api.request("GET", "/api/v1/query_range", params=wide)
    assert status == 200, body  # long windows: sums by running totals, not a gather


async def test_series_differing_only_by_a_bare_tag_are_refused_not_merged(
    api: Api, gateway: Gateway
) -> None:
    point = {"name": "temp", "type": "gauge", "timestamp": T0 - 30}
    status, body = await api.batch([
        {**point, "value": 10, "tags": {**HOST_A, "canary": ""}},
        {**point, "value": 20, "tags": HOST_A},
    ])  # fmt: skip
    assert status == 200 and body["rejected"] == 0, body
    await gateway.flusher.flush()
    status, body = await query(api, "avg_over_time(temp[1m])", time=T0)
    assert status == 422 and "bare tags" in body["error"], body


async def test_the_loop_answers_while_a_query_runs(api: Api, gateway: Gateway) -> None:
    await seed(api, gateway)
    slow = asyncio.create_task(query(api, "sum(rate(hits[30d]))", time=T0))
    status, _ = await api.request("GET", "/healthz", key=None)
    assert status == 200
    assert (await slow)[0] == 200


async def test_a_regex_re2_refuses_is_bad_data_even_where_the_parser_took_it() -> None:
    # promql-parser checks regexes with its own engine; whatever it lets through that RE2
    # refuses must still be a 400, not a 500.
    with pytest.raises(InvalidArgument, match="invalid regular expression"):
        matcher("host", LabelMatch("host", "=~", "(?<=a)b"))
