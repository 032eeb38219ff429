"""Request validation: JSON MetricPoints → samples, each error with the offending field named."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from typing import Any

from statsd_gateway.errors import InvalidArgument
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

_NOT_UTF8 = "strings must be valid Unicode (a lone surrogate such as \\ud800 is not)"
POINT_FIELDS = frozenset({"name", "value", "type", "tags", "timestamp", "sample_rate"})
_TYPES = {t.value: t for t in MetricType}


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _finite(v: Any) -> float | None:
    """A JSON number as a finite float; None for anything else (incl. integers past float)."""
    if not _number(v):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def parse_timestamp(v: Any, field: str) -> float:
    if _number(v):
        t = _finite(v)
        if t is None or t <= 0:
            raise InvalidArgument("timestamp must be positive unix seconds", field)
        return t
    if isinstance(v, str):
        try:
            dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if dt.tzinfo is not None:
                return dt.timestamp()
    raise InvalidArgument("timestamp must be unix seconds or an RFC 3339 time with offset", field)


def parse_point(
    obj: Any,
    prefix: str = "",
    extra: frozenset[str] = frozenset(),
    *,
    sanitise: Callable[[str], str],
) -> Sample:
    """One MetricPoint → a sample, its name cleaned by `sanitise` as StatsD names are (the
    parser's `sanitise`); raises InvalidArgument naming `prefix + field`."""
    try:
        return _parse_point(obj, extra, sanitise)
    except InvalidArgument as e:
        if prefix:
            e.field = prefix + e.field if e.field else prefix.rstrip(".")
        raise


# Names and tag objects already validated: clients send the same few over and over, and the
# checks cost more than a dict lookup. Bounded: cleared when full.
_CACHE_MAX = 50_000
_clean_names: dict[tuple[Callable[[str], str], str], str] = {}
_NAME_ERRORS = {
    NAME_TOO_LONG: f"name must be at most {NAME_MAX} characters",
    EMPTY_NAME: "name must not be empty (after cleaning, as StatsD names are cleaned)",
    NAME_WITHOUT_ALNUM: "name must contain a letter or digit (after cleaning)",
}
_tag_cache: dict[tuple[tuple[Any, Any], ...], Tags] = {}


def _parse_point(obj: Any, extra: frozenset[str], sanitise: Callable[[str], str]) -> Sample:
    if not isinstance(obj, dict):
        raise InvalidArgument("a point must be a JSON object", None)
    if not obj.keys() <= POINT_FIELDS:
        for k in obj:
            if k not in POINT_FIELDS and k not in extra:
                raise InvalidArgument(f"unknown field {k!r}", k)
    raw_name = obj.get("name")
    if not isinstance(raw_name, str):
        raise InvalidArgument("name is required: a string", "name")
    name = _clean_names.get((sanitise, raw_name))
    if name is None:
        name, reason = clean_name(raw_name, sanitise)
        if reason is not None:
            raise InvalidArgument(_NAME_ERRORS[reason], "name")
        if len(_clean_names) >= _CACHE_MAX:
            _clean_names.clear()
        _clean_names[(sanitise, raw_name)] = name
    type_name = obj.get("type", "gauge")
    mtype = _TYPES.get(type_name) if isinstance(type_name, str) else None
    if mtype is None:
        raise InvalidArgument(f"type must be one of {', '.join(_TYPES)}", "type")
    if "value" not in obj:
        raise InvalidArgument("value is required", "value")
    raw = obj["value"]
    value: float | str
    if mtype is MetricType.SET and isinstance(raw, str):
        if not raw:
            raise InvalidArgument("a set member must not be empty", "value")
        if not is_utf8_text(raw):
            raise InvalidArgument(_NOT_UTF8, "value")
        value = raw
    elif (f := _finite(raw)) is not None and abs(f) <= VALUE_ABS_MAX:
        value = f
        if mtype is MetricType.SET:  # members 1 and 1.0 are the same member
            value = str(int(f)) if f.is_integer() else repr(f)
    else:
        raise InvalidArgument("value must be a finite number", "value")
    tags = _tags(obj.get("tags", {}))
    ts = None
    if obj.get("timestamp") is not None:
        ts = parse_timestamp(obj["timestamp"], "timestamp")
    rate = obj.get("sample_rate", 1.0)
    if not _number(rate) or not SAMPLE_RATE_MIN <= rate <= 1.0:
        raise InvalidArgument(
            f"sample_rate must be a number between {SAMPLE_RATE_MIN:g} and 1", "sample_rate"
        )
    return Sample(name, tags, mtype, value, float(rate), ts, False)


def _tags(tags_obj: Any) -> Tags:
    if not isinstance(tags_obj, dict):
        raise InvalidArgument("tags must be an object of string to string", "tags")
    if not tags_obj:
        return ()
    items = tuple(tags_obj.items())
    try:
        return _tag_cache[items]
    except (KeyError, TypeError):  # TypeError: a value that is not hashable (not a string)
        pass
    if len(tags_obj) > TAGS_MAX:
        raise InvalidArgument(f"at most {TAGS_MAX} tags", "tags")
    for k, v in items:
        if not k or len(k) > TAG_KEY_MAX:
            raise InvalidArgument(f"tag keys must be 1-{TAG_KEY_MAX} characters", "tags")
        if not is_utf8_text(k):
            raise InvalidArgument(f"tag keys: {_NOT_UTF8}", "tags")
        if not isinstance(v, str) or len(v) > TAG_VALUE_MAX:
            raise InvalidArgument(
                f"tag values must be strings of at most {TAG_VALUE_MAX} characters", f"tags.{k}"
            )
        if not is_utf8_text(v):
            raise InvalidArgument(_NOT_UTF8, f"tags.{k}")
    tags = tuple(sorted(items))
    if len(_tag_cache) >= _CACHE_MAX:
        _tag_cache.clear()
    _tag_cache[items] = tags
    return tags
