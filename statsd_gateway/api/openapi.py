"""The OpenAPI 3.0 description of the HTTP API, served at GET /v1/openapi.json (no auth).

Every schema in it is generated from the Structs that define the bodies (shapes.py) and the
answers (answers.py), so a limit is stated where it is enforced and nowhere else. What is
written here is about the routes: the paths, their parameters, the answer of each status.
"""

from __future__ import annotations

from typing import Any

import msgspec

from statsd_gateway import __version__
from statsd_gateway.api import answers, page, shapes
from statsd_gateway.api.openapi_prometheus import PROMETHEUS_SCHEMAS, prometheus_paths
from statsd_gateway.config import HttpConfig
from statsd_gateway.config.values import DURATION_PATTERN
from statsd_gateway.errors import GatewayError

OPENAPI_PATH = "/v1/openapi.json"
_STRUCTS: list[type[msgspec.Struct]] = [
    shapes.ErrorEnvelope,
    shapes.ReportBody,
    shapes.BatchBody,
    shapes.ReportAnswer,
    shapes.BatchAnswer,
    shapes.Ok,
    answers.QueryAnswer,
    answers.SketchAnswer,
    answers.TierInfo,
    answers.MetricsAnswer,
    answers.TagsAnswer,
    answers.DeletedAnswer,
]
_REF = "#/components/schemas/{name}"
_DEFAULT_MAX_BATCH_POINTS: int = HttpConfig().max_batch_points


def openapi_spec(max_batch_points: int = _DEFAULT_MAX_BATCH_POINTS) -> dict[str, Any]:
    """The document, with http.max_batch_points as the batch's maxItems."""
    return {
        "openapi": "3.0.3",
        "info": {"title": "statsd-gateway", "version": __version__},
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key; its scopes decide what it may do: read (query, "
                    "list, discover, export), write (report, batch), admin (delete). A key "
                    "lacking the scope an operation needs gets 403 PERMISSION_DENIED.",
                }
            },
            "schemas": schema_components(max_batch_points),
        },
        "security": [{"bearer": []}],
        "paths": _paths() | prometheus_paths(),
    }


def schema_components(max_batch_points: int) -> dict[str, Any]:
    """The components, generated from the Structs, in OpenAPI 3.0's dialect."""
    _, components = msgspec.json.schema_components(_STRUCTS, ref_template=_REF)
    # No Struct refers to the envelope, so it can keep the name the document always gave it.
    components["Error"] = components.pop("ErrorEnvelope")
    components["ErrorDetail"]["properties"]["code"]["enum"] = sorted(
        {c.code for c in _error_classes()}
    )
    components["BatchBody"]["properties"]["points"]["maxItems"] = max_batch_points
    return {name: to_openapi30(schema) for name, schema in components.items()} | PROMETHEUS_SCHEMAS


