"""create_app(): the aiohttp application, its middlewares (errors, auth), routes and sub-apps.

Every error of the main app's endpoints (everything under /v1, the health checks, the scrape)
leaves as the one envelope of errors.py, including aiohttp's own 404/405/413 and any unexpected
exception (logged, never shown to the client).

A sub-application mounted beside /v1 (`subapps`: the Prometheus HTTP API at /api/v1 is the next)
renders its own errors: the main app's envelope and auth middlewares leave its requests alone,
and it must bring its own middlewares (create_app refuses one without), which see all of them
(its 404s and 405s too). Auth is the same for both: every route declares its scope
(`declare_routes`), the sub-app's auth middleware runs inside its own error rendering (so a 401
or 403 is in its shape), and an unknown path under its prefix needs a key as one under /v1 does.
A route served without a declared scope is refused (and fails tests/test_api.py).
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping

from aiohttp import web
from aiohttp.typedefs import Middleware

from statsd_gateway.api import connections, handlers, page
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
# (method, path, handler, scope): scope is read, write, admin, or PUBLIC (no key).
Route = tuple[str, str, Handler, str]


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
# Every route the main app serves and the scope it needs. The auth middleware enforces it;
# tests/test_api.py fails for a route served but not declared.
ROUTES: tuple[Route, ...] = (
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
    # The page holds no data: it asks for a key and calls the API above with it.
    ("GET", "/ui", page.page, PUBLIC),
    ("GET", "/ui/", page.slash, PUBLIC),
    ("GET", "/ui/{asset}", page.asset, PUBLIC),
)
# On the main app: the scope of every route it serves, its sub-apps' included. On a sub-app
# (from declare_routes): its own, merged into the main app's when it is mounted.
ROUTE_SCOPES = web.AppKey("route_scopes", dict[web.AbstractRoute, str])


def declare_routes(app: web.Application, routes: Iterable[Route]) -> None:
    """Adds `routes` to `app`, each with the scope it needs."""
    if ROUTE_SCOPES not in app:
        app[ROUTE_SCOPES] = {}
    scopes = app[ROUTE_SCOPES]
    for method, path, handler, scope in routes:
        scopes[app.router.add_route(method, path, handler)] = scope


def _of_a_subapp(request: web.Request) -> bool:
    """The request matched a route of a mounted sub-app, or a path under its prefix."""
    return len(request.match_info.apps) > 1


def main_app_only(middleware: Middleware) -> Middleware:
    """`middleware` for the main app's requests; a sub-app's pass by it untouched."""

    @web.middleware
    async def only_main(request: web.Request, handler: Handler) -> web.StreamResponse:
        if _of_a_subapp(request):
            return await handler(request)
        return await middleware(request, handler)

    return only_main


def presented_key(header: str) -> str | None:
    """The API key of an Authorization header: `Bearer <key>`, or `Basic` with the key as the
    password (any user name), for clients that can only send basic auth (promtool, a
    Prometheus `remote_read`, a Grafana data source set up that way)."""
    scheme, _, credentials = header.partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":
        return credentials or None
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _, colon, password = decoded.partition(":")
    return password.strip() or None if colon else None


def auth_middleware(
    keyring: Callable[[], KeyRing],
    scopes: Mapping[web.AbstractRoute, str],
    *,
    unmatched_needs_key: Callable[[web.Request], bool],
) -> Middleware:
    """Authenticates every request to a route that is not PUBLIC and checks the route's scope.
    A request that matches no route (aiohttp answers 404/405) is authenticated when
    `unmatched_needs_key` says so (under /v1/, and anywhere under a sub-app's prefix), so that
    an unknown path tells nothing to a caller without a key. A route without a declared scope
    is refused: a route is never open by default."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route
        scope = scopes.get(route)
        matched = request.match_info.http_exception is None
        if scope is None and matched:
            log.error("%s %s declares no scope: refused", request.method, request.path)
            raise GatewayError("internal error")
        if scope == PUBLIC or (scope is None and not unmatched_needs_key(request)):
            return await handler(request)
        token = presented_key(request.headers.get("Authorization", ""))
        if not token:
            raise Unauthenticated("an Authorization: Bearer <key> header is required")
        key = keyring().lookup(token)
        if key is None:
            raise Unauthenticated("the API key is not valid")
        principal = Principal(key.name, key.tenant, frozenset(key.scopes))
        if scope is not None:
            check_scope(principal, scope)
        request[PRINCIPAL] = principal
        return await handler(request)

    return middleware


def create_app(
    gateway: handlers.GatewayServices,
    *,
    max_body_bytes: int,
    subapps: Mapping[str, web.Application] | None = None,
) -> web.Application:
    """The main app, with `subapps` (prefix → an app whose routes were added by
    declare_routes, and whose own middlewares render its errors) mounted beside /v1."""
    scopes: dict[web.AbstractRoute, str] = {}
    keyring = lambda: gateway.keyring  # noqa: E731  # read at each request: reload swaps it
    app = web.Application(
        client_max_size=max_body_bytes,
        middlewares=[
            read_deadline_middleware,
            main_app_only(error_middleware),
            main_app_only(
                auth_middleware(
                    keyring, scopes, unmatched_needs_key=lambda r: r.path.startswith("/v1/")
                )
            ),
        ],
    )
    app[handlers.SERVICES] = gateway
    app[ROUTE_SCOPES] = scopes
    declare_routes(app, ROUTES)
    for prefix, sub in (subapps or {}).items():
        if prefix.rstrip("/") in ("", "/v1") or prefix.startswith("/v1/"):
            raise ValueError(f"a sub-app cannot be mounted at {prefix!r}: /v1 has one envelope")
        if not sub.middlewares:
            # The main app's error middleware skips its requests: the auth middleware's 401s
            # and 403s would leave as a bare 500.
            raise ValueError(
                f"the sub-app at {prefix!r} has no middlewares of its own to render its errors"
            )
        # Innermost: the 401s and 403s are rendered by the sub-app's own middlewares.
        sub.middlewares.append(auth_middleware(keyring, scopes, unmatched_needs_key=lambda r: True))
        sub[handlers.SERVICES] = gateway
        if ROUTE_SCOPES in sub:
            declared: dict[web.AbstractRoute, str] = sub[ROUTE_SCOPES]
            scopes.update(declared)
        app.add_subapp(prefix, sub)
    return app
