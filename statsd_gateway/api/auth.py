"""API keys and the principal a request acts as."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from statsd_gateway.config import SCOPES, ApiKey, hash_key
from statsd_gateway.errors import PermissionDenied

log = logging.getLogger(__name__)


class KeyRing:
    """API keys by SHA-256; a presented key is hashed and compared in constant time."""

    def __init__(self, keys: tuple[ApiKey, ...]) -> None:
        self.keys = keys

    @staticmethod
    def from_config(keys: tuple[ApiKey, ...], key_file: Path) -> KeyRing:
        """The configured keys; with none, the key stored in `key_file` (created on first use,
        mode 0600 in the data directory: the operator's own key, with every scope)."""
        if not keys:
            key = ensure_generated_key(key_file)
            log.info("no auth.keys configured: using the API key in %s", key_file)
            keys = (ApiKey(name="generated", sha256=hash_key(key), scopes=tuple(sorted(SCOPES))),)
        return KeyRing(keys)

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


def ensure_generated_key(path: Path) -> str:
    """Returns the key stored at `path`, creating it (mode 0600) on first use."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = "sgw_" + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(key + "\n")
    log.info("created an API key for tenant 'default' in %s", path)
    return key
