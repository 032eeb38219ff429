"""The HTTP connections under the aiohttp app: requests that are malformed, trickled or cut short.

None of these needs an API key, so any client can send them as fast as it likes. Each is counted
by reason in `statsd_gateway_http_bad_requests_total{reason}` and logged at WARNING, at most one
line per reason a minute, never with a traceback:

- `line_too_long`, `bad_request_line`, `bad_url`, `bad_body`, `malformed`: aiohttp's parser
  refused the bytes (aiohttp answers 400 and closes). aiohttp logs these at ERROR with a
  traceback through the `logger` it is given; `AiohttpServerLog` is that logger.
- `client_disconnected`: the client closed the connection before its body was complete.
- `read_timeout`: a request's headers and body did not all arrive within `http.read_timeout` of
  its first byte; the connection is closed without an answer (a client trickling bytes).
  `GuardedRequestHandler` keeps that deadline; `GuardedTCPSite` makes its connections.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import Counter
from collections.abc import Callable, MutableMapping
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import (
    BadStatusLine,
    HttpProcessingError,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)

from statsd_gateway.telemetry import Telemetry

log = logging.getLogger("statsd_gateway.http")

LOG_INTERVAL = 60.0  # seconds between two log lines of one reason
_DETAIL_CHARS = 160


def bad_request_reason(exc: object) -> str | None:
    """The reason a parse error of aiohttp's is counted under; None for anything else."""
    if isinstance(exc, LineTooLong):
        return "line_too_long"
    if isinstance(exc, BadStatusLine):  # also BadHttpMethod: bytes after a body land here
        return "bad_request_line"
    if isinstance(exc, InvalidURLError):
        return "bad_url"
    if isinstance(exc, PayloadEncodingError):
        return "bad_body"
    if isinstance(exc, HttpProcessingError):
        return "malformed"
    return None


