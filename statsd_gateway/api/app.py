"""create_app(): the aiohttp application, its middlewares (errors, auth) and routes.

Every error of every endpoint leaves as the one envelope of errors.py, including aiohttp's own
404/405/413 and any unexpected exception (logged, never shown to the client).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from statsd_gateway.api import connections, handlers
from statsd_gateway.api.auth import PRINCIPAL, KeyRing, Principal
from statsd_gateway.errors import (
    GatewayError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthenticated,
    Unavailable,
    error_envelope,
)
from statsd_gateway.store.sqlite import StoreError

log = logging.getLogger(__name__)

OPENAPI_PATH = "/v1/openapi.json"
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
    except StoreError as e:  # an outage of the store (removed, locked, unreadable): not a bug
        return error_response(Unavailable(f"the store cannot be read: {e}"))
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


def auth_middleware(keyring: Callable[[], KeyRing]) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/v1/") and request.path != OPENAPI_PATH:
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("an Authorization: Bearer <key> header is required")
            key = keyring().lookup(token.strip())
            if key is None:
                raise Unauthenticated("the API key is not valid")
            request[PRINCIPAL] = Principal(key.name, key.tenant, frozenset(key.scopes))
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
    app.router.add_post("/v1/metrics/report", handlers.report)
    app.router.add_post("/v1/metrics/batch", handlers.batch)
    app.router.add_get("/v1/metrics/query", handlers.query)
    app.router.add_get("/v1/metrics/sketch", handlers.export_sketch)
    app.router.add_get("/v1/metrics", handlers.list_metrics)
    app.router.add_delete("/v1/metrics", handlers.delete_metric)
    app.router.add_get("/v1/metrics/tags", handlers.metric_tags)
    app.router.add_get(OPENAPI_PATH, handlers.openapi)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/metrics", handlers.prometheus)
    return app
