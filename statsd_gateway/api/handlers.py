"""Thin handlers: validate, call the stage that does the work, shape the JSON."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web

from statsd_gateway.api import connections
from statsd_gateway.api.auth import KeyRing, principal_of
from statsd_gateway.api.openapi import openapi_spec
from statsd_gateway.api.query_params import (
    QUERY_PARAMETERS,
    QUERY_REQUIRED,
    check_parameters,
    parse_query,
    parse_tag_filter,
)
from statsd_gateway.api.schemas import decode_typed_batch, parse_batch, parse_point, sample_of
from statsd_gateway.api.shapes import TAG_VALUES_DEFAULT, TAG_VALUES_MAX, ReportBody
from statsd_gateway.api.v1_query import query_answer, sketch_answer
from statsd_gateway.catalog import MetricCatalog
from statsd_gateway.errors import (
    CardinalityLimit,
    GatewayError,
    InvalidArgument,
    PayloadTooLarge,
    TypeConflict,
    Unavailable,
)
from statsd_gateway.idempotency import (
    IdempotencyLedger,
    body_digest,
    record_fields,
    request_key,
)
from statsd_gateway.ingest import Ingest, LoggedBody
from statsd_gateway.protocol import Sample
from statsd_gateway.query import QueryEngine
from statsd_gateway.series_registry import CARDINALITY_LIMIT, TYPE_CONFLICT
from statsd_gateway.telemetry import Telemetry
from statsd_gateway.wal import WalError


class GatewayServices(Protocol):
    """What the handlers need of the composition root."""

    keyring: KeyRing
    ingest: Ingest
    query_engine: QueryEngine
    catalog: MetricCatalog
    idempotency: IdempotencyLedger
    telemetry: Telemetry
    max_body_bytes: int
    max_batch_points: int
    max_query_points: int
    tiers: tuple[tuple[float, float], ...]  # (resolution, retention) of each, finest first

    def now(self) -> float: ...

    def readiness(self) -> list[str]: ...

    def write_refusal(self) -> str | None:
        """Why writes are refused right now (the store or its log is gone), or None."""
        ...


log = logging.getLogger(__name__)
SERVICES = web.AppKey("services", GatewayServices)
SKETCH_PARAMETERS = ("name", "tags", "since", "until")
_REASON_ERRORS: dict[str, type[GatewayError]] = {
    TYPE_CONFLICT: TypeConflict,
    CARDINALITY_LIMIT: CardinalityLimit,
}
_REASON_MESSAGES = {
    TYPE_CONFLICT: "the metric already exists with another type",
    CARDINALITY_LIMIT: "the tenant has reached its series limit; new series are refused",
    "timestamp_too_old": "timestamp is older than the finest tier's retention",
    "timestamp_in_future": "timestamp is more than 10 minutes in the future",
}
_REASON_FIELDS = {"timestamp_too_old": "timestamp", "timestamp_in_future": "timestamp"}


def reason_error(reason: str, prefix: str = "") -> GatewayError:
    cls = _REASON_ERRORS.get(reason, InvalidArgument)
    field = _REASON_FIELDS.get(reason)
    return cls(_REASON_MESSAGES.get(reason, reason), prefix + field if field else None)


async def _json_body(request: web.Request) -> tuple[Any, bytes]:
    raw = await _raw_body(request)
    return _loads(raw), raw


async def _raw_body(request: web.Request) -> bytes:
    svc = request.app[SERVICES]
    if request.content_length is not None and request.content_length > svc.max_body_bytes:
        raise PayloadTooLarge(f"the body is over {svc.max_body_bytes} bytes", "body")
    ctype = request.content_type
    if ctype not in ("application/json", "") and not ctype.endswith("+json"):
        raise InvalidArgument("the body must be JSON (Content-Type: application/json)", "body")
    raw = await request.read()
    connections.body_received(request)
    return raw


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: [[[[…]]]]
        raise InvalidArgument("the body is not valid JSON", "body") from None


def _count_http(svc: GatewayServices, request: web.Request, points: int) -> None:
    t = svc.telemetry
    t.packets["http"] += 1
    t.bytes["http"] += request.content_length or 0
    t.lines["http"] += points


async def _write_once_per_key(
    request: web.Request,
    tenant: str,
    body: Any,
    apply: Callable[[], dict[str, Any]],
    logged: LoggedBody,
) -> web.Response:
    """Applies a write once per idempotency key, when the request carries one, and answers
    only once its points (and its idempotency record, in the same log entry) are on disk.

    With a write-ahead log, `apply` only decides what is accepted: the points are applied once
    the log holds them, so a 503 means nothing was applied and a retry counts them once."""
    svc = request.app[SERVICES]
    refusal = svc.write_refusal()
    if refusal is not None:
        raise Unavailable(f"{refusal}; nothing was applied, retry later")
    await svc.ingest.make_room(logged.total)
    key = request_key(request.headers.get("Idempotency-Key"), body)
    rec = None
    replayed = committed = False
    try:
        if key is None:
            answer, replayed = apply(), False
        else:
            answer, replayed, rec = await svc.idempotency.run(tenant, key, body_digest(body), apply)
        wal = svc.ingest.wal
        if wal is not None:
            header = logged.header
            if rec is not None:
                fields = record_fields(rec)
                header = (
                    {"k": "idempotency", **fields}
                    if header is None
                    else {
                        **header,
                        "idempotency": fields,
                    }
                )
            try:
                if header is not None:
                    seq = logged.seq if logged.seq is not None else rec.seq if rec else 0
                    wal.append(seq, header, logged.body if logged.header is not None else b"")
                await wal.barrier()  # also waits for an earlier request this one replays
            except WalError as e:
                raise Unavailable(f"{e}; nothing was applied, retry later") from None
        svc.ingest.commit(logged)
        committed = True
    finally:
        if not committed:  # an error, or the request cancelled: nothing of it is applied
            svc.ingest.abandon(logged)
            if rec is not None and not replayed:  # so its key must not answer a retry
                svc.idempotency.discard(rec)
    if not replayed:
        return web.json_response(answer)
    # A client that reads only the JSON can tell a replay too.
    replay = {**answer, "replayed": True}
    return web.json_response(replay, headers={"Idempotent-Replayed": "true"})


async def report(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    principal = principal_of(request)
    body, raw = await _json_body(request)
    _count_http(svc, request, 1)

    logged = LoggedBody("report", raw, [0], 1)

    def apply() -> dict[str, Any]:
        try:
            sample = parse_point(body, sanitise=svc.ingest.parser.sanitise, shape=ReportBody)
        except GatewayError:
            svc.telemetry.reject("http", "invalid_point")
            raise
        rejects = svc.ingest.samples(principal.tenant, [sample], "http", logged=logged)
        if rejects:
            raise reason_error(rejects[0][1])
        return {"ok": True}

    return await _write_once_per_key(request, principal.tenant, body, apply, logged)


def _indexed(index: int, e: GatewayError) -> dict[str, Any]:
    return {"index": index, "code": e.code, "message": e.message, "field": e.field}


async def batch(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    principal = principal_of(request)
    raw = await _raw_body(request)
    sanitise = svc.ingest.parser.sanitise
    typed = decode_typed_batch(raw)
    points: list[Any]
    to_sample: Callable[[Any], Sample]
    if typed is not None and len(typed.points) <= svc.max_batch_points:
        # Every point typed already; the body as JSON only for an idempotency key's digest.
        keyed = typed.idempotency_key is not None or "Idempotency-Key" in request.headers
        body, points = (_loads(raw) if keyed else {}), typed.points

        def to_sample(point: Any) -> Sample:
            return sample_of(point, sanitise)

        def reread() -> list[Any]:
            again = decode_typed_batch(raw)
            assert again is not None
            return again.points
    else:
        body = _loads(raw)
        points = parse_batch(body, svc.max_batch_points)

        def to_sample(point: Any) -> Sample:
            return parse_point(point, sanitise=sanitise)

        def reread() -> list[Any]:
            return parse_batch(_loads(raw), svc.max_batch_points)

    total = len(points)
    _count_http(svc, request, total)
    logged = LoggedBody("batch", raw, total=total)

    def apply() -> dict[str, Any]:
        invalid, refused = svc.ingest.points(
            principal.tenant, points, to_sample, "http", logged=logged, reread=reread
        )
        # Not needed past here (a commit that must judge them anew reads them from the body):
        # freed now rather than held across the log's fsync.
        points.clear()
        errors: list[dict[str, Any]] = []
        for i, e in invalid:  # the field is named within the batch only on error
            e.field = f"points[{i}].{e.field}" if e.field else f"points[{i}]"
            errors.append(_indexed(i, e))
        for i, reason in refused:
            errors.append(_indexed(i, reason_error(reason, prefix=f"points[{i}].")))
        errors.sort(key=lambda err: int(err["index"]))
        return {
            "ok": not errors,
            "accepted": total - len(errors),
            "rejected": len(errors),
            "errors": errors,
        }

    return await _write_once_per_key(request, principal.tenant, body, apply, logged)


async def query(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    principal = principal_of(request)
    check_parameters(request.query, QUERY_PARAMETERS, QUERY_REQUIRED)
    spec = parse_query(request.query, svc.now(), svc.max_query_points)
    body = await query_answer(svc.query_engine, principal.tenant, spec)
    return web.Response(body=body, content_type="application/json", charset="utf-8")


async def export_sketch(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    principal = principal_of(request)
    params = dict(request.query)
    for p in ("agg", "window", "group_by"):
        if p in params:
            raise InvalidArgument(f"{p} does not apply to a sketch export", p)
    check_parameters(params, SKETCH_PARAMETERS, ("name",))
    params["agg"] = "count"  # validated like a query over the whole range, then exported
    spec = parse_query(params, svc.now(), svc.max_query_points)
    return web.json_response(await sketch_answer(svc.query_engine, principal.tenant, spec))


async def list_metrics(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    principal = principal_of(request)
    check_parameters(request.query, ("match",))
    match = request.query.get("match") or None
    return web.json_response(
        {
            "ok": True,
            "metrics": svc.catalog.metrics_of(principal.tenant, match),
            # What a window may be (a multiple of the finest), for a client choosing one.
            "tiers": [{"resolution": r, "retention": k} for r, k in svc.tiers],
        }
    )


async def metric_tags(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    principal = principal_of(request)
    params = request.query
    check_parameters(params, ("name", "limit"), ("name",))
    limit = TAG_VALUES_DEFAULT
    if "limit" in params:
        text = params["limit"]
        limit = int(text) if text.isascii() and text.isdigit() and len(text) <= 6 else 0
        if not 1 <= limit <= TAG_VALUES_MAX:
            raise InvalidArgument(
                f"limit must be a whole number from 1 to {TAG_VALUES_MAX}", "limit"
            )
    name = params["name"]
    tags = svc.catalog.tags_of(principal.tenant, name, limit)
    return web.json_response({"ok": True, "name": name, "tags": tags})


async def delete_metric(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    principal = principal_of(request)
    params = request.query
    check_parameters(params, ("name", "tags"), ("name",))
    name, tags = params["name"], parse_tag_filter(params)
    deleted = await svc.catalog.delete_metric(principal.tenant, name, tags)
    log.warning(
        "key %r deleted %d series of %r in tenant %r (tags %s): %d stored rows",
        principal.name,
        deleted["series"],
        name,
        principal.tenant,
        dict(tags) or "any",
        deleted["rows"],
    )
    return web.json_response({"ok": True, "name": name, "tags": dict(tags), "deleted": deleted})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_spec(request.app[SERVICES].max_batch_points))


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    problems = request.app[SERVICES].readiness()
    if problems:
        raise Unavailable("; ".join(problems))
    return web.json_response({"ok": True})


async def prometheus(request: web.Request) -> web.Response:
    body = request.app[SERVICES].telemetry.render()
    return web.Response(body=body, content_type="text/plain", charset="utf-8")
