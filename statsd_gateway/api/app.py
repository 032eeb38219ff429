"""create_app(): the aiohttp application, its middlewares (errors, auth) and routes.

Every error of every endpoint leaves as the one envelope of errors.py, including aiohttp's own
404/405/413 and any unexpected exception (logged, never shown to the client).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from statsd_gateway.api import connections, handlers
from statsd_gateway.api.auth import PRINCIPAL, KeyRing, Principal, check_scope
from statsd_gateway.api.openapi import OPENAPI_PATH
from statsd_gateway.errors import (
    GatewayError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthenticated,
    error_envelope,
)

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(err: GatewayError, headers: dict[str, str] | None = None) -> web.Response:
    if err.status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": 'Bearer realm="statsd-gateway"'}
    return web.json_response(err.envelope(), status=err.status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except GatewayError as e:
        return error_response(e)
    except web.HTTPRequestEntityTooLarge:
        return error_response(PayloadTooLarge("the request body is too large", "body"))
    except web.HTTPMethodNotAllowed as e:
        allow = ", ".join(sorted(e.allowed_methods))
        return error_response(
            MethodNotAllowed(f"{request.method} is not allowed here; use {allow}"),
            headers={"Allow": allow},
        )
    except web.HTTPNotFound:
        return error_response(NotFound(f"no endpoint at {request.path}"))
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return web.json_response(
            error_envelope("INTERNAL" if e.status >= 500 else "INVALID_ARGUMENT", e.reason),
            status=e.status,
        )
    except ConnectionResetError:
        # The client went away mid-body: nobody is left to answer, and nothing of ours failed.
        connections.body_lost(request)
        return error_response(GatewayError("the connection was lost"))
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        return error_response(GatewayError("internal error"))


@web.middleware
async def read_deadline_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tells the connection when a request's headers are in and when it is answered, so its read
    deadline (http.read_timeout) covers the reading of a request and not its handling."""
    connections.request_started(request)
    try:
        return await handler(request)
    finally:
        connections.request_finished(request)


PUBLIC = "public"
# Every route the app serves and the scope it needs (read, write, admin, or PUBLIC: no key). The
# auth middleware enforces it; tests/test_api.py fails for a route served but not listed here.
ROUTES: tuple[tuple[str, str, Handler, str], ...] = (
    ("POST", "/v1/metrics/report", handlers.report, "write"),
    ("POST", "/v1/metrics/batch", handlers.batch, "write"),
    ("GET", "/v1/metrics/query", handlers.query, "read"),
    ("GET", "/v1/metrics/sketch", handlers.export_sketch, "read"),
    ("GET", "/v1/metrics", handlers.list_metrics, "read"),
    ("DELETE", "/v1/metrics", handlers.delete_metric, "admin"),
    ("GET", "/v1/metrics/tags", handlers.metric_tags, "read"),
    ("GET", OPENAPI_PATH, handlers.openapi, PUBLIC),
    ("GET", "/healthz", handlers.healthz, PUBLIC),
    ("GET", "/readyz", handlers.readyz, PUBLIC),
    ("GET", "/metrics", handlers.prometheus, PUBLIC),
)
ROUTE_SCOPES = web.AppKey("route_scopes", dict[web.AbstractRoute, str])


def auth_middleware(keyring: Callable[[], KeyRing]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Authenticates every request to a route that is not PUBLIC and checks the route's scope.
    A request that matches no route (aiohttp answers 404/405) is authenticated under /v1/ as
    any /v1 request is, so that an unknown path tells nothing to a caller without a key."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        scope = request.app[ROUTE_SCOPES].get(request.match_info.route)
        if scope == PUBLIC or (scope is None and not request.path.startswith("/v1/")):
            return await handler(request)
        header = request.headers.get("Authorization", "")
        auth_scheme, _, token = header.partition(" ")
        if auth_scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("an Authorization: Bearer <key> header is required")
        key = keyring().lookup(token.strip())
        if key is None:
            raise Unauthenticated("the API key is not valid")
        principal = Principal(key.name, key.tenant, frozenset(key.scopes))
        if scope is not None:
            check_scope(principal, scope)
        request[PRINCIPAL] = principal
        return await handler(request)

    return middleware


def create_app(gateway: handlers.GatewayServices, *, max_body_bytes: int) -> web.Application:
    app = web.Application(
        client_max_size=max_body_bytes,
        middlewares=[
            read_deadline_middleware,
            error_middleware,
            auth_middleware(lambda: gateway.keyring),
        ],
    )
    app[handlers.SERVICES] = gateway
    scopes: dict[web.AbstractRoute, str] = {}
    for method, path, handler, scope in ROUTES:
        scopes[app.router.add_route(method, path, handler)] = scope
    app[ROUTE_SCOPES] = scopes
    return app
