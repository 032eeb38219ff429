"""The text forms of config values that are more than a YAML scalar: durations, listen
addresses, peer addresses, socket file modes, API key digests.

Each is a small subclass of float or str, so a parsed value is used as a plain number or string.
msgspec hands a field of one of these types to `decode_value` (its dec_hook): `10s` and `10`
both become `Seconds(10.0)`, and a ValueError or TypeError raised here becomes a ValidationError
at the key's path, with this module's message.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

# [0-9], not \d: Python's \d takes any Unicode digit, and the OpenAPI document (whose regexes
# are ECMA-262, ASCII digits only) states this same pattern for a query's `window`.
DURATION_PATTERN = "([0-9]+(?:\\.[0-9]+)?)(ms|s|m|h|d)"
_DURATION_RE = re.compile(DURATION_PATTERN)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MAX_DURATION = 100 * 365 * 86400.0
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
# Three octal digits, optionally after a 0 ("0660", "660").
_MODE_RE = re.compile(r"0?[0-7]{3}")


class Seconds(float):
    """A duration: `500ms`, `10s`, `1m`, `1h`, `1d`, or a plain number of seconds."""

    __slots__ = ()


class ListenAddress(str):
    """`host:port`, or `[v6]:port`; port 0 picks any free port."""

    __slots__ = ()


class PeerAddress(str):
    """`host:port`, or `[v6]:port`, of a peer to send to: a port from 1 to 65535."""

    __slots__ = ()


class FileMode(str):
    """Permissions as a quoted octal string, `"0660"`."""

    __slots__ = ()


class KeyDigest(str):
    """The SHA-256 of an API key, 64 lowercase hex digits."""

    __slots__ = ()


def parse_duration(text: str | int | float) -> float:
    """`10s`, `500ms`, `1m`, `1h`, `1d`, or a plain number of seconds → seconds."""
    if isinstance(text, bool):
        raise ValueError("expected a duration such as 10s, 500ms or 1m")
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        m = _DURATION_RE.fullmatch(text.strip())
        if not m:
            raise ValueError(f"{text!r} is not a duration such as 10s, 500ms or 1m")
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if not 0 < seconds <= MAX_DURATION:
        raise ValueError("a duration must be positive and at most 100 years")
    return seconds


def parse_listen(text: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` → (host, port); port 0 means any free port."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r} is not host:port (use [::1]:8125 for IPv6)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def parse_mode(text: str) -> int:
    """`"0660"` → 0o660."""
    return int(text, 8)


def hash_key(key: str) -> KeyDigest:
    """The digest `auth.keys[].sha256` holds for an API key."""
    return KeyDigest(hashlib.sha256(key.encode("utf-8")).hexdigest())


def _seconds(obj: Any) -> Seconds:
    if not isinstance(obj, str | int | float):
        raise TypeError("expected a duration such as 10s, 500ms or 1m")
    return Seconds(parse_duration(obj))


def _listen(obj: Any) -> ListenAddress:
    if not isinstance(obj, str) or not obj:
        raise TypeError("expected a non-empty string")
    parse_listen(obj)
    return ListenAddress(obj)


def _peer(obj: Any) -> PeerAddress:
    if not isinstance(obj, str) or not obj:
        raise TypeError("expected a non-empty string")
    if parse_listen(obj)[1] == 0:
        raise ValueError(f"{obj!r} has port 0: a peer's port is 1 to 65535")
    return PeerAddress(obj)


def _mode(obj: Any) -> FileMode:
    # YAML reads an unquoted 0660 as the integer 432, and 660 as 660: only a string is clear.
    if not isinstance(obj, str) or not _MODE_RE.fullmatch(obj):
        raise ValueError('expected an octal mode as a quoted string, such as "0660"')
    return FileMode(obj)


def _digest(obj: Any) -> KeyDigest:
    if not isinstance(obj, str) or not obj:
        raise TypeError("expected a non-empty string")
    if not _SHA256_RE.fullmatch(obj.lower()):
        raise ValueError("expected 64 hex digits (statsd-gateway keygen)")
    return KeyDigest(obj.lower())


_DECODERS: dict[type, Callable[[Any], Any]] = {
    Seconds: _seconds,
    ListenAddress: _listen,
    PeerAddress: _peer,
    FileMode: _mode,
    KeyDigest: _digest,
}


def decode_value(cls: type, obj: Any) -> Any:
    """msgspec's dec_hook: the value of a field typed with one of the classes above."""
    decode = _DECODERS.get(cls)
    if decode is None:
        raise NotImplementedError(f"no config value type {cls.__name__}")
    return decode(obj)
