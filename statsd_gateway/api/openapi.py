"""The OpenAPI 3.0 description of the HTTP API, served at GET /v1/openapi.json (no auth)."""

from __future__ import annotations

from typing import Any

from statsd_gateway import __version__
from statsd_gateway.errors import GatewayError
from statsd_gateway.model import SAMPLE_RATE_MIN

_ERROR = {"$ref": "#/components/schemas/Error"}


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


_COMMON_ERRORS = {
    "400": _error_response("INVALID_ARGUMENT"),
    "401": {
        **_error_response("UNAUTHENTICATED"),
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    },
    "403": _error_response("PERMISSION_DENIED"),
    "500": _error_response("INTERNAL"),
}
_WRITE_ERRORS = {
    **_COMMON_ERRORS,
    "409": _error_response("TYPE_CONFLICT or IDEMPOTENCY_KEY_REUSED"),
    "413": _error_response("PAYLOAD_TOO_LARGE"),
    "429": _error_response("CARDINALITY_LIMIT"),
}
_IDEMPOTENCY_HEADER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
}
# The body-field twin of the header; null is the same as absent.
_IDEMPOTENCY_FIELD = {"type": "string", "minLength": 1, "maxLength": 200, "nullable": True}
# Present, and true, only on the recorded answer of an idempotent request replayed.
_REPLAYED_FIELD = {"type": "boolean", "enum": [True]}
_REPLAYED = {"Idempotent-Replayed": {"schema": {"type": "string", "enum": ["true"]}}}


def _query_param(
    name: str, description: str, required: bool = False, **schema: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": {"type": "string", **schema},
    }


# At least one letter or digit (Python's [^\\W_]); cleaned as StatsD names are (docs/API.md).
_NAME_PATTERN = "[^\\W_]"
_AGG_PATTERN = "^(count|sum|avg|min|max|last|rate|distinct|p(100|[0-9]{1,2}(\\.[0-9]+)?))$"
# Empty is the same as absent (one point for the whole range).
_DURATION_PATTERN = "^([0-9]+(\\.[0-9]+)?(ms|s|m|h|d))?$"
_TYPES = ["counter", "gauge", "timing", "histogram", "distribution", "set"]
_DELETED_ANSWER: dict[str, Any] = {
    "type": "object",
    "required": ["ok", "name", "tags", "deleted"],
    "properties": {
        "ok": {"type": "boolean"},
        "name": {"type": "string"},
        "tags": {"type": "object", "additionalProperties": {"type": "string"}},
        "deleted": {
            "type": "object",
            "required": ["series", "stored_series", "rows", "in_memory"],
            "properties": {
                k: {"type": "integer", "minimum": 0}
                for k in ("series", "stored_series", "rows", "in_memory")
            },
        },
    },
}
_TAGS_ANSWER: dict[str, Any] = {
    "type": "object",
    "required": ["ok", "name", "tags"],
    "properties": {
        "ok": {"type": "boolean"},
        "name": {"type": "string"},
        "tags": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "values", "truncated"],
                "properties": {
                    "key": {"type": "string"},
                    "values": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["value", "series"],
                            "properties": {
                                "value": {"type": "string"},
                                "series": {"type": "integer", "minimum": 1},
                            },
                        },
                    },
                    "truncated": {"type": "boolean"},
                },
            },
        },
    },
}

_POINT: dict[str, Any] = {
    "type": "object",
    "required": ["name", "value"],
    "additionalProperties": False,
    "properties": {
        # At most 200 characters once cleaned, which no JSON schema can say (a longer name
        # can clean down to fit): not a maxLength.
        "name": {"type": "string", "minLength": 1, "pattern": _NAME_PATTERN},
        "value": {"oneOf": [{"type": "number"}, {"type": "string", "minLength": 1}]},
        "type": {
            "type": "string",
            "enum": _TYPES,
            "default": "gauge",
        },
        "tags": {
            "type": "object",
            "maxProperties": 32,
            "additionalProperties": {"type": "string", "maxLength": 200},
        },
        # null is the same as absent: the server's receive time.
        "timestamp": {
            "oneOf": [
                {"type": "number", "nullable": True},
                {"type": "string", "format": "date-time"},
            ]
        },
        "sample_rate": {"type": "number", "minimum": SAMPLE_RATE_MIN, "maximum": 1},
    },
}

_POINTS_LIST = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "timestamp": {"type": "number"},
            "value": {"type": "number", "nullable": True},
        },
        "required": ["timestamp", "value"],
    },
}


