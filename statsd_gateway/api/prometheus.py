"""The Prometheus HTTP API under /api/v1, for Grafana, promtool and anything else that speaks it:
`query`, `query_range` (GET, or POST with a form body), `labels`, `label/<name>/values`,
`series`, `metadata`, `status/buildinfo`. Shapes as Prometheus documents them (values as
strings, `[unix_seconds, "value"]`), and its error shape, which this sub-app renders itself:
`{"status": "error", "errorType": …, "error": …}`, 400 bad_data, 422 execution, 503 timeout or
unavailable. The key is a Bearer key with the read scope; the tenant is the key's.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import msgspec
import numpy as np
from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import MultiDict, MultiMapping

from statsd_gateway import __version__
from statsd_gateway.api.app import declare_routes
from statsd_gateway.api.auth import principal_of
from statsd_gateway.api.handlers import SERVICES
from statsd_gateway.api.openapi_prometheus import ERROR_TYPES
from statsd_gateway.api.prometheus_results import instant_result, matrix_result
from statsd_gateway.errors import (
    GatewayError,
    InvalidArgument,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    StoreTimeout,
)
from statsd_gateway.model import Tags
from statsd_gateway.promql.evaluate import Steps
from statsd_gateway.promql.names import (
    VIEWS,
    Metric,
    NameIndex,
    escape,
    is_histogram,
    labels_of,
)
from statsd_gateway.promql.selection import metrics_of, tag_matchers
from statsd_gateway.promql.service import PromqlService
from statsd_gateway.promql.syntax import MAX_TIME, MIN_TIME, Selector, parse_selector, seconds_of
from statsd_gateway.promql.values import NAME

SERVICE = web.AppKey("promql", PromqlService)
# The Prometheus release whose API this one answers like (Grafana reads it to pick features).
PROMETHEUS_VERSION = "2.45.0"
log = logging.getLogger(__name__)
_JSON = msgspec.json.Encoder()
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)
_TYPES = {"counter": "counter", "gauge": "gauge", "set": "gauge", "timing": "histogram",
          "histogram": "histogram", "distribution": "histogram"}  # fmt: skip
_QUERY_PARAMETERS = ("query", "time", "timeout", "limit", "stats")
_RANGE_PARAMETERS = ("query", "start", "end", "step", "timeout", "limit", "stats")
_LABEL_PARAMETERS = ("match[]", "start", "end", "limit")


@web.middleware
async def prometheus_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return error(NotFound(f"no endpoint at {request.path}"))
    except web.HTTPMethodNotAllowed as e:
        allow = ", ".join(sorted(e.allowed_methods))
        response = error(MethodNotAllowed(f"{request.method} is not allowed here; use {allow}"))
        response.headers["Allow"] = allow
        return response
    except web.HTTPRequestEntityTooLarge:
        return error(PayloadTooLarge("the request body is too large", "body"))
    except GatewayError as e:
        return error(e)
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        return error(GatewayError("internal error"))


def error(e: GatewayError) -> web.Response:
    kind = "timeout" if isinstance(e, StoreTimeout) else ERROR_TYPES.get(e.status, "internal")
    message = e.message
    if isinstance(e, StoreTimeout):  # the store's words name /v1's parameters
        message = (
            "the query ran past query.timeout: ask for a shorter range (start, end), a "
            "coarser step or fewer series"
        )
    body: dict[str, Any] = {"status": "error", "errorType": kind, "error": message}
    headers = {"WWW-Authenticate": 'Bearer realm="statsd-gateway"'} if e.status == 401 else None
    return web.Response(
        body=_JSON.encode(body), status=e.status, content_type="application/json", headers=headers
    )


def success(data: Any) -> web.Response:
    return web.Response(
        body=_JSON.encode({"status": "success", "data": data}), content_type="application/json"
    )


async def _params(request: web.Request, allowed: tuple[str, ...]) -> MultiMapping[str]:
    """The query string's parameters and, for a form POST, the body's (as Prometheus reads
    both); an unknown one is bad_data naming it."""
    params: MultiMapping[str] = request.query
    if request.method == "POST":
        if request.content_type != "application/x-www-form-urlencoded":
            raise InvalidArgument(
                "a POST body must be a form (Content-Type: application/x-www-form-urlencoded)",
                "body",
            )
        try:
            form = await request.post()
        except ValueError as e:
            raise InvalidArgument(f"the form body cannot be read: {e}", "body") from None
        merged = MultiDict(request.query)
        merged.extend([(k, v) for k, v in form.items() if isinstance(v, str)])
        params = merged
    for key in params:
        if key not in allowed:
            raise InvalidArgument(
                f"unknown parameter {key!r} (this endpoint takes {', '.join(allowed)})", key
            )
    return params


def parse_time(text: str, what: str) -> float:
    """A Prometheus time parameter: Unix seconds (a float) or RFC 3339 (with its offset: a
    time without one would be read in the server's time zone)."""
    try:
        t = float(text)
    except ValueError:
        try:
            if not _RFC3339.fullmatch(text):
                raise ValueError(text)
            t = datetime.fromisoformat(
                text.replace("Z", "+00:00").replace("z", "+00:00")
            ).timestamp()
        except ValueError:
            raise InvalidArgument(
                f'invalid parameter "{what}": cannot parse "{text}" to a valid timestamp', what
            ) from None
    if not (math.isfinite(t) and MIN_TIME <= t <= MAX_TIME):
        raise InvalidArgument(
            f'invalid parameter "{what}": cannot parse "{text}" to a valid timestamp', what
        )
    return t


def parse_step(text: str) -> float:
    """A resolution: seconds (a float) or a PromQL duration (`15s`, `1m`)."""
    try:
        step = float(text)
    except ValueError:
        import promql_parser

        try:
            step = seconds_of(promql_parser.parse_duration(text))
        except ValueError:
            raise InvalidArgument(
                f'invalid parameter "step": cannot parse "{text}" to a valid duration', "step"
            ) from None
    if not math.isfinite(step) or step <= 0:
        raise InvalidArgument(
            'invalid parameter "step": zero or negative query resolution step widths are not '
            "accepted. Try a positive integer", "step",
        )  # fmt: skip
    return step


def _required(params: Mapping[str, str], key: str) -> str:
    value = params.get(key)
    if value is None or value == "":
        raise InvalidArgument(f'invalid parameter "{key}": missing', key)
    return value


async def query(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    params = await _params(request, _QUERY_PARAMETERS)
    text = _required(params, "query")
    now = svc.now()
    t = parse_time(params["time"], "time") if params.get("time") else now
    value = await request.app[SERVICE].evaluate(
        principal_of(request).tenant, text, Steps(np.array([t]), None), now
    )
    return success(instant_result(value, t))


async def query_range(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    params = await _params(request, _RANGE_PARAMETERS)
    text = _required(params, "query")
    start = parse_time(_required(params, "start"), "start")
    end = parse_time(_required(params, "end"), "end")
    step = parse_step(_required(params, "step"))
    if end < start:
        raise InvalidArgument(
            'invalid parameter "end": end timestamp must not be before start time', "end"
        )
    n = math.floor((end - start) / step) + 1
    if n > svc.max_query_points:
        raise InvalidArgument(
            f"exceeded maximum resolution of {svc.max_query_points} points per timeseries. "
            "Try decreasing the query resolution (?step=XX)", "step",
        )  # fmt: skip
    steps = Steps(start + step * np.arange(n, dtype=np.float64), step)
    value = await request.app[SERVICE].evaluate(
        principal_of(request).tenant, text, steps, svc.now()
    )
    return success(matrix_result(value, steps))


# -- the series index: labels, label values, series, metadata (read from the registry)
async def _selected(
    request: web.Request, params: MultiMapping[str]
) -> list[tuple[Metric, dict[str, str]]]:
    """(metric, labels) of every known series the `match[]` selectors select (all of the
    tenant's, without one); walked off the loop (a tenant may have 100,000 series)."""
    service = request.app[SERVICE]
    tenant = principal_of(request).tenant
    selectors = [parse_selector(m) for m in params.getall("match[]", [])]
    index = service.index(tenant)
    return await asyncio.to_thread(_walk, service, tenant, index, selectors)


def _walk(
    service: PromqlService, tenant: str, index: NameIndex, selectors: list[Selector]
) -> list[tuple[Metric, dict[str, str]]]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[Metric, dict[str, str]]] = {}
    if not selectors:
        for name in sorted(index.types):
            metric = Metric(name, index.types[name])
            for tags in service.series_tags(tenant, name):
                _add(out, metric, tags)
        return list(out.values())
    for sel in selectors:
        for metric in metrics_of(index, sel, strict=False):
            tags_of = service.series_tags(tenant, metric.name)
            matchers = tag_matchers(tags_of, metric, sel.matchers)
            for tags in tags_of:
                if all(m.matches(tags) for m in matchers):
                    _add(out, metric, tags)
    return list(out.values())


def _add(out: dict[Any, Any], metric: Metric, tags: Tags) -> None:
    labels = dict(labels_of(tags))
    labels[NAME] = escape(metric.name) + metric.view
    out[(labels[NAME], tuple(sorted(labels.items())))] = (metric, labels)


def _limit(params: Mapping[str, str]) -> int | None:
    text = params.get("limit")
    if not text:
        return None
    try:
        n = int(text)
    except ValueError:
        raise InvalidArgument(
            f'invalid parameter "limit": cannot parse "{text}"', "limit"
        ) from None
    return n if n > 0 else None


async def labels(request: web.Request) -> web.Response:
    params = await _params(request, _LABEL_PARAMETERS)
    _times(params)
    names: set[str] = set()
    for _, labs in await _selected(request, params):
        names.update(labs)  # __name__ among them, where any series is
    return success(sorted(names)[: _limit(params)])


async def label_values(request: web.Request) -> web.Response:
    params = await _params(request, _LABEL_PARAMETERS)
    _times(params)
    label = request.match_info["name"]
    if label == NAME and not params.getall("match[]", []):
        index = request.app[SERVICE].index(principal_of(request).tenant)
        return success(index.prometheus_names()[: _limit(params)])
    selected = await _selected(request, params)
    values = {labs[label] for _, labs in selected if label in labs}
    if label == NAME:
        values |= {
            escape(m.name) + v for m, _ in selected if is_histogram(m.type) for v in VIEWS[1:]
        }
    return success(sorted(values)[: _limit(params)])


async def series(request: web.Request) -> web.Response:
    params = await _params(request, _LABEL_PARAMETERS)
    _times(params)
    if not params.getall("match[]", []):
        raise InvalidArgument("no match[] parameter provided", "match[]")
    found = sorted(
        (labs for _, labs in await _selected(request, params)), key=lambda d: sorted(d.items())
    )
    return success(found[: _limit(params)])


def _times(params: Mapping[str, str]) -> None:
    """`start` and `end` are checked; the series index answers every series it knows
    (docs/PROMETHEUS.md), not only those with samples between them."""
    for key in ("start", "end"):
        if params.get(key):
            parse_time(params[key], key)


async def metadata(request: web.Request) -> web.Response:
    params = await _params(request, ("metric", "limit", "limit_per_metric"))
    index = request.app[SERVICE].index(principal_of(request).tenant)
    wanted = params.get("metric")
    out: dict[str, list[dict[str, str]]] = {}
    for name, mtype in sorted(index.types.items()):
        prom = escape(name)
        if wanted and wanted != prom:
            continue
        out.setdefault(prom, []).append(
            {"type": _TYPES[mtype.value], "help": f"StatsD {mtype.value} {name}", "unit": ""}
        )
    limit = _limit(params)
    return success(dict(list(out.items())[:limit]) if limit else out)


async def buildinfo(request: web.Request) -> web.Response:
    return success({
        "version": PROMETHEUS_VERSION, "revision": "", "branch": "", "buildUser": "",
        "buildDate": "", "goVersion": "", "application": f"statsd-gateway {__version__}",
    })  # fmt: skip


def prometheus_api(service: PromqlService) -> web.Application:
    """The sub-app, to mount at openapi_prometheus.PREFIX (/api/v1)."""
    sub = web.Application(middlewares=[prometheus_errors])
    sub[SERVICE] = service
    declare_routes(
        sub,
        [
            ("GET", "/query", query, "read"),
            ("POST", "/query", query, "read"),
            ("GET", "/query_range", query_range, "read"),
            ("POST", "/query_range", query_range, "read"),
            ("GET", "/labels", labels, "read"),
            ("POST", "/labels", labels, "read"),
            ("GET", "/label/{name}/values", label_values, "read"),
            ("GET", "/series", series, "read"),
            ("POST", "/series", series, "read"),
            ("GET", "/metadata", metadata, "read"),
            ("GET", "/status/buildinfo", buildinfo, "read"),
        ],
    )
    return sub
