"""The OpenAPI description of the Prometheus HTTP API the gateway serves under /api/v1
(api/prometheus.py): its paths, parameters and answers, in the document /v1/openapi.json
serves, beside /v1's. Its answers are Prometheus' shapes, not /v1's envelope."""

from __future__ import annotations

from typing import Any

PREFIX = "/api/v1"
# The errorType of each status the API answers with (docs/PROMETHEUS.md); a 503 is "timeout"
# where a query ran past query.timeout, "unavailable" where the store is down.
ERROR_TYPES = {
    400: "bad_data", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "bad_data",
    413: "bad_data", 422: "execution", 500: "internal", 503: "unavailable",
}  # fmt: skip
PROMETHEUS_SCHEMAS: dict[str, Any] = {
    "PrometheusSuccess": {
        "type": "object",
        "required": ["status", "data"],
        "properties": {"status": {"type": "string", "enum": ["success"]}, "data": {}},
    },
    "PrometheusError": {
        "type": "object",
        "required": ["status", "errorType", "error"],
        "properties": {
            "status": {"type": "string", "enum": ["error"]},
            "errorType": {
                "type": "string",
                "enum": sorted({*ERROR_TYPES.values(), "timeout"}),
            },
            "error": {"type": "string"},
        },
    },
}
_REF = "#/components/schemas/{name}"
_TIME = "Unix seconds or RFC 3339"


def _json(component: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": _REF.format(name=component)}}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json("PrometheusError")}


_ERRORS = {
    "400": _error("bad_data: a parameter or the query's syntax"),
    "401": _error("unauthorized: no key, or not a valid one")
    | {"headers": {"WWW-Authenticate": {"schema": {"type": "string"}}}},
    "403": _error("forbidden: the key lacks the read scope"),
    "500": _error("internal"),
}
_EVALUATION_ERRORS = {
    **_ERRORS,
    "422": _error("execution: a construct the gateway does not evaluate"),
    "503": _error("timeout (past query.timeout) or unavailable (the store)"),
}


def _param(name: str, description: str, required: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": {"type": "string"},
    }


def _form(params: list[dict[str, Any]]) -> dict[str, Any]:
    """The same parameters as a form body (what Grafana POSTs)."""
    schema = {
        "type": "object",
        "properties": {p["name"]: {"type": "string"} for p in params},
        "required": [p["name"] for p in params if p["required"]],
        "additionalProperties": False,
    }
    required = bool(schema["required"])
    if not required:
        del schema["required"]  # every field optional: an empty form (or no body) is valid
    return {
        "required": required,
        "content": {"application/x-www-form-urlencoded": {"schema": schema}},
    }


def _operation(
    summary: str, params: list[dict[str, Any]], errors: dict[str, Any], *, form: bool = False
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "summary": summary,
        "parameters": [] if form else params,
        "responses": {"200": {"description": "success", "content": _json("PrometheusSuccess")}}
        | errors,
    }
    if form:
        out["requestBody"] = _form(params)
    return out


def _get_and_post(summary: str, params: list[dict[str, Any]], errors: dict[str, Any]) -> Any:
    return {
        "get": _operation(summary, params, errors),
        "post": _operation(summary + " (form body)", params, errors, form=True),
    }


def prometheus_paths(prefix: str = PREFIX) -> dict[str, Any]:
    query = _param("query", "a PromQL expression", True)
    timeout, limit = _param("timeout", "accepted, unused"), _param("limit", "most results")
    stats = _param("stats", "accepted, unused")
    match = {
        "name": "match[]",
        "in": "query",
        "required": False,
        # Repeatable (match[]=a&match[]=b); a query string's value is a string either way.
        "description": "a series selector; repeat the parameter for more",
        "schema": {"type": "string"},
    }
    start, end = _param("start", _TIME), _param("end", _TIME)
    instant = [query, _param("time", _TIME + "; default now"), timeout, limit, stats]
    ranged = [
        query, _param("start", _TIME, True), _param("end", _TIME, True),
        _param("step", "seconds or a duration (15s, 1m)", True), timeout, limit, stats,
    ]  # fmt: skip
    label_name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        f"{prefix}/query": _get_and_post("A PromQL query at one time", instant, _EVALUATION_ERRORS),
        f"{prefix}/query_range": _get_and_post(
            "A PromQL query at every step of a range", ranged, _EVALUATION_ERRORS
        ),
        f"{prefix}/labels": {
            "get": _operation("Label names", [match, start, end, limit], _ERRORS),
            "post": _operation("Label names (form body)", [], _ERRORS)
            | {"requestBody": _form([start, end, limit])},
        },
        f"{prefix}/label/{{name}}/values": {
            "get": _operation("A label's values", [label_name, match, start, end, limit], _ERRORS)
        },
        f"{prefix}/series": {
            "get": _operation(
                "The series selectors select",
                [match | {"required": True}, start, end, limit],
                _ERRORS,
            ),
            "post": _operation("The series selectors select (form body)", [], _ERRORS)
            | {"requestBody": _form([start, end, limit])},
        },
        f"{prefix}/metadata": {
            "get": _operation(
                "Each metric's type",
                [_param("metric", "one metric"), limit, _param("limit_per_metric", "unused")],
                _ERRORS,
            )
        },
        f"{prefix}/status/buildinfo": {
            "get": _operation("The Prometheus version this API answers like", [], _ERRORS)
        },
    }
