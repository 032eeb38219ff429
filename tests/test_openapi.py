"""The OpenAPI document against the real server: schemathesis fuzzes every documented operation.

A Gateway runs on 127.0.0.1:0 in a thread with its own event loop (module-scoped), so the
synchronous schemathesis calls never share a loop with pytest-asyncio. Every request carries a
valid Bearer key (schemathesis' `ignored_auth` check also replays some without it and with a bad
one); every response must be a non-5xx, documented status with a documented content type, headers
and body, errors in the one Error envelope of DESIGN.md §4 with the code that matches the status.

The run is bounded and reproducible: a fixed seed, derandomized Hypothesis, no example database,
at most MAX_EXAMPLES generated cases per operation in the fuzzing phase, plus schemathesis'
deterministic coverage phase (boundary values, missing/extra parts, undeclared methods).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
import schemathesis
from schemathesis.config import SchemathesisConfig

from statsd_gateway.api.app import OPENAPI_PATH
from statsd_gateway.api.openapi import openapi_spec
from statsd_gateway.api.openapi_prometheus import ERROR_TYPES
from statsd_gateway.api.openapi_prometheus import PREFIX as PROMETHEUS_PREFIX
from statsd_gateway.config import Config
from statsd_gateway.gateway import Gateway
from statsd_gateway.idempotency import KEY_MAX
from statsd_gateway.model import SAMPLE_RATE_MIN, TAG_VALUE_MAX, TAGS_MAX
from tests.conftest import KEY, ManualClock, make_config

T = TypeVar("T")
MAX_EXAMPLES = 50
SEED = 20251126
BATCH = "/v1/metrics/batch"

CONFIG = SchemathesisConfig.from_dict(
    {
        "seed": SEED,
        "generation": {
            "mode": "all",  # schema-valid and schema-violating requests
            "max-examples": MAX_EXAMPLES,
            "deterministic": True,
            "database": "none",
        },
        "phases": {"stateful": {"enabled": False}},
        "checks": {
            # A schema-valid point can still be refused by rules a JSON schema cannot say (a
            # timestamp older than the finest tier's retention, a second type for a known name):
            # documented 4xx answers, held to every other check.
            "positive_data_acceptance": {"enabled": False},
            # Checked by test_undeclared_methods_are_refused instead: a failure in schemathesis'
            # coverage phase ends an operation's test before its fuzzing phase runs.
            "unsupported_method": {"enabled": False},
        },
        "operations": [
            {
                # DESIGN.md §4: a batch keeps its valid points and reports the invalid ones in a
                # 200, so a schema-violating *point* is not a rejected request.
                # batch_counts_add_up() checks that 200 instead.
                "include-path": BATCH,
                "checks": {"negative_data_rejection": {"enabled": False}},
            }
        ],
    }
)

# Only schemathesis' coverage phase, which sends every undeclared method (TRACE, PUT, DELETE, …)
# to every path: each must be refused with 405 and an `Allow` header (RFC 9110 §15.5.6).
METHODS_CONFIG = SchemathesisConfig.from_dict(
    {
        "seed": SEED,
        "generation": {"mode": "negative", "deterministic": True, "database": "none"},
        "phases": {
            "examples": {"enabled": False},
            "fuzzing": {"enabled": False},
            "stateful": {"enabled": False},
            "coverage": {"enabled": True},
        },
    }
)

# DESIGN.md §4 (plus NOT_FOUND / METHOD_NOT_ALLOWED of errors.py for unknown paths and methods).
CODE_STATUS = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "METRIC_NOT_FOUND": 404,
    "METHOD_NOT_ALLOWED": 405,
    "TYPE_CONFLICT": 409,
    "IDEMPOTENCY_KEY_REUSED": 409,
    "PAYLOAD_TOO_LARGE": 413,
    "CARDINALITY_LIMIT": 429,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
}


def error_code_matches_status(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every error is the envelope, with the UPPER_SNAKE code DESIGN.md §4 pairs with its status;
    a 401 says `WWW-Authenticate: Bearer`."""
    if response.status_code < 400:
        return None
    body = json.loads(response.content)
    if case.operation.path.startswith(PROMETHEUS_PREFIX):  # the Prometheus API's own shape
        assert body["status"] == "error", body
        kind = body["errorType"]
        assert ERROR_TYPES[response.status_code] == kind or (kind, response.status_code) == (
            "timeout",
            503,
        ), body
        return True
    assert body["ok"] is False, body
    code = body["error"]["code"]
    assert CODE_STATUS.get(code) == response.status_code, (
        f"{response.status_code} answered with error code {code!r}"
    )
    if response.status_code == 401:
        challenge = response.headers.get("www-authenticate", [""])[0]
        assert challenge.lower().startswith("bearer"), response.headers
    return True


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(ctx: Any, response: Any, case: Any) -> bool | None:
    """JSON out (DESIGN.md §4): NaN and ±Infinity, which Python's json writes and reads, are not
    JSON (RFC 8259) and break every other client."""
    if not response.headers.get("content-type", [""])[0].startswith("application/json"):
        return None
    try:
        json.loads(response.content, parse_constant=_no_constant)
    except ValueError as e:
        raise AssertionError(f"the body is not strict JSON: {e}") from None
    return True


