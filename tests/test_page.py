"""The /ui page in a real browser (Debian's Chromium, over the DevTools protocol) against a
running gateway with known data: the key, the metric list, the chart's points against the query
API's answers, the controls, the URL fragment, errors, the keyboard, and no request to another
host. Screenshots (1280×800 and a 390-px phone) are saved under $TEST_ARTIFACTS (default
build/test-artifacts/ui)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import pytest_asyncio
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


# One browser for the module (a start of Chromium is most of a test's time), so every test and
# async fixture here runs on the module's event loop. Each test has a gateway of its own, on a
# port of its own: another origin, whose pages share no storage or cache with the last test's;
# its tabs are closed after it.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module")
async def served(config: Config, clock: ManualClock) -> AsyncIterator[tuple[str, Api]]:
    chromium_path()  # skipped (failed under CI) before anything starts, where it is missing
    async with running(config, clock) as (_, api):
        status, body = await api.batch(history())
        assert (status, body["accepted"]) == (200, len(history())), body
        yield api.base, api


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_browser(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Browser]:
    async with chromium(tmp_path_factory.mktemp("browser") / "profile") as b:
        yield b


@pytest_asyncio.fixture(loop_scope="module")
async def browser(shared_browser: Browser) -> AsyncIterator[Browser]:
    try:
        yield shared_browser
    finally:
        await shared_browser.close_tabs()


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
    if first[0] == last[0] or low[1] == high[1]:
        return {label: [(t, v) for t, v, _, _ in cs] for label, cs in series}  # a single point
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

    # group_by typed into its field: one line per host, with a legend.
    await tab.evaluate("document.getElementById('group-by').focus()")
    await tab.type("host")
    await tab.press("Enter")
    await tab.wait_for("document.querySelectorAll('#chart g.series').length === 2")
    query = last_query(tab)
    assert query["group_by"] == "host"
    drawn = await drawn_points(tab)
    assert drawn == await api_points(api, query) and list(drawn) == ["host=a", "host=b"]
    assert await tab.evaluate("document.getElementById('legend').innerText.split('\\n')") == [
        "host=a",
        "host=b",
    ]
    await tab.screenshot(ARTIFACTS / "chart-1280x800.png")
    assert tab.console_errors == []
    only_local(tab, base)


async def test_assets_are_small_cached_and_local(served: tuple[str, Api]) -> None:
    base, _ = served
    assets = load_assets()
    assert sum(len(a.body) for a in assets.values()) < 300_000
    async with ClientSession() as http:
        async with http.get(base + "/ui") as r:
            assert r.status == 200 and r.headers["Content-Type"] == "text/html; charset=utf-8"
            html = await r.text()
            assert r.headers["Cache-Control"] == "no-cache"
            assert "connect-src 'self'" in r.headers["Content-Security-Policy"]
            etag = r.headers["ETag"]
        async with http.get(base + "/ui", headers={"If-None-Match": etag}) as r:
            assert r.status == 304
        for name in ("page.js", "page.css"):
            path = f"ui/{name}?v={assets[name].etag}"
            assert f'"{path}"' in html
            async with http.get(f"{base}/{path}") as r:
                assert r.status == 200
                assert r.headers["Cache-Control"] == "public, max-age=31536000, immutable"
                assert await r.read() == assets[name].body
        async with http.get(base + "/ui/other.js") as r:
            assert r.status == 404
            assert (await r.json())["error"]["code"] == "NOT_FOUND"


async def test_hovering_reads_a_points_time_and_value(
    served: tuple[str, Api], browser: Browser
) -> None:
    base, api = served
    tab = await open_page(browser, base, "#name=jobs.done&agg=sum&since=-15m")
    await enter_key(tab)
    await tab.wait_for("document.querySelectorAll('#chart circle').length > 0")
    query = last_query(tab)
    assert query == {"name": "jobs.done", "agg": "sum", "since": "-15m", "window": "10s"}
    drawn = (await drawn_points(tab))["jobs.done"]
    assert drawn == (await api_points(api, query))["jobs.done"]
    t, v = drawn[10]
    box = await tab.evaluate(
        f"""(() => {{ const c = document.querySelector('#chart circle[data-t="{int(t)}"]');
                    const r = c.getBoundingClientRect();
                    return [r.x + r.width / 2, r.y + r.height / 2]; }})()"""
    )
    await tab.send("Input.dispatchMouseEvent", type="mouseMoved", x=box[0], y=box[1])
    text = await tab.wait_for(
        "!document.getElementById('tooltip').hidden && document.getElementById('tooltip').innerText"
    )
    when = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")  # the page is in UTC
    assert text.splitlines() == [when, f"jobs.done: {v:g}"]
    await tab.evaluate("document.getElementById('chart').focus()")
    await tab.press("ArrowRight")  # the keyboard moves the cursor to the next point
    text = await tab.evaluate("document.getElementById('tooltip').innerText")
    assert text.splitlines()[1] == f"jobs.done: {drawn[11][1]:g}"
    assert tab.console_errors == []


async def test_a_shared_link_with_group_by_and_a_custom_range_reloads_the_same_chart(
    served: tuple[str, Api], browser: Browser
) -> None:
    base, api = served
    since, until = int(T0 - 1800), int(T0 - 600)
    fragment = f"#name=api.latency&agg=avg&since={since}&until={until}&window=5m&group_by=host"
    # In New York (UTC-5 in November): the range's fields show local time, and read it back.
    tab = await open_page(browser, base, fragment, timezone="America/New_York")
    await enter_key(tab)
    await tab.wait_for("document.querySelectorAll('#chart g.series').length === 2")
    query = last_query(tab)
    assert query == {
        "name": "api.latency",
        "agg": "avg",
        "since": str(since),
        "until": str(until),
        "window": "5m",
        "group_by": "host",
    }
    drawn = await drawn_points(tab)
    assert drawn == await api_points(api, query)
    assert list(drawn) == ["host=a", "host=b"] and all(len(p) == 4 for p in drawn.values())
    legend = await tab.evaluate("document.getElementById('legend').innerText")
    assert legend.split() == ["host=a", "host=b"]
    controls = await tab.evaluate(
        "['range', 'since', 'until', 'window', 'group-by']"
        ".map(i => document.getElementById(i).value)"
    )
    assert controls == ["custom", "2025-11-26T10:30", "2025-11-26T10:50", "5m", "host"]
    await tab.evaluate("document.getElementById('agg').focus()")
    await tab.press("ArrowDown")  # avg → sum: the range is sent as it was
    await tab.wait_for("location.hash.includes('agg=sum')")
    await tab.wait_for("document.getElementById('summary').textContent.startsWith('sum of')")
    assert last_query(tab) == {**query, "agg": "sum"}
    await tab.evaluate("document.getElementById('agg').focus()")
    await tab.press("ArrowUp")
    await tab.wait_for("location.hash.includes('agg=avg')")
    await tab.wait_for("document.getElementById('summary').textContent.startsWith('avg of')")

    # A reload keeps the key (this tab's sessionStorage) and draws the same chart.
    await tab.reload()
    await tab.wait_for("document.querySelectorAll('#chart g.series').length === 2")
    assert await tab.evaluate("document.getElementById('key-form').hidden")
    assert await drawn_points(tab) == drawn
    assert tab.console_errors == []
    only_local(tab, base)


async def test_changing_the_aggregation_and_the_range_redraws_from_the_api(
    served: tuple[str, Api], browser: Browser
) -> None:
    base, api = served
    tab = await open_page(browser, base, "#name=queue.depth&agg=last&tags=")
    await enter_key(tab)
    await tab.wait_for("document.querySelectorAll('#chart circle').length > 0")
    aggs = await tab.evaluate("[...document.getElementById('agg').options].map(o => o.value)")
    assert aggs == ["p50", "p90", "p99", "avg", "sum", "count", "min", "max", "last"]  # no rate
    first = await drawn_points(tab)
    assert first == await api_points(api, last_query(tab))

    await tab.evaluate("document.getElementById('agg').focus()")
    await tab.press("ArrowUp")  # last → max
    await tab.wait_for("location.hash.includes('agg=max')")
    await tab.wait_for("document.getElementById('summary').textContent.startsWith('max of')")
    assert last_query(tab)["agg"] == "max"
    assert await drawn_points(tab) == await api_points(api, last_query(tab))

    await tab.evaluate("document.getElementById('range').focus()")
    await tab.press("ArrowDown")  # the last hour → the last 6 hours
    await tab.wait_for("location.hash.includes('since=-6h')")
    await tab.wait_for("document.getElementById('summary').textContent.includes('per 2m')")
    query = last_query(tab)
    assert query == {"name": "queue.depth", "agg": "max", "since": "-6h", "window": "2m"}
    assert await drawn_points(tab) == await api_points(api, query)
    assert tab.console_errors == []


async def test_the_apis_errors_are_shown_as_its_message(
    served: tuple[str, Api], browser: Browser
) -> None:
    base, api = served
    tab = await open_page(browser, base)
    await enter_key(tab, "not-a-key")
    message = await tab.wait_for(
        "!document.getElementById('error').hidden && document.getElementById('error').textContent"
    )
    assert message == "the API key is not valid"
    assert await tab.evaluate("!document.getElementById('key-form').hidden")
    assert await tab.evaluate("sessionStorage.length") == 0

    await enter_key(tab)
    await tab.wait_for("document.getElementById('error').hidden")
    await tab.wait_for("document.querySelectorAll('#metric-list button').length === 4")
    await tab.evaluate("document.querySelector('#metric-list button[data-name=\"users\"]').click()")
    await tab.wait_for("document.querySelectorAll('#chart circle').length > 0")
    assert last_query(tab)["agg"] == "distinct"
    # A tag filter the API refuses: its message, as the API gives it.
    await tab.evaluate("document.getElementById('tags').focus()")
    await tab.type("env")
    await tab.press("Enter")
    shown = await tab.wait_for(
        "!document.getElementById('error').hidden && document.getElementById('error').textContent"
    )
    status, body = await api.query(**last_query(tab))
    assert status == 400 and shown == body["error"]["message"]
    # The browser's own lines for the two refused requests are all it logged.
    assert [e.split("status of ")[1] for e in tab.console_errors] == [
        "401 (Unauthorized)",
        "400 (Bad Request)",
    ]


async def test_keyboard_only_with_labels_and_the_key_kept_in_this_tab_alone(
    served: tuple[str, Api], browser: Browser, caplog: pytest.LogCaptureFixture
) -> None:
    base, _ = served
    tab = await open_page(browser, base)
    await tab.wait_for("!document.getElementById('key-form').hidden")
    assert await tab.focused() == "api-key"  # the page starts there
    await tab.press("Tab")
    assert await tab.focused() == "BUTTON"  # Use key
    await tab.press("Tab", shift=True)  # back to the field
    assert await tab.focused() == "api-key"
    await tab.type(KEY)
    await tab.press("Enter")
    await tab.wait_for("document.activeElement.id === 'metric-search'")
    await tab.wait_for("document.querySelectorAll('#metric-list button').length === 4")
    await tab.press("Tab")
    assert await tab.evaluate("document.activeElement.dataset.name") == "api.latency"
    await tab.press("Enter")
    await tab.wait_for("document.querySelectorAll('#chart circle').length > 0")
    assert await tab.focused() == "agg"
    order = []
    for _ in range(7):
        await tab.press("Tab")
        order.append(await tab.focused())
    assert order == ["range", "window", "tags", "group-by", "refresh", "apply", "chart"]
    await tab.press("ArrowRight")
    assert await tab.wait_for("!document.getElementById('tooltip').hidden")
    await tab.press("Escape")
    assert await tab.evaluate("document.getElementById('tooltip').hidden")

    # Every control has a label a screen reader reads.
    unlabelled = await tab.evaluate(
        """[...document.querySelectorAll('input, select, button')].filter(e =>
             !(e.labels && e.labels.length) && !e.textContent.trim() && !e.ariaLabel)
           .map(e => e.id || e.outerHTML)"""
    )
    assert unlabelled == []
    # The key is in this tab's sessionStorage, nowhere else: no cookie, no URL, no log line.
    assert await tab.evaluate("sessionStorage.getItem('statsd-gateway.api-key')") == KEY
    assert await tab.evaluate("[localStorage.length, document.cookie]") == [0, ""]
    assert not [u for u in tab.requests if KEY in u]
    assert KEY not in caplog.text
    assert tab.requests  # (the page did call the API)

    await tab.evaluate("document.getElementById('forget-key').click()")
    await tab.wait_for("!document.getElementById('key-form').hidden")
    assert await tab.evaluate("sessionStorage.length") == 0
    assert tab.console_errors == []


async def test_auto_refresh_shows_new_points(served: tuple[str, Api], browser: Browser) -> None:
    base, api = served
    tab = await open_page(browser, base, "#name=jobs.done&agg=sum&since=-15m&refresh=10s")
    await enter_key(tab)
    await tab.wait_for("document.querySelectorAll('#chart circle').length > 0")
    before = await drawn_points(tab)
    assert T0 not in [t for t, _ in before["jobs.done"]]
    status, _ = await api.report({"name": "jobs.done", "type": "counter", "value": 9})  # now
    assert status == 200
    # The browser's clock, not the test's, runs the 10 s: virtual time, run as fast as it goes.
    queries = len([u for u in tab.requests if "/v1/metrics/query" in u])
    await tab.send("Emulation.setVirtualTimePolicy", policy="advance", budget=11_000)
    await tab.wait_for(f"document.querySelectorAll('#chart circle[data-t=\"{int(T0)}\"]').length")
    assert len([u for u in tab.requests if "/v1/metrics/query" in u]) == queries + 1
    after = await drawn_points(tab)
    assert after["jobs.done"] == [*before["jobs.done"], (T0, 9.0)]
    assert tab.console_errors == []


def _luminance(rgb: list[float]) -> float:
    def channel(c: float) -> float:
        c /= 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in rgb[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


async def test_phone_width_and_readable_contrast(served: tuple[str, Api], browser: Browser) -> None:
    base, _ = served
    tab = await open_page(
        browser, base, "#name=api.latency&agg=p90&group_by=host", width=390, height=844, mobile=True
    )
    await enter_key(tab)
    await tab.wait_for("document.querySelectorAll('#chart g.series').length === 2")
    assert await tab.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scroll
    await tab.screenshot(ARTIFACTS / "chart-phone-390.png")
    # Text colour against the background it is drawn on (the first opaque one up the tree).
    pairs = await tab.evaluate(
        """(() => {
          const rgb = (s) => s.match(/[\\d.]+/g).map(Number);
          const background = (e) => {
            for (; e; e = e.parentElement) {
              const c = rgb(getComputedStyle(e).backgroundColor);
              if (c.length < 4 || c[3] > 0) return c;
            }
            return [255, 255, 255];
          };
          const texts = 'h1, h2, label, button, #summary, .legend li, .type, .axis text';
          return [...document.querySelectorAll(texts)]
            .filter(e => e.getClientRects().length)
            .map(e => [e.tagName + '#' + e.id + ' ' + e.textContent.slice(0, 20),
                       rgb(getComputedStyle(e)[e.tagName === 'text' ? 'fill' : 'color']),
                       background(e)]);
        })()"""
    )
    assert len(pairs) > 10
    for what, fg, bg in pairs:
        lighter, darker = sorted((_luminance(fg), _luminance(bg)), reverse=True)
        assert (lighter + 0.05) / (darker + 0.05) >= 4.5, (what, fg, bg)
    assert tab.console_errors == []


async def test_a_relative_range_from_a_link_stays_relative_and_html_in_tags_stays_text(
    served: tuple[str, Api], browser: Browser
) -> None:
    base, api = served
    odd = "<img src=x onerror=alert(1)>"
    status, _ = await api.batch(
        [
            {
                "name": "odd.tags",
                "type": "counter",
                "value": 2,
                "tags": {"team": odd},
                "timestamp": T0 - 600,
            }
        ]
    )
    assert status == 200
    tab = await open_page(browser, base, "#name=odd.tags&agg=sum&since=-2h&until=-1m&group_by=team")
    await enter_key(tab)
    await tab.wait_for("document.querySelectorAll('#chart circle').length > 0")
    assert await tab.evaluate("document.getElementById('range').value") == "custom"
    assert await tab.evaluate("document.getElementById('legend').innerText") == f"team={odd}"
    assert await tab.evaluate("document.querySelectorAll('img').length") == 0
    await tab.evaluate("document.getElementById('agg').focus()")
    await tab.press("ArrowDown")  # sum → count: the range is still the link's
    await tab.wait_for("location.hash.includes('agg=count')")
    await tab.wait_for("document.getElementById('summary').textContent.startsWith('count of')")
    query = last_query(tab)
    assert (query["since"], query["until"], query["agg"]) == ("-2h", "-1m", "count")
    assert await drawn_points(tab) == await api_points(api, query)

    # Another link in the same tab: a metric that does not exist, in the API's words.
    await tab.evaluate("location.hash = '#name=no.such&agg=sum'")
    shown = await tab.wait_for(
        "!document.getElementById('error').hidden && document.getElementById('error').textContent"
    )
    status, body = await api.query(name="no.such", agg="sum")
    assert status == 404 and shown == body["error"]["message"]
    assert [e.split("status of ")[1] for e in tab.console_errors] == ["404 (Not Found)"]
