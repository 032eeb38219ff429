"""The JSON bodies of the write endpoints and the error envelope, as msgspec Structs: the one
definition that validation decodes with (schemas.py) and the OpenAPI document publishes
(openapi.py). A limit is written here once, from the constant the rest of the daemon uses.

What no JSON schema can say stays in schemas.py: a name is checked once cleaned, a string
value only for a set, every string for lone surrogates.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

import msgspec
from msgspec import Meta

from statsd_gateway.idempotency import KEY_MAX
from statsd_gateway.model import (
    NAME_MAX,
    SAMPLE_RATE_MIN,
    TAG_KEY_MAX,
    TAG_VALUE_MAX,
    TAGS_MAX,
    MetricType,
)

# At least one letter or digit (Python's [^\W_]); the whole rule, applied to the cleaned name,
# is protocol.clean_name's.
NAME_PATTERN = "[^\\W_]"
MetricName = Annotated[
    str,
    Meta(
        description=f"cleaned as StatsD names are (statsd.name_sanitising), then 1-{NAME_MAX} "
        "characters with a letter or digit",
        # Documented, not enforced here: a longer name can clean down to fit, and the cleaned
        # name is what clean_name checks.
        extra_json_schema={"minLength": 1, "pattern": NAME_PATTERN},
    ),
]
TagKey = Annotated[str, Meta(min_length=1, max_length=TAG_KEY_MAX)]
TagValue = Annotated[str, Meta(max_length=TAG_VALUE_MAX)]
Tags = Annotated[
    dict[TagKey, TagValue],
    Meta(
        max_length=TAGS_MAX,
        description=f"at most {TAGS_MAX} tags, keys 1-{TAG_KEY_MAX} characters, values at most "
        f"{TAG_VALUE_MAX}",
    ),
]
IdempotencyKey = Annotated[str, Meta(min_length=1, max_length=KEY_MAX)]
IdempotencyField = Annotated[
    IdempotencyKey | None,
    Meta(description="the Idempotency-Key header's twin; null is the same as absent"),
]
# GET /v1/metrics/tags: values listed per tag key.
TAG_VALUES_DEFAULT = 100
TAG_VALUES_MAX = 10_000


def iso_datetime(text: str) -> datetime | None:
    """`text` read as ISO 8601 (a trailing `Z` is UTC), or None when it is not; the caller
    decides what a time without an offset means. The reading of time strings that both the
    points (where strict RFC 3339 refuses a form) and the query parameters use."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


class MetricPoint(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, gc=False):
    """One point, as POST /v1/metrics/report takes it and each item of a batch."""

    name: MetricName
    value: Annotated[
        float | Annotated[str, Meta(min_length=1)],
        Meta(description="a finite number; for a set, a string member or a number"),
    ]
    type: MetricType = MetricType.GAUGE
    tags: Tags = {}
    timestamp: (
        Annotated[float, Meta(gt=0, description="unix seconds")]
        | Annotated[datetime, Meta(tz=True, description="RFC 3339 with an offset")]
        | None
    ) = None
    sample_rate: Annotated[float, Meta(ge=SAMPLE_RATE_MIN, le=1.0)] = 1.0


class ReportBody(MetricPoint, kw_only=True, forbid_unknown_fields=True, gc=False):
    """The body of POST /v1/metrics/report: a MetricPoint and its idempotency key."""

    idempotency_key: IdempotencyField = None


P = TypeVar("P")


class Batch(msgspec.Struct, Generic[P], forbid_unknown_fields=True):
    """A batch of points of type P. Batch[Any] is what a handler decodes, so that each point is
    decoded on its own and one bad point is reported by its index while the others count."""

    points: list[P]
    idempotency_key: IdempotencyField = None


class BatchBody(Batch[MetricPoint]):
    """The body of POST /v1/metrics/batch (at most http.max_batch_points points)."""


BatchEnvelope = Batch[Any]


class PointError(msgspec.Struct):
    index: int
    code: str
    message: str
    field: str | None = None


class BatchAnswer(msgspec.Struct):
    """The batch was processed: the valid points are kept, the invalid ones listed by index."""

    ok: bool
    accepted: int
    rejected: int
    errors: list[PointError]
    replayed: Literal[True] | None = None  # present only on an idempotent request replayed


class ReportAnswer(msgspec.Struct):
    ok: bool
    replayed: Literal[True] | None = None


class Ok(msgspec.Struct):
    ok: bool


class ErrorDetail(msgspec.Struct):
    code: str  # one of the codes of errors.py, listed in the document
    message: str
    field: str | None


class ErrorEnvelope(msgspec.Struct):
    """Every error of every /v1 endpoint (errors.py)."""

    ok: Literal[False]
    error: ErrorDetail
