"""The /ui page in a real browser (Debian's Chromium, over the DevTools protocol) against a
running gateway with known data: the key, the metric list, the chart's points against the query
API's answers, the controls, the URL fragment, errors, the keyboard, and no request to another
host. Screenshots (1280×800 and a 390-px phone) are saved under $TEST_ARTIFACTS (default
build/test-artifacts/ui)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import ClientSession

from statsd_gateway.api.page import load_assets
from statsd_gateway.config import Config
from tests.browser import Browser, Tab, chromium, chromium_path
from tests.conftest import KEY, T0, Api, ManualClock, running

ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", "build/test-artifacts")) / "ui"
HOSTS = ("a", "b")


def latency(i: int, host: str) -> float:
    return float((i * 7) % 50 + (100 if host == "b" else 1))


def history() -> list[dict[str, Any]]:
    """The hour before the clock: a timer on two hosts and a counter every 10 s, a gauge
    every minute, a set's members."""
    points: list[dict[str, Any]] = []
    for i in range(360):
        ts = T0 - 3600 + 10 * i
        for host in HOSTS:
            points.append(
                {
                    "name": "api.latency",
                    "type": "timing",
                    "value": latency(i, host),
                    "tags": {"host": host, "env": "prod"},
                    "timestamp": ts,
                }
            )
        points.append({"name": "jobs.done", "type": "counter", "value": i % 4, "timestamp": ts})
        if i % 6 == 0:
            points.append({"name": "queue.depth", "type": "gauge", "value": i, "timestamp": ts})
    points.append({"name": "users", "type": "set", "value": "ann", "timestamp": T0 - 60})
    return points


@pytest.fixture
async def served(config: Config, clock: ManualClock) -> AsyncIterator[tuple[str, Api]]:
    chromium_path()  # skipped (failed under CI) before anything starts, where it is missing
    async with running(config, clock) as (_, api):
        status, body = await api.batch(history())
        assert (status, body["accepted"]) == (200, len(history())), body
        yield api.base, api


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    async with chromium(tmp_path / "profile") as b:
        yield b


async def open_page(browser: Browser, base: str, fragment: str = "", **size: Any) -> Tab:
    tab = await browser.new_tab(size.pop("width", 1280), size.pop("height", 800), **size)
    await tab.goto(f"{base}/ui{fragment}")
    return tab


async def enter_key(tab: Tab, key: str = KEY) -> None:
    await tab.wait_for("!document.getElementById('key-form').hidden")
    await tab.evaluate("document.getElementById('api-key').focus()")
    await tab.type(key)
    await tab.press("Enter")


async def drawn_points(tab: Tab) -> dict[str, list[tuple[float, float]]]:
    """The circles the chart drew, per series label, with their times and values; checks that
    each is drawn where its time and value say (x grows with time, y falls as the value grows,
    both linearly)."""
    series = await tab.evaluate(
        """[...document.querySelectorAll('#chart g.series')].map(g => [g.dataset.label,
             [...g.querySelectorAll('circle')].map(c => [+c.dataset.t, +c.dataset.v,
                                                        +c.getAttribute('cx'), +c.getAttribute('cy')])])"""
    )
    circles = [c for _, cs in series for c in cs]
    first, last = min(circles), max(circles)  # by time
    low, high = min(circles, key=lambda c: c[1]), max(circles, key=lambda c: c[1])
    assert last[2] > first[2] and high[3] < low[3]
    for t, v, x, y in circles:
        at_x = first[2] + (t - first[0]) / (last[0] - first[0]) * (last[2] - first[2])
        at_y = low[3] + (v - low[1]) / (high[1] - low[1]) * (high[3] - low[3])
        assert (x, y) == (pytest.approx(at_x, abs=0.01), pytest.approx(at_y, abs=0.01))
    return {label: [(t, v) for t, v, _, _ in cs] for label, cs in series}


def last_query(tab: Tab) -> dict[str, str]:
    urls = [u for u in tab.requests if urlsplit(u).path == "/v1/metrics/query"]
    assert urls, tab.requests
    return {k: v[0] for k, v in parse_qs(urlsplit(urls[-1]).query).items()}


async def api_points(api: Api, params: dict[str, str]) -> dict[str, list[tuple[float, float]]]:
    status, body = await api.query(**params)
    assert status == 200, body
    groups = body.get("series") or [{"tags": {}, "points": body.get("points", [])}]
    out = {}
    for g in groups:
        label = ", ".join(f"{k}={v}" for k, v in g["tags"].items()) or body["name"]
        out[label] = [(p["timestamp"], p["value"]) for p in g["points"] if p["value"] is not None]
    return out


def only_local(tab: Tab, base: str) -> None:
    elsewhere = [u for u in tab.requests if not (u.startswith(base + "/") or u.startswith("data:"))]
    assert not elsewhere, elsewhere


async def test_a_chart_of_the_selected_metric_shows_the_query_apis_points(
    served: tuple[str, Api], browser: Browser
) -> None:
    base, api = served
    tab = await open_page(browser, base)
    await enter_key(tab)
    await tab.wait_for("document.querySelectorAll('#metric-list button').length === 4")
    names = await tab.evaluate(
        "[...document.querySelectorAll('#metric-list button')].map(b => b.dataset.name)"
    )
    assert names == ["api.latency", "jobs.done", "queue.depth", "users"]

    # Search as you type, Enter picks the first match.
    await tab.evaluate("document.getElementById('metric-search').focus()")
    await tab.type("lat")
    await tab.wait_for("document.querySelectorAll('#metric-list button').length === 1")
    await tab.press("Enter")
    await tab.wait_for("document.querySelectorAll('#chart circle').length > 0")
    query = last_query(tab)
    assert query == {"name": "api.latency", "agg": "p99", "since": "-1h", "window": "30s"}
    drawn = await drawn_points(tab)
    assert drawn == await api_points(api, query)
    assert len(drawn["api.latency"]) == 120  # the hour at 30 s
    # The timer's aggregations, and no others.
    aggs = await tab.evaluate("[...document.getElementById('agg').options].map(o => o.value)")
    assert aggs == ["p50", "p90", "p99", "avg", "sum", "count", "rate", "min", "max"]
    assert await tab.evaluate("location.hash") == "#name=api.latency&agg=p99&since=-1h"
    await tab.screenshot(ARTIFACTS / "chart-1280x800.png")
    assert tab.console_errors == []
    only_local(tab, base)


async def test_assets_are_small_cached_and_local(served: tuple[str, Api]) -> None:
    base, _ = served
    assets = load_assets()
    assert sum(len(a.body) for a in assets.values()) < 300_000
    async with ClientSession() as http:
        async with http.get(base + "/ui") as r:
            assert r.status == 200 and r.content_type == "text/html"
            html = await r.text()
            assert r.headers["Cache-Control"] == "no-cache"
            assert "connect-src 'self'" in r.headers["Content-Security-Policy"]
            etag = r.headers["ETag"]
        async with http.get(base + "/ui", headers={"If-None-Match": etag}) as r:
            assert r.status == 304
        for name in ("page.js", "page.css"):
            path = f"/ui/{name}?v={assets[name].etag}"
            assert path in html
            async with http.get(base + path) as r:
                assert r.status == 200
                assert r.headers["Cache-Control"] == "public, max-age=31536000, immutable"
                assert await r.read() == assets[name].body
        async with http.get(base + "/ui/other.js") as r:
            assert r.status == 404
            assert (await r.json())["error"]["code"] == "NOT_FOUND"
