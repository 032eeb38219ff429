"""The exporter's own HTTP listener: GET /metrics, no key (as statsd_exporter's), anything
else 404 or 405. The format is the scraper's: the protobuf one when its Accept prefers it
(protobuf.py), OpenMetrics when it asks for it and `exporter.openmetrics` allows it, the text
format otherwise (exposition.py). The rendering runs off the loop."""

from __future__ import annotations

import asyncio
from collections import Counter

from aiohttp import web

from statsd_gateway.exporter.exposition import OPENMETRICS, TEXT, render, wants_openmetrics
from statsd_gateway.exporter.protobuf import PROTOBUF, render_protobuf, wants_protobuf
from statsd_gateway.exporter.state import ScrapeState
from statsd_gateway.telemetry import Telemetry


def exporter_app(
    state: ScrapeState, telemetry: Telemetry, *, openmetrics_allowed: bool
) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        accept = request.headers.get("Accept", "")
        protobuf = wants_protobuf(accept)
        openmetrics = not protobuf and openmetrics_allowed and wants_openmetrics(accept)
        content_type = PROTOBUF if protobuf else OPENMETRICS if openmetrics else TEXT
        dropped: Counter[str] = Counter()

        def scrape() -> bytes:
            if protobuf:
                return render_protobuf(state.snapshot(), dropped=dropped)
            return render(state.snapshot(), openmetrics=openmetrics, dropped=dropped)

        body = await asyncio.to_thread(scrape)
        telemetry.exporter_scrapes += 1
        telemetry.exporter_dropped.update(dropped)
        return web.Response(body=body, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app