class BadRequests:
    """Counts bad requests by reason and logs one WARNING per reason per `interval` seconds; the
    line says how many of that reason were not logged since the previous one."""

    def __init__(
        self,
        telemetry: Telemetry,
        *,
        interval: float = LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.telemetry = telemetry
        self.interval = interval
        self.clock = clock
        self._logged_at: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()

    def record(self, reason: str, peer: object, detail: str) -> None:
        self.telemetry.http_bad_requests[reason] += 1
        now = self.clock()
        last = self._logged_at.get(reason)
        if last is not None and now - last < self.interval:
            self._unlogged[reason] += 1
            return
        self._logged_at[reason] = now
        more = self._unlogged.pop(reason, 0)
        detail = " ".join(detail.split())[:_DETAIL_CHARS]
        suffix = f" ({more} more not logged)" if more else ""
        log.warning("bad request from %s: %s: %s%s", peer, reason, detail, suffix)


class AiohttpServerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The `logger` aiohttp's RequestHandler is given: its parse errors go to BadRequests (it
    logs them at ERROR with a traceback, the first request's bad method at DEBUG); everything
    else goes to the `aiohttp.server` logger unchanged."""

    def __init__(self, bad_requests: BadRequests) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self.bad_requests = bad_requests

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        reason = bad_request_reason(exc)
        if reason is None:
            super().log(level, msg, *args, **kwargs)
            return
        assert isinstance(exc, HttpProcessingError)
        peer = args[0] if args else "?"
        self.bad_requests.record(reason, peer, exc.message or str(exc))

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        return msg, kwargs


class GuardedRequestHandler(web.RequestHandler):
    """aiohttp's RequestHandler with a read deadline: from the first byte of a request, its
    headers and its body must arrive within `read_timeout` seconds, else the connection is
    closed and counted as `read_timeout`. The app's middleware reports the phases
    (`request_started`, `body_received`, `request_finished`); time spent handling a request
    does not count. An idle keep-alive connection is aiohttp's keepalive_timeout's business."""

    def __init__(
        self,
        manager: web.Server,
        *,
        read_timeout: float,
        bad_requests: BadRequests,
        **kwargs: Any,
    ) -> None:
        logger = cast(logging.Logger, AiohttpServerLog(bad_requests))
        super().__init__(manager, logger=logger, **kwargs)
        self.read_timeout = read_timeout
        self.bad_requests = bad_requests
        self.timed_out = False
        self._deadline: asyncio.TimerHandle | None = None
        self._awaiting_headers = False
        self._in_handler = False
        self._request: web.BaseRequest | None = None

    def data_received(self, data: bytes) -> None:
        # Bytes between two requests start the next one (a body aiohttp is still reading
        # belongs to the request before, and keeps its deadline).
        if not (self._in_handler or self._awaiting_headers or self._body_pending()):
            self._disarm()
            self._awaiting_headers = True
            self._deadline = self._loop.call_later(self.read_timeout, self._on_deadline)
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def request_started(self, request: web.BaseRequest) -> None:
        self._awaiting_headers = False
        self._in_handler = True
        self._request = request
        if not self._body_pending():
            self._disarm()

    def body_received(self) -> None:
        self._disarm()

    def request_finished(self) -> None:
        self._in_handler = False
        if not self._body_pending():  # else aiohttp reads the rest; the deadline still holds
            self._disarm()

    def body_lost(self, request: web.BaseRequest) -> None:
        """The handler's body read failed because the connection is gone."""
        if not self.timed_out:
            self.bad_requests.record(
                "client_disconnected", request.remote, "the connection closed mid-body"
            )

    def _body_pending(self) -> bool:
        return self._request is not None and not self._request.content.is_eof()

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _on_deadline(self) -> None:
        self._deadline = None
        if not (self._awaiting_headers or self._body_pending()):
            return  # the request completed in time (e.g. aiohttp read an unread body)
        self.timed_out = True
        phase = "headers" if self._awaiting_headers else "body"
        peer = self._request.remote if self._request and not self._awaiting_headers else None
        self.bad_requests.record(
            "read_timeout",
            peer or self._peer(),
            f"the request's {phase} did not arrive within {self.read_timeout:g}s",
        )
        self.force_close()

    def _peer(self) -> str:
        name = self.transport.get_extra_info("peername") if self.transport else None
        return str(name[0]) if isinstance(name, tuple) and name else "?"


class GuardedTCPSite(web.BaseSite):
    """web.TCPSite whose connections are GuardedRequestHandlers (TCPSite always makes plain
    RequestHandlers); `read_timeout()` is read at each new connection, so a reload applies to
    the connections that follow. With `ssl_context` it serves HTTPS only; a TLS handshake must
    end within `handshake_timeout` seconds (the read deadline starts after it)."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        *,
        read_timeout: Callable[[], float],
        bad_requests: BadRequests,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout: float = 60.0,
    ) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._read_timeout = read_timeout
        self._bad_requests = bad_requests
        self._ssl_context = ssl_context
        self._handshake_timeout = handshake_timeout
        self._listening: asyncio.Server | None = None

    @property
    def scheme(self) -> str:
        return "http" if self._ssl_context is None else "https"

    @property
    def name(self) -> str:
        return f"{self.scheme}://{self._host}:{self._port}"

    def _connection(self) -> GuardedRequestHandler:
        server = self._runner.server
        assert server is not None
        return GuardedRequestHandler(
            server,
            loop=asyncio.get_running_loop(),
            read_timeout=self._read_timeout(),
            bad_requests=self._bad_requests,
            access_log=None,
        )

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        tls = self._ssl_context
        self._listening = await loop.create_server(
            self._connection,
            self._host,
            self._port,
            backlog=self._backlog,
            ssl=tls,
            ssl_handshake_timeout=None if tls is None else self._handshake_timeout,
        )
        self._server = self._listening  # BaseSite.stop() closes it

    @property
    def address(self) -> tuple[str, int]:
        assert self._listening is not None
        addr = self._listening.sockets[0].getsockname()
        return addr[0], addr[1]


def request_started(request: web.BaseRequest) -> None:
    if isinstance(request.protocol, GuardedRequestHandler):
        request.protocol.request_started(request)


def body_received(request: web.BaseRequest) -> None:
    if isinstance(request.protocol, GuardedRequestHandler):
        request.protocol.body_received()


def request_finished(request: web.BaseRequest) -> None:
    if isinstance(request.protocol, GuardedRequestHandler):
        request.protocol.request_finished()


def body_lost(request: web.BaseRequest) -> None:
    if isinstance(request.protocol, GuardedRequestHandler):
        request.protocol.body_lost(request)
