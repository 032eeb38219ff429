"""Request validation: a JSON MetricPoint → a sample, each error with the offending field named.

msgspec converts the point into the Struct of shapes.py (types, limits, unknown fields); then
what no schema says: the name is cleaned by the configured sanitiser and checked once cleaned, a
string value is a set's member only, numbers are finite, and every string is checked for lone
surrogates. Each point of a batch is converted on its own, so a bad one is reported by index.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec

from statsd_gateway.api.shapes import BatchBody, BatchEnvelope, MetricPoint, iso_datetime
from statsd_gateway.errors import InvalidArgument
from statsd_gateway.idempotency import KEY_MAX
from statsd_gateway.model import (
    NAME_MAX,
    SAMPLE_RATE_MIN,
    TAG_KEY_MAX,
    TAG_VALUE_MAX,
    TAGS_MAX,
    VALUE_ABS_MAX,
    MetricType,
    Tags,
    is_utf8_text,
)
from statsd_gateway.protocol import (
    EMPTY_NAME,
    NAME_TOO_LONG,
    NAME_WITHOUT_ALNUM,
    Sample,
    clean_name,
)
from statsd_gateway.shape_errors import Violation

_NOT_UTF8 = "strings must be valid Unicode (a lone surrogate such as \\ud800 is not)"
_SET = MetricType.SET
_INF = math.inf
# What a field takes, said when msgspec refuses its value.
_FIELD_ERRORS = {
    "name": "name is required: a string",
    "value": "value must be a finite number",
    "type": f"type must be one of {', '.join(t.value for t in MetricType)}",
    "tags": "tags must be an object of string to string",
    "timestamp": "timestamp must be unix seconds or an RFC 3339 time with offset",
    "sample_rate": f"sample_rate must be a number between {SAMPLE_RATE_MIN:g} and 1",
    "idempotency_key": f"idempotency_key must be a string of 1-{KEY_MAX} characters",
}
_NAME_ERRORS = {
    NAME_TOO_LONG: f"name must be at most {NAME_MAX} characters",
    EMPTY_NAME: "name must not be empty (after cleaning, as StatsD names are cleaned)",
    NAME_WITHOUT_ALNUM: "name must contain a letter or digit (after cleaning)",
}
# Names and tag objects already validated: clients send the same few over and over, and the
# checks cost more than a dict lookup. Bounded: cleared when full.
_CACHE_MAX = 50_000
_clean_names: dict[tuple[Callable[[str], str], str], str] = {}
_tag_cache: dict[tuple[tuple[str, str], ...], Tags] = {}


def parse_point(
    obj: Any,
    prefix: str = "",
    *,
    sanitise: Callable[[str], str],
    shape: type[MetricPoint] = MetricPoint,
) -> Sample:
    """One MetricPoint (or a subtype such as ReportBody) → a sample, its name cleaned by
    `sanitise` as StatsD names are (the parser's `sanitise`); raises InvalidArgument naming
    `prefix + field`."""
    try:
        return _parse_point(obj, shape, sanitise)
    except InvalidArgument as e:
        if prefix:
            e.field = prefix + e.field if e.field else prefix.rstrip(".")
        raise


def parse_batch(body: Any, max_points: int) -> list[Any]:
    """The points of a batch body, each still to be parsed on its own."""
    try:
        batch = msgspec.convert(body, BatchEnvelope)
    except msgspec.ValidationError as e:
        v = Violation.of(e)
        if v.unknown:
            raise InvalidArgument(f"unknown field {v.path!r}", v.path) from None
        if v.path == "":
            raise InvalidArgument("the body must be an object with a points list", "body") from None
        if v.path == "idempotency_key":
            raise InvalidArgument(_FIELD_ERRORS[v.path], v.path) from None
        raise InvalidArgument("points must be a list", "points") from None
    if len(batch.points) > max_points:
        raise InvalidArgument(f"a batch holds at most {max_points} points", "points")
    return batch.points


_TYPED_BATCH = msgspec.json.Decoder(BatchBody)


def decode_typed_batch(raw: bytes) -> BatchBody | None:
    """A batch body decoded straight from its bytes into typed points, when every point fits
    MetricPoint: one pass, no dict per point. None otherwise (not JSON, a point msgspec refuses,
    an ISO timestamp only Python reads): the caller takes the point-by-point path
    (parse_batch, parse_point), which names each bad point. Either way each point then goes
    through sample_of(), the one set of checks no schema says."""
    try:
        return _TYPED_BATCH.decode(raw)
    except msgspec.DecodeError:  # ValidationError included
        return None


def _parse_point(obj: Any, shape: type[MetricPoint], sanitise: Callable[[str], str]) -> Sample:
    try:
        point = msgspec.convert(obj, shape)
    except msgspec.ValidationError as e:
        again = _with_iso_timestamp(obj)
        if again is None:
            raise _point_error(Violation.of(e), obj) from None
        try:
            point = msgspec.convert(again, shape)
        except msgspec.ValidationError as e2:
            raise _point_error(Violation.of(e2), again) from None
    return sample_of(point, sanitise)


def sample_of(point: MetricPoint, sanitise: Callable[[str], str]) -> Sample:
    """A point msgspec accepted → its sample: the name cleaned by `sanitise` and checked,
    a string value a set's member only, numbers finite, strings without lone surrogates;
    raises InvalidArgument naming the field."""
    name = _clean_names.get((sanitise, point.name))
    if name is None:
        name = _cleaned(point.name, sanitise)
    mtype = point.type
    value = point.value
    if isinstance(value, str):
        if mtype is not _SET:
            raise InvalidArgument(_FIELD_ERRORS["value"], "value")
        if not is_utf8_text(value):
            raise InvalidArgument(_NOT_UTF8, "value")
    elif not -VALUE_ABS_MAX <= value <= VALUE_ABS_MAX:  # NaN too
        raise InvalidArgument(_FIELD_ERRORS["value"], "value")
    elif mtype is _SET:  # members 1 and 1.0 are the same member
        value = str(int(value)) if value.is_integer() else repr(value)
    tags = _tags(point.tags) if point.tags else ()
    ts = point.timestamp
    if isinstance(ts, datetime):
        ts = ts.timestamp()
    elif ts == _INF:
        raise InvalidArgument("timestamp must be positive unix seconds", "timestamp")
    return Sample(name, tags, mtype, value, point.sample_rate, ts, False)


def _with_iso_timestamp(obj: Any) -> dict[str, Any] | None:
    """The point with a string timestamp that msgspec's RFC 3339 parser refuses but Python's
    ISO 8601 parser reads with an offset (`2024-01-01T00:00Z`, `20240101T000000Z`) turned into
    unix seconds, as releases before msgspec took them (and their write-ahead logs hold them);
    None when there is no such timestamp."""
    if not isinstance(obj, dict) or not isinstance(text := obj.get("timestamp"), str):
        return None
    when = iso_datetime(text)
    if when is None or when.tzinfo is None:
        return None
    return {**obj, "timestamp": when.timestamp()}


def _cleaned(raw: str, sanitise: Callable[[str], str]) -> str:
    name, reason = clean_name(raw, sanitise)
    if reason is not None:
        raise InvalidArgument(_NAME_ERRORS[reason], "name")
    if not is_utf8_text(name):
        raise InvalidArgument(_NOT_UTF8, "name")
    if len(_clean_names) >= _CACHE_MAX:
        _clean_names.clear()
    _clean_names[(sanitise, raw)] = name
    return name


def _tags(tags_obj: dict[str, str]) -> Tags:
    items = tuple(tags_obj.items())
    tags = _tag_cache.get(items)
    if tags is not None:
        return tags
    for k, v in items:
        if not is_utf8_text(k):
            raise InvalidArgument(f"tag keys: {_NOT_UTF8}", "tags")
        if not is_utf8_text(v):
            raise InvalidArgument(_NOT_UTF8, f"tags.{k}")
    tags = tuple(sorted(items))
    if len(_tag_cache) >= _CACHE_MAX:
        _tag_cache.clear()
    _tag_cache[items] = tags
    return tags


def _point_error(v: Violation, obj: Any) -> InvalidArgument:
    """msgspec's refusal of a point, in the words of docs/API.md, naming the field."""
    if v.unknown:
        return InvalidArgument(f"unknown field {v.path!r}", v.path)
    if v.path == "":
        return InvalidArgument("a point must be a JSON object", None)
    field = v.path.partition(".")[0].partition("[")[0]
    raw = obj.get(field)
    if v.missing and field == "value":
        return InvalidArgument("value is required", "value")
    if field == "value" and raw == "":
        return InvalidArgument("a set member must not be empty", "value")
    if field == "timestamp" and isinstance(raw, int | float) and not isinstance(raw, bool):
        return InvalidArgument("timestamp must be positive unix seconds", "timestamp")
    if field == "tags" and isinstance(raw, dict):
        return _tags_error(v, raw)
    return InvalidArgument(_FIELD_ERRORS.get(field, v.what), field)


def _tags_error(v: Violation, tags: dict[Any, Any]) -> InvalidArgument:
    if v.in_key:
        return InvalidArgument(f"tag keys must be 1-{TAG_KEY_MAX} characters", "tags")
    if len(tags) > TAGS_MAX:
        return InvalidArgument(f"at most {TAGS_MAX} tags", "tags")
    # msgspec says `$.tags[...]` for a bad value: name its key, as a client looks for it.
    bad = next(
        (k for k, t in tags.items() if not isinstance(t, str) or len(t) > TAG_VALUE_MAX), None
    )
    message = f"tag values must be strings of at most {TAG_VALUE_MAX} characters"
    return InvalidArgument(message, "tags" if bad is None else f"tags.{bad}")
