"""API keys and the principal a request acts as."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from aiohttp import web

from statsd_gateway.config import ApiKey
from statsd_gateway.errors import PermissionDenied


class KeyRing:
    """API keys by SHA-256; a presented key is hashed and compared in constant time."""

    def __init__(self, keys: tuple[ApiKey, ...]) -> None:
        self.keys = keys

    def lookup(self, presented: str) -> ApiKey | None:
        # Header bytes that were not UTF-8 arrive as surrogates: no key has them.
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).hexdigest()
        found = None
        for k in self.keys:
            if hmac.compare_digest(k.sha256, digest):
                found = k
        return found


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    tenant: str
    scopes: frozenset[str]


PRINCIPAL = web.RequestKey("principal", Principal)


def check_scope(principal: Principal, scope: str) -> None:
    if scope not in principal.scopes:
        raise PermissionDenied(f"the key {principal.name!r} lacks the {scope!r} scope")


def principal_of(request: web.Request) -> Principal:
    """The key a request acts as; the auth middleware has checked the route's scope."""
    p: Principal = request[PRINCIPAL]
    return p
