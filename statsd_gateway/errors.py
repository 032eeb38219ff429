"""The exception tree; every API error is one of these, rendered as one JSON envelope.

    GatewayError                 500 INTERNAL
    ├── InvalidArgument          400 INVALID_ARGUMENT
    │   └── QueryTooLarge        400 INVALID_ARGUMENT (answer would exceed the points limit)
    ├── Unauthenticated          401 UNAUTHENTICATED
    ├── PermissionDenied         403 PERMISSION_DENIED
    ├── NotFound                 404 NOT_FOUND (unknown path)
    ├── MetricNotFound           404 METRIC_NOT_FOUND
    ├── MethodNotAllowed         405 METHOD_NOT_ALLOWED
    ├── TypeConflict             409 TYPE_CONFLICT
    ├── IdempotencyKeyReused     409 IDEMPOTENCY_KEY_REUSED
    ├── PayloadTooLarge          413 PAYLOAD_TOO_LARGE
    ├── Unprocessable            422 UNPROCESSABLE (a valid query we cannot answer: PromQL)
    ├── CardinalityLimit         429 CARDINALITY_LIMIT
    └── Unavailable              503 UNAVAILABLE
        └── StoreError           503 UNAVAILABLE (an outage of the store: retry later)
            ├── StoreTimeout     503 UNAVAILABLE (a read ran past query.timeout: ask for less)
            └── StoreGone        503 UNAVAILABLE (the database file removed or replaced)

ConfigError and ListenError are separate: each stops a start, naming the offending key (and,
for a listener that cannot bind, which one and its address); neither reaches HTTP.
"""

from __future__ import annotations

from typing import Any, ClassVar


class GatewayError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def envelope(self) -> dict[str, Any]:
        return error_envelope(self.code, self.message, self.field)


def error_envelope(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message, "field": field}}


class InvalidArgument(GatewayError):
    status = 400
    code = "INVALID_ARGUMENT"


class QueryTooLarge(InvalidArgument):
    pass


class Unauthenticated(GatewayError):
    status = 401
    code = "UNAUTHENTICATED"


class PermissionDenied(GatewayError):
    status = 403
    code = "PERMISSION_DENIED"


class NotFound(GatewayError):
    status = 404
    code = "NOT_FOUND"


class MetricNotFound(GatewayError):
    status = 404
    code = "METRIC_NOT_FOUND"


class MethodNotAllowed(GatewayError):
    status = 405
    code = "METHOD_NOT_ALLOWED"


class TypeConflict(GatewayError):
    status = 409
    code = "TYPE_CONFLICT"


class IdempotencyKeyReused(GatewayError):
    status = 409
    code = "IDEMPOTENCY_KEY_REUSED"


class IdempotencyKeyInProgress(GatewayError):
    status = 409
    code = "IDEMPOTENCY_KEY_IN_PROGRESS"


class PayloadTooLarge(GatewayError):
    status = 413
    code = "PAYLOAD_TOO_LARGE"


class Unprocessable(GatewayError):
    """A well-formed request we will not answer: a PromQL construct we do not support, or one
    whose answer would be wrong (a name two StatsD metrics escape to). Never a wrong answer."""

    status = 422
    code = "UNPROCESSABLE"


class CardinalityLimit(GatewayError):
    status = 429
    code = "CARDINALITY_LIMIT"


class Unavailable(GatewayError):
    status = 503
    code = "UNAVAILABLE"


class StoreError(Unavailable):
    """The store cannot be opened, read or written: an outage (locked, full, I/O, closed),
    after which the same call is worth retrying (the flusher keeps the data in memory). An
    error of the data itself (a value the database cannot encode, a constraint it breaks) is
    not one of these: it propagates as raised, and the flusher sets the offending rows aside.

    `str()` is the store's own words (logs, /readyz); `message`, what an HTTP answer says,
    names the store as well."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message, field)
        self.message = f"the store is unavailable: {message}"


class StoreTimeout(StoreError):
    """A read stopped at its time limit (`query.timeout`). The answer says how to ask for less;
    the store is not failing."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message, field)
        self.message = (
            f"{message} (to ask for less: a shorter range with since and until, a coarser "
            "window, or tags that match fewer series)"
        )


class StoreGone(StoreError):
    """The database file was removed or replaced while open."""


class ListenError(OSError):
    """A listener that cannot bind; the message names it, its address and its setting."""


class ConfigError(Exception):
    """A config file that cannot be used; the message starts with the offending key's path."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
