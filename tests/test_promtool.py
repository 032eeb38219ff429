"""Prometheus' own client against our /api/v1: `promtool query instant|range|labels|series`
(Debian's `prometheus` package) on the running gateway, its answers compared with exact values
computed from the points the test sent. promtool sends the key as basic auth (the key as the
password), the one way its `query` commands can carry one."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
from typing import Any

import pytest

from statsd_gateway.gateway import Gateway
from tests.conftest import KEY, T0, Api, missing_prerequisite

pytestmark = pytest.mark.asyncio
HOSTS = ("a", "b", "c")
BUCKETS = 90  # 15 minutes of 10 s buckets, ending at T0


@pytest.fixture(autouse=True)
def _promtool() -> None:
    if shutil.which("promtool") is None:
        missing_prerequisite("promtool is not installed (apt-get install prometheus)")


def hits(host: int, i: int) -> int:
    return (host + 1) * 3 + i % 7


def latency(host: int, i: int, j: int) -> int:
    return 1 + (i * 37 + j * 11 + host * 101) % 500


def point(name: str, kind: str, value: int, t: float, tags: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "type": kind, "value": value, "timestamp": t, "tags": tags}


async def load(api: Api, gateway: Gateway) -> None:
    points: list[dict[str, Any]] = []
    for i in range(BUCKETS):
        t = T0 - BUCKETS * 10 + i * 10
        for h, host in enumerate(HOSTS):
            tags = {"host": host}
            points.append(point("api.hits", "counter", hits(h, i), t, tags))
            for j in range(3):
                points.append(point("api.latency", "timing", latency(h, i, j), t + j, tags))
    for first in range(0, len(points), 5000):
        status, body = await api.batch(points[first : first + 5000])
        assert status == 200 and body["rejected"] == 0, body
    await gateway.flusher.flush()


async def promtool(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        "promtool", "query", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def server(gateway: Gateway, key: str = KEY) -> str:
    assert gateway.http_address is not None
    host, port = gateway.http_address
    return f"http://promtool:{key}@{host}:{port}"


def exact_quantile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return float(ordered[round(q * (len(ordered) - 1))])


async def test_instant_queries_give_the_exact_increase_and_the_sketch_quantile(
    api: Api, gateway: Gateway
) -> None:
    await load(api, gateway)
    code, out, err = await promtool(
        "instant", "-o", "json", "--time", str(T0), server(gateway),
        "sum by (host) (increase(api_hits[5m]))",
    )  # fmt: skip
    assert code == 0, err
    got = {s["metric"]["host"]: s["value"] for s in json.loads(out)}
    # The 30 buckets ending in (T0 - 300, T0]: i = 60..89.
    want = {host: str(sum(hits(h, i) for i in range(60, 90))) for h, host in enumerate(HOSTS)}
    assert {h: v[1] for h, v in got.items()} == want
    assert all(v[0] == T0 for v in got.values())

    code, out, err = await promtool(
        "instant", "-o", "json", "--time", str(T0), server(gateway),
        "histogram_quantile(0.99, sum(rate(api_latency[5m])))",
    )  # fmt: skip
    assert code == 0, err
    [answer] = json.loads(out)
    values = [latency(h, i, j) for h in range(3) for i in range(60, 90) for j in range(3)]
    want_p99 = exact_quantile(values, 0.99)
    assert answer["metric"] == {}
    assert math.isclose(float(answer["value"][1]), want_p99, rel_tol=0.0101)


async def test_a_range_query_answers_every_step(api: Api, gateway: Gateway) -> None:
    await load(api, gateway)
    start, end = T0 - 600, T0
    code, out, err = await promtool(
        "range", "-o", "json", "--start", str(start), "--end", str(end), "--step", "1m",
        server(gateway), "sum(rate(api_hits[1m])) * 60",
    )  # fmt: skip
    assert code == 0, err
    [series] = json.loads(out)
    assert series["metric"] == {}
    got = {t: float(v) for t, v in series["values"]}
    want = {}
    for k in range(11):
        t = start + 60 * k
        last = (t - (T0 - BUCKETS * 10)) // 10  # buckets ending in (t - 60, t]: i in [last-6, last)
        want[t] = float(sum(hits(h, i) for h in range(3) for i in range(int(last) - 6, int(last))))
    assert got == pytest.approx(want, rel=1e-12)


async def test_labels_and_series(api: Api, gateway: Gateway) -> None:
    await load(api, gateway)
    code, out, err = await promtool("labels", server(gateway), "host")
    assert code == 0, err
    assert out.split() == list(HOSTS)
    code, out, err = await promtool("labels", server(gateway), "__name__")
    assert code == 0, err
    assert "api_hits" in out.split() and "api_latency_bucket" in out.split()
    code, out, err = await promtool("series", "--match", 'api_hits{host!="b"}', server(gateway))
    assert code == 0, err
    assert out.split("\n")[:2] == [
        '{__name__="api_hits", host="a"}',
        '{__name__="api_hits", host="c"}',
    ]


async def test_what_we_do_not_evaluate_is_an_execution_error(api: Api, gateway: Gateway) -> None:
    await load(api, gateway)
    code, _, err = await promtool(
        "instant", server(gateway), "topk(2, sum by (host) (rate(api_hits[1m])))"
    )
    assert code != 0
    assert "execution" in err and "topk" in err, err


async def test_a_wrong_key_is_refused(api: Api, gateway: Gateway) -> None:
    code, _, err = await promtool("instant", server(gateway, "not-a-key"), "1+1")
    assert code != 0
    assert "401" in err or "unauthorized" in err.lower(), err
