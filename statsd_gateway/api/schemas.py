"""Request validation: JSON MetricPoints → samples, each error with the offending field named."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from statsd_gateway.errors import InvalidArgument
from statsd_gateway.model import (
    NAME_RE,
    TAG_KEY_MAX,
    TAG_VALUE_MAX,
    TAGS_MAX,
    VALUE_ABS_MAX,
    MetricType,
)
from statsd_gateway.protocol import Sample

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


def parse_point(obj: Any, prefix: str = "", extra: frozenset[str] = frozenset()) -> Sample:
    """One MetricPoint → a sample; raises InvalidArgument naming `prefix + field`."""
    if not isinstance(obj, dict):
        raise InvalidArgument("a point must be a JSON object", prefix.rstrip(".") or None)
    for k in obj:
        if k not in POINT_FIELDS and k not in extra:
            raise InvalidArgument(f"unknown field {k!r}", prefix + k)
    name = obj.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidArgument(
            "name must be 1-200 characters of A-Z a-z 0-9 _ . - / :", prefix + "name"
        )
    type_name = obj.get("type", "gauge")
    mtype = _TYPES.get(type_name) if isinstance(type_name, str) else None
    if mtype is None:
        raise InvalidArgument(f"type must be one of {', '.join(_TYPES)}", prefix + "type")
    if "value" not in obj:
        raise InvalidArgument("value is required", prefix + "value")
    raw = obj["value"]
    value: float | str
    if mtype is MetricType.SET and isinstance(raw, str):
        if not raw:
            raise InvalidArgument("a set member must not be empty", prefix + "value")
        value = raw
    elif (f := _finite(raw)) is not None and abs(f) <= VALUE_ABS_MAX:
        value = f
        if mtype is MetricType.SET:  # members 1 and 1.0 are the same member
            value = str(int(f)) if f.is_integer() else repr(f)
    else:
        raise InvalidArgument("value must be a finite number", prefix + "value")
    tags_obj = obj.get("tags", {})
    if not isinstance(tags_obj, dict):
        raise InvalidArgument("tags must be an object of string to string", prefix + "tags")
    if len(tags_obj) > TAGS_MAX:
        raise InvalidArgument(f"at most {TAGS_MAX} tags", prefix + "tags")
    for k, v in tags_obj.items():
        if not k or len(k) > TAG_KEY_MAX:
            raise InvalidArgument(f"tag keys must be 1-{TAG_KEY_MAX} characters", prefix + "tags")
        if not isinstance(v, str) or len(v) > TAG_VALUE_MAX:
            raise InvalidArgument(
                f"tag values must be strings of at most {TAG_VALUE_MAX} characters",
                f"{prefix}tags.{k}",
            )
    ts = None
    if obj.get("timestamp") is not None:
        ts = parse_timestamp(obj["timestamp"], prefix + "timestamp")
    rate = obj.get("sample_rate", 1.0)
    if not _number(rate) or not 0.0 < rate <= 1.0:
        raise InvalidArgument("sample_rate must be a number in (0, 1]", prefix + "sample_rate")
    tags = tuple(sorted(tags_obj.items()))
    return (name, tags, mtype, value, float(rate), ts, False)