def openapi_spec() -> dict[str, Any]:
    codes = sorted({c.code for c in _all_errors()})
    ok: dict[str, Any] = {
        "type": "object",
        "required": ["ok"],
        "properties": {"ok": {"type": "boolean"}},
    }
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
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["ok", "error"],
                    "properties": {
                        "ok": {"type": "boolean", "enum": [False]},
                        "error": {
                            "type": "object",
                            "required": ["code", "message", "field"],
                            "properties": {
                                "code": {"type": "string", "enum": codes},
                                "message": {"type": "string"},
                                "field": {"type": "string", "nullable": True},
                            },
                        },
                    },
                },
                "MetricPoint": _POINT,
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/metrics/report": {
                "post": {
                    "summary": "Report one point",
                    "parameters": [_IDEMPOTENCY_HEADER],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    **_POINT,
                                    "properties": {
                                        **_POINT["properties"],
                                        "idempotency_key": _IDEMPOTENCY_FIELD,
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "accepted",
                            "headers": _REPLAYED,
                            "content": {
                                "application/json": {
                                    "schema": {
                                        **ok,
                                        "properties": {
                                            **ok["properties"],
                                            "replayed": _REPLAYED_FIELD,
                                        },
                                    }
                                }
                            },
                        },
                        **_WRITE_ERRORS,
                    },
                }
            },
            "/v1/metrics/batch": {
                "post": {
                    "summary": "Report many points; valid ones are kept, invalid ones reported",
                    "parameters": [_IDEMPOTENCY_HEADER],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["points"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "points": {
                                            "type": "array",
                                            "maxItems": 10000,
                                            "items": {"$ref": "#/components/schemas/MetricPoint"},
                                        },
                                        "idempotency_key": _IDEMPOTENCY_FIELD,
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "the batch was processed",
                            "headers": _REPLAYED,
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["ok", "accepted", "rejected", "errors"],
                                        "properties": {
                                            "ok": {"type": "boolean"},
                                            "accepted": {"type": "integer"},
                                            "rejected": {"type": "integer"},
                                            "replayed": _REPLAYED_FIELD,
                                            "errors": {
                                                "type": "array",
                                                "items": {
                                                    "type": "object",
                                                    "required": ["index", "code", "message"],
                                                    "properties": {
                                                        "index": {"type": "integer"},
                                                        "code": {"type": "string"},
                                                        "message": {"type": "string"},
                                                        "field": {
                                                            "type": "string",
                                                            "nullable": True,
                                                        },
                                                    },
                                                },
                                            },
                                        },
                                    }
                                }
                            },
                        },
                        **_WRITE_ERRORS,
                    },
                }
            },
            "/v1/metrics/query": {
                "get": {
                    "summary": "A time series of one aggregation of one metric",
                    "parameters": [
                        _query_param("name", "metric name", True, pattern=_NAME_PATTERN),
                        _query_param(
                            "agg",
                            "count sum avg min max rate last distinct, or pNN / pNN.N",
                            True,
                            pattern=_AGG_PATTERN,
                        ),
                        _query_param("tags", "filter: k:v,k2:v2 or a JSON object"),
                        _query_param(
                            "window", "bucket width: 10s 1m 5m 1h 1d", pattern=_DURATION_PATTERN
                        ),
                        _query_param("since", "unix seconds, RFC 3339, now, or -15m"),
                        _query_param("until", "unix seconds, RFC 3339, now, or -15m"),
                        _query_param("group_by", "comma-separated tag keys"),
                    ],
                    "responses": {
                        "200": {
                            "description": "the series",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["ok", "name", "type", "agg", "since", "until"],
                                        "properties": {
                                            "ok": {"type": "boolean"},
                                            "name": {"type": "string"},
                                            "type": {"type": "string", "enum": _TYPES},
                                            "agg": {"type": "string"},
                                            "tags": {"type": "object"},
                                            "window": {"type": "string", "nullable": True},
                                            "since": {"type": "number"},
                                            "until": {"type": "number"},
                                            "points": _POINTS_LIST,
                                            "series": {
                                                "type": "array",
                                                "items": {
                                                    "type": "object",
                                                    "properties": {
                                                        "tags": {"type": "object"},
                                                        "points": _POINTS_LIST,
                                                    },
                                                },
                                            },
                                        },
                                    }
                                }
                            },
                        },
                        **_COMMON_ERRORS,
                        "404": _error_response("METRIC_NOT_FOUND"),
                    },
                }
            },
            "/v1/metrics/sketch": {
                "get": {
                    "summary": "The merged DDSketch of a metric over a range (DDSketch protobuf)",
                    "parameters": [
                        _query_param("name", "metric name", True, pattern=_NAME_PATTERN),
                        _query_param("tags", "filter: k:v,k2:v2 or a JSON object"),
                        _query_param("since", "unix seconds, RFC 3339, now, or -15m"),
                        _query_param("until", "unix seconds, RFC 3339, now, or -15m"),
                    ],
                    "responses": {
                        "200": {
                            "description": "the sketch, base64 of a DDSketch protobuf message",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["ok", "name", "format", "sketch", "count"],
                                        "properties": {
                                            "ok": {"type": "boolean"},
                                            "name": {"type": "string"},
                                            "type": {"type": "string"},
                                            "tags": {"type": "object"},
                                            "since": {"type": "number"},
                                            "until": {"type": "number"},
                                            "count": {"type": "number", "nullable": True},
                                            "sum": {"type": "number", "nullable": True},
                                            "min": {"type": "number", "nullable": True},
                                            "max": {"type": "number", "nullable": True},
                                            "format": {
                                                "type": "string",
                                                "enum": ["ddsketch-proto"],
                                            },
                                            "relative_accuracy": {"type": "number"},
                                            "sketch": {"type": "string", "format": "byte"},
                                        },
                                    }
                                }
                            },
                        },
                        **_COMMON_ERRORS,
                        "404": _error_response("METRIC_NOT_FOUND"),
                    },
                }
            },
            "/v1/metrics": {
                "get": {
                    "summary": "The tenant's metrics with type and tag keys",
                    "parameters": [
                        _query_param("match", "a glob on the name: * any characters, ? one"),
                    ],
                    "responses": {
                        "200": {
                            "description": "the metrics",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["ok", "metrics"],
                                        "properties": {
                                            "ok": {"type": "boolean"},
                                            "metrics": {
                                                "type": "array",
                                                "items": {
                                                    "type": "object",
                                                    "required": ["name", "type", "tag_keys"],
                                                    "properties": {
                                                        "name": {"type": "string"},
                                                        "type": {"type": "string", "enum": _TYPES},
                                                        "tag_keys": {
                                                            "type": "array",
                                                            "items": {"type": "string"},
                                                        },
                                                    },
                                                },
                                            },
                                        },
                                    }
                                }
                            },
                        },
                        **_COMMON_ERRORS,
                    },
                },
                "delete": {
                    "summary": "Delete a metric's series (all, or those with the tags) and history",
                    "description": "Needs a key with the admin scope (403 without).",
                    "parameters": [
                        _query_param("name", "the metric", required=True, minLength=1),
                        _query_param("tags", "only the series carrying these tags: k:v,k2:v2"),
                    ],
                    "responses": {
                        "200": {
                            "description": "what was deleted",
                            "content": {"application/json": {"schema": _DELETED_ANSWER}},
                        },
                        "404": _error_response("METRIC_NOT_FOUND"),
                        "503": _error_response("UNAVAILABLE"),
                        **_COMMON_ERRORS,
                    },
                },
            },
            "/v1/metrics/tags": {
                "get": {
                    "summary": "Each tag key of a metric with its values, most series first",
                    "parameters": [
                        _query_param("name", "the metric", required=True, minLength=1),
                        _query_param(
                            "limit", "values per key (default 100)", pattern="^[0-9]{1,6}$"
                        ),
                    ],
                    "responses": {
                        "200": {
                            "description": "the tag keys and values",
                            "content": {"application/json": {"schema": _TAGS_ANSWER}},
                        },
                        "404": _error_response("METRIC_NOT_FOUND"),
                        **_COMMON_ERRORS,
                    },
                }
            },
            "/v1/openapi.json": {
                "get": {
                    "summary": "This document",
                    "security": [],
                    "responses": {"200": {"description": "OpenAPI 3.0"}},
                }
            },
            "/healthz": {
                "get": {
                    "summary": "The process is alive",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "alive",
                            "content": {"application/json": {"schema": ok}},
                        }
                    },
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Store writable, flushes succeeding, listeners bound",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "ready",
                            "content": {"application/json": {"schema": ok}},
                        },
                        "503": _error_response("UNAVAILABLE"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "The daemon's own metrics, Prometheus text format",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "metrics",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        },
    }


def _all_errors() -> list[type[GatewayError]]:
    out: list[type[GatewayError]] = []
    todo: list[type[GatewayError]] = [GatewayError]
    while todo:
        c = todo.pop()
        out.append(c)
        todo.extend(c.__subclasses__())
    return out