def to_openapi30(node: Any) -> Any:
    """msgspec writes JSON Schema 2020-12, and OpenAPI 3.0 speaks an older dialect: `nullable`
    instead of a null type, boolean exclusive bounds, nothing beside a `$ref`, no
    `propertyNames` (the key limits are said in the description), no empty `required`."""
    if isinstance(node, list):
        return [to_openapi30(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_openapi30(v) for k, v in node.items() if k != "propertyNames"}
    if isinstance(out.get("description"), str):  # a docstring, wrapped at 100 columns
        out["description"] = " ".join(out["description"].split())
    if out.get("required") == []:
        del out["required"]
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if exclusive in out and not isinstance(out[exclusive], bool):
            out[bound], out[exclusive] = out[exclusive], True
    if "enum" in out and "type" not in out:
        kinds = {type(v) for v in out["enum"]}
        if len(kinds) == 1 and kinds <= {bool, str}:
            out["type"] = "boolean" if bool in kinds else "string"
    branches = out.pop("anyOf", None)
    if branches is not None and {"type": "null"} in branches:
        # OpenAPI 3.0.3: `nullable` counts only beside a `type`, so each branch carries it.
        rest = [{**b, "nullable": True} for b in branches if b != {"type": "null"}]
        out = {**rest[0], **out} if len(rest) == 1 else {**out, "anyOf": rest}
    elif branches is not None:
        out["anyOf"] = branches
    if "$ref" in out and len(out) > 1:
        out = {"allOf": [{"$ref": out.pop("$ref")}], **out}
    return out


def _error_classes() -> list[type[GatewayError]]:
    out: list[type[GatewayError]] = []
    todo: list[type[GatewayError]] = [GatewayError]
    while todo:
        c = todo.pop()
        out.append(c)
        todo.extend(c.__subclasses__())
    return out


# --- the routes ------------------------------------------------------------------------------


def _json(component: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": _REF.format(name=component)}}}


def _answer(description: str, component: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": _json(component), **extra}


def _error(code: str) -> dict[str, Any]:
    return _answer(code, "Error")


_COMMON_ERRORS = {
    "400": _error("INVALID_ARGUMENT"),
    "401": _error("UNAUTHENTICATED")
    | {"headers": {"WWW-Authenticate": {"schema": {"type": "string"}}}},
    "403": _error("PERMISSION_DENIED"),
    "500": _error("INTERNAL"),
}
# The store or the write-ahead log down, or a read past query.timeout (see docs/API.md).
_UNAVAILABLE = {"503": _error("UNAVAILABLE")}
_WRITE_ERRORS = {
    **_COMMON_ERRORS,
    "409": _error("TYPE_CONFLICT or IDEMPOTENCY_KEY_REUSED"),
    "413": _error("PAYLOAD_TOO_LARGE"),
    "429": _error("CARDINALITY_LIMIT"),
    **_UNAVAILABLE,
}
_NOT_FOUND = {"404": _error("METRIC_NOT_FOUND")}
# Present only on the recorded answer of an idempotent request replayed.
_REPLAYED = {"Idempotent-Replayed": {"schema": {"type": "string", "enum": ["true"]}}}
# query_params' aggregations; [0-9] because a regex here is ECMA-262's (ASCII digits).
_AGG_PATTERN = "^(count|sum|avg|min|max|last|rate|distinct|p(100|[0-9]{1,2}(\\.[0-9]+)?))$"
_TIME = "unix seconds, RFC 3339, now, or -15m"


def _schema_of(t: Any) -> dict[str, Any]:
    schema: dict[str, Any] = to_openapi30(msgspec.json.schema(t))
    return schema


def _param(name: str, description: str, required: bool = False, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": {"type": "string", **schema},
    }


def _operation(
    summary: str,
    parameters: list[dict[str, Any]],
    responses: dict[str, Any],
    errors: dict[str, Any] = _COMMON_ERRORS,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "summary": summary,
        **extra,
        "parameters": parameters,
        "responses": {**responses, **errors},
    }


def _write(summary: str, body: str, answer: dict[str, Any]) -> dict[str, Any]:
    header = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "schema": _schema_of(shapes.IdempotencyKey),
    }
    return {
        "post": _operation(
            summary,
            [header],
            {"200": answer},
            _WRITE_ERRORS,
            requestBody={"required": True, "content": _json(body)},
        )
    }


def _html(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}


def _public(summary: str, responses: dict[str, Any]) -> dict[str, Any]:
    return {"get": {"summary": summary, "security": [], "responses": responses}}


def _paths() -> dict[str, Any]:
    name_schema = _schema_of(shapes.MetricName)
    name = _param("name", name_schema.pop("description"), True, **name_schema)
    stored_name = _param("name", "the metric", True, minLength=1)
    tags = _param("tags", "filter: k:v,k2:v2 or a JSON object")
    since, until = _param("since", _TIME), _param("until", _TIME)
    limit = _param(
        "limit",
        f"values per key (default {shapes.TAG_VALUES_DEFAULT})",
        pattern="^[0-9]{1,6}$",  # the handler's rule; beyond TAG_VALUES_MAX is a 400
    )
    return {
        "/v1/metrics/report": _write(
            "Report one point", "ReportBody", _answer("accepted", "ReportAnswer", headers=_REPLAYED)
        ),
        "/v1/metrics/batch": _write(
            "Report many points; valid ones are kept, invalid ones reported",
            "BatchBody",
            _answer("the batch was processed", "BatchAnswer", headers=_REPLAYED),
        ),
        "/v1/metrics/query": {
            "get": _operation(
                "A time series of one aggregation of one metric",
                [
                    name,
                    _param(
                        "agg",
                        "count sum avg min max rate last distinct, or pNN / pNN.N",
                        True,
                        pattern=_AGG_PATTERN,
                    ),
                    tags,
                    # Empty is the same as absent (one point for the whole range).
                    _param(
                        "window",
                        "bucket width: 10s 1m 5m 1h 1d",
                        pattern=f"^({DURATION_PATTERN})?$",
                    ),
                    since,
                    until,
                    _param("group_by", "comma-separated tag keys"),
                ],
                {"200": _answer("the series", "QueryAnswer"), **_NOT_FOUND, **_UNAVAILABLE},
            )
        },
        "/v1/metrics/sketch": {
            "get": _operation(
                "The merged DDSketch of a metric over a range (DDSketch protobuf)",
                [name, tags, since, until],
                {
                    "200": _answer(
                        "the sketch, base64 of a DDSketch protobuf message", "SketchAnswer"
                    ),
                    **_NOT_FOUND,
                    **_UNAVAILABLE,
                },
            )
        },
        "/v1/metrics": {
            "get": _operation(
                "The tenant's metrics with type and tag keys",
                [_param("match", "a glob on the name: * any characters, ? one")],
                {"200": _answer("the metrics", "MetricsAnswer")},
            ),
            "delete": _operation(
                "Delete a metric's series (all, or those with the tags) and history",
                [stored_name, _param("tags", "only the series carrying these tags: k:v,k2:v2")],
                {
                    "200": _answer("what was deleted", "DeletedAnswer"),
                    **_NOT_FOUND,
                    "503": _error("UNAVAILABLE"),
                },
                description="Needs a key with the admin scope (403 without).",
            ),
        },
        "/v1/metrics/tags": {
            "get": _operation(
                "Each tag key of a metric with its values, most series first",
                [stored_name, limit],
                {"200": _answer("the tag keys and values", "TagsAnswer"), **_NOT_FOUND},
            )
        },
        OPENAPI_PATH: _public("This document", {"200": {"description": "OpenAPI 3.0"}}),
        "/healthz": _public("The process is alive", {"200": _answer("alive", "Ok")}),
        "/readyz": _public(
            "Store writable, flushes succeeding, listeners bound",
            {"200": _answer("ready", "Ok"), "503": _error("UNAVAILABLE")},
        ),
        "/ui": _public(
            "The chart page (it asks for an API key)",
            {"200": _html("the page"), "304": {"description": "not modified (If-None-Match)"}},
        ),
        "/ui/": _public(
            "The chart page with a trailing slash", {"308": {"description": "redirect to /ui"}}
        ),
        "/ui/{asset}": {
            "get": {
                "summary": "A script or style sheet of the page",
                "security": [],
                "parameters": [
                    {
                        "name": "asset",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": list(page.ASSETS)},
                    },
                    _param("v", "the content's hash; as the page names it, cached a year"),
                ],
                "responses": {
                    "200": {
                        "description": "the asset",
                        "content": {
                            "text/javascript": {"schema": {"type": "string"}},
                            "text/css": {"schema": {"type": "string"}},
                        },
                    },
                    "304": {"description": "not modified (If-None-Match)"},
                    "404": _error("NOT_FOUND"),
                },
            }
        },
        "/metrics": _public(
            "The daemon's own metrics, Prometheus text format",
            {
                "200": {
                    "description": "metrics",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        ),
    }
