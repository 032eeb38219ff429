"""A sub-application mounted beside /v1 renders its own errors, its routes need their scopes as
the main app's do, and /v1 keeps the one envelope. The sub-app here is the test's own, shaped
the way the Prometheus HTTP API answers errors; it runs mounted on the real app, on a real port,
with the running Gateway's keys."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import ClientSession, web
from aiohttp.typedefs import Handler

from statsd_gateway.api.app import PUBLIC, create_app, declare_routes
from statsd_gateway.errors import GatewayError, InvalidArgument, NotFound
from statsd_gateway.gateway import Gateway
from tests.conftest import KEY, READ_ONLY_KEY, Api
from tests.test_api import assert_error, undeclared_routes

PREFIX = "/api/v1"


@web.middleware
async def prometheus_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors as the Prometheus HTTP API shapes them."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return prometheus_error(NotFound(f"no endpoint at {request.path}"))
    except GatewayError as e:
        return prometheus_error(e)


def prometheus_error(e: GatewayError) -> web.Response:
    body = {"status": "error", "errorType": e.code.lower(), "error": e.message}
    return web.json_response(body, status=e.status)


async def answer(request: web.Request) -> web.Response:
    return web.json_response({"status": "success", "data": 42})


async def bad_query(request: web.Request) -> web.Response:
    raise InvalidArgument("parse error at char 3")


def prometheus_like() -> web.Application:
    sub = web.Application(middlewares=[prometheus_errors])
    declare_routes(
        sub,
        [
            ("GET", "/answer", answer, "read"),
            ("POST", "/write", answer, "write"),
            ("GET", "/query", bad_query, "read"),
            ("GET", "/status/buildinfo", answer, PUBLIC),
        ],
    )
    return sub


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[Api]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        async with ClientSession() as session:
            yield Api(session, f"http://{host}:{port}")
    finally:
        await runner.cleanup()


def assert_prometheus_error(status: int, body: Any, want_status: int, error_type: str) -> None:
    assert status == want_status, body
    assert set(body) == {"status", "errorType", "error"}, body
    assert (body["status"], body["errorType"]) == ("error", error_type), body
    assert isinstance(body["error"], str) and body["error"], body


async def test_a_subapp_renders_its_own_errors_and_v1_keeps_the_envelope(
    gateway: Gateway,
) -> None:
    app = create_app(gateway, max_body_bytes=1024, subapps={PREFIX: prometheus_like()})
    assert undeclared_routes(app) == []
    async with serving(app) as api:
        status, body = await api.request("GET", f"{PREFIX}/answer")
        assert (status, body) == (200, {"status": "success", "data": 42})
        status, body = await api.request("GET", f"{PREFIX}/query")
        assert_prometheus_error(status, body, 400, "invalid_argument")
        assert body["error"] == "parse error at char 3"
        # Auth of its routes, answered in its shape: no key, a wrong one, a missing scope.
        status, body = await api.request("GET", f"{PREFIX}/answer", key=None)
        assert_prometheus_error(status, body, 401, "unauthenticated")
        status, body = await api.request("GET", f"{PREFIX}/answer", key="not-a-key")
        assert_prometheus_error(status, body, 401, "unauthenticated")
        status, body = await api.request("POST", f"{PREFIX}/write", key=READ_ONLY_KEY)
        assert_prometheus_error(status, body, 403, "permission_denied")
        status, body = await api.request("POST", f"{PREFIX}/write", key=KEY)
        assert status == 200, body
        status, body = await api.request("GET", f"{PREFIX}/status/buildinfo", key=None)
        assert status == 200, body  # PUBLIC
        # An unknown path under its prefix: a key first (as under /v1), then its own 404.
        status, body = await api.request("GET", f"{PREFIX}/nope", key=None)
        assert_prometheus_error(status, body, 401, "unauthenticated")
        status, body = await api.request("GET", f"{PREFIX}/nope")
        assert_prometheus_error(status, body, 404, "not_found")
        # The main app's answers are untouched by it.
        status, body = await api.request("GET", "/v1/metrics/nope")
        assert_error(status, body, 404, "NOT_FOUND")
        status, body = await api.request("GET", "/v1/metrics", key=None)
        assert_error(status, body, 401, "UNAUTHENTICATED")
        status, body = await api.request("GET", "/v1/metrics/query", params={"name": "x"})
        assert_error(status, body, 400, "INVALID_ARGUMENT")
        status, body = await api.request("GET", "/healthz", key=None)
        assert (status, body) == (200, {"ok": True})


async def test_a_subapp_route_without_a_scope_is_found_by_the_check_and_refused(
    gateway: Gateway,
) -> None:
    sub = prometheus_like()
    sub.router.add_route("GET", "/undeclared", answer)  # around declare_routes: no scope
    app = create_app(gateway, max_body_bytes=1024, subapps={PREFIX: sub})
    (undeclared,) = undeclared_routes(app)
    assert undeclared.startswith("GET ") and f"{PREFIX}/undeclared" in undeclared
    async with serving(app) as api:
        for key in (None, KEY):  # never open by default, not even to a valid key
            status, body = await api.request("GET", f"{PREFIX}/undeclared", key=key)
            assert_prometheus_error(status, body, 500, "internal")
            assert body["error"] == "internal error"


@pytest.mark.parametrize("prefix", ["/v1", "/v1/prom", "/"])
def test_nothing_is_mounted_where_v1_has_the_one_envelope(gateway: Gateway, prefix: str) -> None:
    with pytest.raises(ValueError, match="/v1 has one envelope"):
        create_app(gateway, max_body_bytes=1024, subapps={prefix: prometheus_like()})


def test_a_subapp_that_cannot_render_its_errors_is_refused(gateway: Gateway) -> None:
    bare = web.Application()  # its 401s and 403s would leave as a bare 500
    declare_routes(bare, [("GET", "/answer", answer, "read")])
    with pytest.raises(ValueError, match=r"'/prom'.*no middlewares"):
        create_app(gateway, max_body_bytes=1024, subapps={"/prom": bare})