def batch_counts_add_up(ctx: Any, response: Any, case: Any) -> bool | None:
    """DESIGN.md §4: `{"ok": <rejected == 0>, "accepted", "rejected", "errors": [{"index"…}]}`."""
    if case.operation.path != BATCH or response.status_code != 200:
        return None
    body = json.loads(response.content)
    points = case.body["points"]
    indexes = [e["index"] for e in body["errors"]]
    assert body["accepted"] + body["rejected"] == len(points), body
    assert body["rejected"] == len(body["errors"]), body
    assert body["ok"] is (body["rejected"] == 0), body
    assert indexes == sorted(indexes), body
    assert all(0 <= i < len(points) for i in indexes), body
    return True


class ThreadedGateway:
    """A Gateway on its own event loop in a daemon thread; start()/stop() block until done."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="gateway", daemon=True)
        self.gateway: Gateway | None = None

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def start(self) -> Gateway:
        self.thread.start()

        async def start() -> Gateway:
            gw = Gateway(self.config, clock=ManualClock(), flush_on_ticks=False)
            await gw.start()
            return gw

        self.gateway = self._run(start())
        return self.gateway

    def stop(self) -> None:
        try:
            if self.gateway is not None:
                self._run(self.gateway.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=30)
            self.loop.close()


@pytest.fixture(scope="module")
def live_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    runner = ThreadedGateway(make_config(Path(tmp_path_factory.mktemp("openapi"))))
    gw = runner.start()
    try:
        yield gw
    finally:
        runner.stop()


@pytest.fixture(scope="module")
def base_url(live_gateway: Gateway) -> str:
    assert live_gateway.http_address is not None
    host, port = live_gateway.http_address
    return f"http://{host}:{port}"


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


# Built from the function the server serves the document with (test_served_document_is_the_spec
# checks that the served bytes decode to the same), so pytest collects one test per operation.
schema = schemathesis.openapi.from_dict(openapi_spec(), config=CONFIG)
methods_schema = schemathesis.openapi.from_dict(openapi_spec(), config=METHODS_CONFIG)


def spread_idempotency_keys(case: Any) -> None:
    """Hypothesis reuses a few short idempotency keys ("0") across bodies, and every such request
    would be a 409 IDEMPOTENCY_KEY_REUSED answered before its points are looked at. A valid key is
    suffixed with a digest of the rest of the body, so a key is reused only with the same body (a
    replay, which exercises `Idempotent-Replayed`) and the points are validated. Invalid keys
    (empty, too long, not a string) and a header/body mismatch are left as generated."""
    if not isinstance(case.body, dict):
        return
    rest = {k: v for k, v in case.body.items() if k != "idempotency_key"}
    digest = hashlib.sha256(json.dumps(rest, sort_keys=True, default=repr).encode()).hexdigest()
    suffix = "~" + digest[:8]

    def spread(key: Any) -> Any:
        ok = isinstance(key, str) and 0 < len(key) <= 200 - len(suffix)
        return key + suffix if ok else key

    # New objects, not edits: schemathesis may send the same generated body again.
    if "idempotency_key" in case.body:
        case.body = {**case.body, "idempotency_key": spread(case.body["idempotency_key"])}
    if case.headers:
        case.headers = {
            k: spread(v) if k.lower() == "idempotency-key" else v for k, v in case.headers.items()
        }


def send_empty_parameters(case: Any) -> None:
    """requests sends nothing for a query parameter whose value is an empty list or None, so a
    case that claims to violate the schema with an extra such parameter would reach the server
    without it: send each as an empty value instead, so the request is the one it claims."""
    if case.query:
        case.query = {k: "" if v is None or v == [] else v for k, v in case.query.items()}


@schema.parametrize()
def test_every_operation_conforms(case: Any, base_url: str, http: requests.Session) -> None:
    spread_idempotency_keys(case)
    send_empty_parameters(case)
    case.call_and_validate(
        base_url=base_url,
        session=http,
        headers={"Authorization": f"Bearer {KEY}"},
        additional_checks=[error_code_matches_status, strict_json, batch_counts_add_up],
        timeout=10,
    )


@methods_schema.parametrize()
def test_undeclared_methods_are_refused(case: Any, base_url: str, http: requests.Session) -> None:
    if case.method.upper() == case.operation.method.upper():
        return  # the coverage phase's other cases; test_every_operation_conforms sends those
    case.call_and_validate(
        base_url=base_url,
        session=http,
        headers={"Authorization": f"Bearer {KEY}"},
        checks=[
            schemathesis.checks.unsupported_method,
            schemathesis.checks.not_a_server_error,
        ],
        additional_checks=[error_code_matches_status, strict_json],
        timeout=10,
    )


BIG = 10**400  # a JSON integer no float holds; json.loads() gives a Python int
EDGE_CASES = {
    "report-value-huge-int": ("POST", "/v1/metrics/report", None, {"name": "e.v", "value": BIG}),
    "report-timestamp-huge-int": (
        "POST",
        "/v1/metrics/report",
        None,
        {"name": "e.t", "value": 1, "timestamp": BIG},
    ),
    "batch-value-huge-int": (
        "POST",
        BATCH,
        None,
        {"points": [{"name": "e.v", "value": BIG}, {"name": "e.ok", "value": 1}]},
    ),
    "query-window-overflows": (
        "GET",
        "/v1/metrics/query",
        {"name": "0", "agg": "count", "window": "9" * 400 + "d"},
        None,
    ),
    "query-since-overflows": (
        "GET",
        "/v1/metrics/query",
        {"name": "0", "agg": "count", "since": "-" + "9" * 400 + "d"},
        None,
    ),
}


@pytest.mark.parametrize("label", list(EDGE_CASES))
def test_number_edge_cases_conform(label: str, base_url: str, http: requests.Session) -> None:
    """Schema-valid requests with numbers past a float's range (found by probing what the fuzzer
    does not reach): each must be answered like any other request, never with a 5xx."""
    method, path, query, body = EDGE_CASES[label]
    http.post(  # the metric the queries name, so they reach the query engine
        base_url + "/v1/metrics/report",
        json={"name": "0", "value": 1},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=10,
    )
    kwargs: dict[str, Any] = {"query": query} if query is not None else {"body": body}
    case = schema[path][method].Case(media_type="application/json" if body else None, **kwargs)
    case.call_and_validate(
        base_url=base_url,
        session=http,
        headers={"Authorization": f"Bearer {KEY}"},
        additional_checks=[error_code_matches_status, strict_json, batch_counts_add_up],
        timeout=10,
    )


def test_served_document_is_the_spec(base_url: str, http: requests.Session) -> None:
    r = http.get(base_url + OPENAPI_PATH, timeout=10)  # no Authorization: it needs none
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")
    doc = r.json()
    assert doc == openapi_spec()
    assert doc["openapi"].startswith("3.0.")


# The document alone, no server: the same in both passes, skipped in the pure-Python one
# (tests/conftest.py).
@pytest.mark.same_in_both_passes
def test_operations_that_reach_the_store_or_the_log_declare_503() -> None:
    """Writes (the log or the store down), queries and the sketch export (the store down, a
    read past query.timeout) and the admin delete can answer 503 UNAVAILABLE."""
    paths = openapi_spec()["paths"]
    for path, method in (
        ("/v1/metrics/report", "post"),
        ("/v1/metrics/batch", "post"),
        ("/v1/metrics/query", "get"),
        ("/v1/metrics/sketch", "get"),
        ("/v1/metrics", "delete"),
    ):
        assert "503" in paths[path][method]["responses"], (path, method)


def test_document_lists_every_route(
    live_gateway: Gateway, base_url: str, http: requests.Session
) -> None:
    runner = live_gateway._runner
    assert runner is not None
    registered = set()
    for route in runner.app.router.routes():
        if route.method == "HEAD":  # add_get() registers a HEAD twin of every GET
            continue
        assert route.resource is not None
        info = route.resource.get_info()
        path = info.get("path") or info.get("formatter")
        assert path, route
        registered.add((route.method.lower(), path))
    doc = http.get(base_url + OPENAPI_PATH, timeout=10).json()
    documented = {(method, path) for path, item in doc["paths"].items() for method in item}
    assert registered == documented


def _schema_nodes(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _schema_nodes(v)
    elif isinstance(node, list):
        for v in node:
            yield from _schema_nodes(v)


@pytest.mark.same_in_both_passes
def test_document_speaks_openapi_30() -> None:
    """The schemas are generated as JSON Schema 2020-12; OpenAPI 3.0 has its own forms of null,
    exclusive bounds and references, which a 3.0 validator would otherwise read wrongly."""
    for node in _schema_nodes(openapi_spec()["components"]["schemas"]):
        assert node.get("type") != "null", node
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            assert isinstance(node.get(bound, True), bool), node
        assert "propertyNames" not in node and "$defs" not in node, node
        assert node.get("required") != [], node
        assert "$ref" not in node or len(node) == 1, node
        if node.get("nullable"):
            assert "type" in node, node


@pytest.mark.same_in_both_passes
def test_limits_are_the_definitions() -> None:
    """The document states the limits validation enforces: they come from the same Structs."""
    schemas = openapi_spec(max_batch_points=7)["components"]["schemas"]
    point = schemas["MetricPoint"]["properties"]
    assert point["tags"]["maxProperties"] == TAGS_MAX
    assert point["tags"]["additionalProperties"]["maxLength"] == TAG_VALUE_MAX
    assert point["sample_rate"]["minimum"] == SAMPLE_RATE_MIN
    assert schemas["BatchBody"]["properties"]["points"]["maxItems"] == 7
    assert schemas["ReportBody"]["properties"]["idempotency_key"]["maxLength"] == KEY_MAX
