"""The listeners, built from their config sections and bound: UDP, TCP, the unix datagram socket
and the HTTP site. A failure to bind is a ListenError that names the listener, its address and
its setting; each bound address is logged. The composition root (gateway.py) decides which run
and keeps what they return."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator

from aiohttp import web

from statsd_gateway.api.connections import BadRequests, GuardedTCPSite
from statsd_gateway.config import (
    HttpConfig,
    TcpConfig,
    UdpConfig,
    UnixConfig,
    parse_listen,
    parse_mode,
)
from statsd_gateway.errors import ListenError
from statsd_gateway.ingest import Ingest
from statsd_gateway.native_udp import NativeUdpListener
from statsd_gateway.tcp import TcpListener
from statsd_gateway.telemetry import Telemetry
from statsd_gateway.tls import ServerCertificate
from statsd_gateway.udp import UdpListener
from statsd_gateway.unixgram import UnixgramListener

log = logging.getLogger(__name__)


async def start_udp(
    cfg: UdpConfig, ingest: Ingest, telemetry: Telemetry
) -> tuple[UdpListener | NativeUdpListener, tuple[str, int]]:
    """The native core's reader threads where it runs, else the event loop's listener."""
    udp: UdpListener | NativeUdpListener
    if ingest.native is not None:
        udp = NativeUdpListener(
            ingest.native,
            tenant=cfg.tenant,
            read_buffer=cfg.read_buffer,
            readers=cfg.readers,
            nudge=ingest.nudge,
        )
    else:
        udp = UdpListener(
            ingest,
            telemetry,
            tenant=cfg.tenant,
            queue_size=cfg.queue_size,
            read_buffer=cfg.read_buffer,
        )
    with listening("udp", "udp.listen", cfg.listen):
        address = await udp.start(*parse_listen(cfg.listen))
    log.info("listening udp %s", format_address(address))
    return udp, address


async def start_tcp(
    cfg: TcpConfig, ingest: Ingest, telemetry: Telemetry, clock: Callable[[], float]
) -> tuple[TcpListener, tuple[str, int]]:
    tcp = TcpListener(
        ingest,
        telemetry,
        tenant=cfg.tenant,
        max_connections=cfg.max_connections,
        idle_timeout=cfg.idle_timeout,
        clock=clock,
    )
    with listening("tcp", "tcp.listen", cfg.listen):
        address = await tcp.start(*parse_listen(cfg.listen))
    log.info("listening tcp %s", format_address(address))
    return tcp, address


async def start_unix(
    cfg: UnixConfig, ingest: Ingest, telemetry: Telemetry
) -> tuple[UnixgramListener, str]:
    unix = UnixgramListener(
        ingest,
        telemetry,
        tenant=cfg.tenant,
        queue_size=cfg.queue_size,
        mode=parse_mode(cfg.mode),
    )
    with listening("the unix socket", "unix.path", cfg.path):
        path = await unix.start(cfg.path)
    log.info("listening unixgram %s", path)
    return unix, path


async def start_http(
    runner: web.AppRunner,
    cfg: HttpConfig,
    telemetry: Telemetry,
    *,
    read_timeout: Callable[[], float],
    tls: ServerCertificate | None,
) -> tuple[str, int]:
    """Binds the HTTP site of `runner` (set up already); `read_timeout` is read at each request
    (a reload changes it)."""
    host, port = parse_listen(cfg.listen)
    site = GuardedTCPSite(
        runner,
        host,
        port,
        read_timeout=read_timeout,
        bad_requests=BadRequests(telemetry),
        ssl_context=None if tls is None else tls.context,
        handshake_timeout=cfg.read_timeout,
    )
    with listening("http", "http.listen", cfg.listen):
        await site.start()
    log.info("listening %s %s", site.scheme, format_address(site.address))
    return site.address


@contextlib.contextmanager
def listening(what: str, key: str, address: str) -> Iterator[None]:
    """Turns a failure to bind into a ListenError naming the listener, its address and the
    setting (a bare `[Errno 98] Address already in use` says neither which nor where)."""
    try:
        yield
    except OSError as e:
        reason = e.strerror or str(e)
        if e.errno and reason.startswith("error while attempting to bind"):
            reason = os.strerror(e.errno)  # asyncio's wrapping; the errno says it plainly
        reason = reason[:1].lower() + reason[1:]
        raise ListenError(f"{what} cannot listen on {address} ({key}): {reason}") from e


def format_address(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
