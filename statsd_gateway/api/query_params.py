"""The parameters of GET /v1/metrics/query and /v1/metrics/sketch, checked and parsed into a
QuerySpec: what to read (a metric, a tag filter), how to reduce it (an aggregation, a window, a
grouping) and over which range; and the QuerySpec, for a metric of a known type, as the
engine's plan (`query_plan`).

Strict: an unknown parameter is an error naming it and the valid ones, every missing required
one is named at once, and every time in the spec is a whole second (`since` rounded down,
`until` up, so nothing in range is cut off).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from statsd_gateway.api.shapes import iso_datetime
from statsd_gateway.config import parse_duration
from statsd_gateway.errors import InvalidArgument, QueryTooLarge
from statsd_gateway.model import Matcher, MatchOp, MetricType, Tags
from statsd_gateway.query import AggOp, Aggregation, Grouping, QueryPlan, Selector

_AGG_RE = re.compile(r"p(100|\d{1,2}(?:\.\d+)?)")
_PLAIN_AGGS = ("count", "sum", "avg", "min", "max", "last", "rate", "distinct")
_RELATIVE_RE = re.compile(r"-(\d+(?:\.\d+)?(?:ms|s|m|h|d))")
# Times a query may name: from the epoch to year ~5138; beyond is a typo, not a range.
_TIME_MAX = 1e11
DEFAULT_RANGE = 3600.0
SUGGESTED_WINDOWS = (
    ("10s", 10),
    ("1m", 60),
    ("5m", 300),
    ("10m", 600),
    ("30m", 1800),
    ("1h", 3600),
    ("6h", 21600),
    ("1d", 86400),
    ("7d", 604800),
)


@dataclass(frozen=True, slots=True)
class QuerySpec:
    name: str
    agg: str
    quantile: float | None  # 0..1 for pNN aggregations
    tags: Tags
    window: float | None
    window_text: str | None
    since: float
    until: float
    group_by: tuple[str, ...] = ()

    @property
    def matchers(self) -> tuple[Matcher, ...]:
        """The tag filter as series matchers: each tag present, with that value."""
        return tuple(Matcher(k, MatchOp.EQUAL, v, present=True) for k, v in self.tags)


def parse_time(text: str, now: float, field: str) -> float:
    """Unix seconds, RFC 3339, `now`, or relative to now (`-15m`); between the epoch and
    _TIME_MAX."""
    t = _parse_time(text.strip(), now, field)
    if not 0 <= t <= _TIME_MAX:
        raise InvalidArgument(f"{field} must lie between 1970 and the year 5000", field)
    return t


def _parse_time(t: str, now: float, field: str) -> float:
    if t == "now":
        return now
    m = _RELATIVE_RE.fullmatch(t)
    if m:
        try:
            return now - parse_duration(m.group(1))
        except ValueError as e:
            raise InvalidArgument(f"{field}: {e}", field) from None
    try:
        v = float(t)
    except ValueError:
        pass
    else:
        if not math.isfinite(v):
            raise InvalidArgument(f"{field} must be a finite time", field)
        return v
    dt = iso_datetime(t)
    if dt is None:
        raise InvalidArgument(
            f"{field} must be unix seconds, RFC 3339, 'now' or relative like -15m", field
        )
    if dt.tzinfo is None:
        raise InvalidArgument(f"{field}: an RFC 3339 time needs a UTC offset (or Z)", field)
    return dt.timestamp()


def parse_tag_filter(params: Mapping[str, Any]) -> Tags:
    """`tags=k:v,k2:v2`, `tags={"k": "v"}`, or `tags[k]=v`."""
    pairs: dict[str, str] = {}
    raw = params.get("tags")
    if raw:
        raw = str(raw).strip()
        if raw.startswith("{"):
            try:
                obj = json.loads(raw)
            except ValueError:
                raise InvalidArgument("tags is not a valid JSON object", "tags") from None
            if not isinstance(obj, dict) or not all(isinstance(v, str) for v in obj.values()):
                raise InvalidArgument("tags must map strings to strings", "tags")
            pairs.update(obj)
        else:
            for item in raw.split(","):
                k, sep, v = item.partition(":")
                if not k or not sep:
                    raise InvalidArgument(f"tag filter {item!r} is not key:value", "tags")
                pairs[k] = v
    for k in params:
        if k.startswith("tags[") and k.endswith("]") and len(k) > 6:
            pairs[k[5:-1]] = str(params[k])
    return tuple(sorted(pairs.items()))


QUERY_PARAMETERS = ("name", "agg", "tags", "window", "since", "until", "group_by")
QUERY_REQUIRED = ("name", "agg")


def check_parameters(
    params: Mapping[str, Any], valid: Sequence[str], required: Sequence[str] = ()
) -> None:
    """An unknown parameter (a typo such as `tag=` for `tags=` would otherwise be ignored and
    answer for everything) is an error naming it and the valid ones; every missing required
    parameter is named in one error. `tags[K]` counts as `tags`."""
    for k in params:
        if k not in valid and not (k.startswith("tags[") and "tags" in valid):
            raise InvalidArgument(
                f"unknown parameter {k!r}; valid parameters: {', '.join(valid)}", k
            )
    missing = [p for p in required if not params.get(p)]
    if missing:
        what = "is" if len(missing) == 1 else "are"
        raise InvalidArgument(f"{' and '.join(missing)} {what} required", missing[0])


def parse_query(params: Mapping[str, Any], now: float, max_points: int) -> QuerySpec:
    """The parameters of /v1/metrics/query (already checked by check_parameters)."""
    name = params["name"]
    agg = params["agg"]
    quantile: float | None = None
    m = _AGG_RE.fullmatch(agg)
    if m:
        quantile = float(m.group(1)) / 100.0
    elif agg not in _PLAIN_AGGS:
        raise InvalidArgument(
            f"unknown aggregation {agg!r}: use one of {', '.join(_PLAIN_AGGS)} or pNN like p99",
            "agg",
        )
    # Whole seconds, widened outwards so no bucket in range is lost: every time in an answer
    # reads as an integer (`1796153877`, not `1796153877.2468486`).
    until = parse_time(params["until"], now, "until") if params.get("until") else now
    until = float(math.ceil(until))
    if params.get("since"):
        since = float(math.floor(parse_time(params["since"], now, "since")))
    else:
        since = until - DEFAULT_RANGE
    if since >= until:
        raise InvalidArgument("since must be before until", "since")
    window: float | None = None
    window_text = params.get("window") or None
    if window_text:
        try:
            window = parse_duration(window_text)
        except ValueError as e:
            raise InvalidArgument(str(e), "window") from None
        first = math.floor(since / window) * window
        n = math.ceil((until - first) / window)
        if n > max_points:
            fits = next(
                (
                    text
                    for text, w in SUGGESTED_WINDOWS
                    if math.ceil((until - math.floor(since / w) * w) / w) <= max_points
                ),
                None,
            )
            hint = f"; window={fits} would fit" if fits else "; narrow since/until"
            raise QueryTooLarge(
                f"the answer would have {n} points per series, more than {max_points}{hint}",
                "window",
            )
    group_by = tuple(k for k in str(params.get("group_by", "")).split(",") if k)
    return QuerySpec(
        name=name,
        agg=agg,
        quantile=quantile,
        tags=parse_tag_filter(params),
        window=window,
        window_text=window_text,
        since=since,
        until=until,
        group_by=group_by,
    )


_OBSERVATIONS = frozenset({MetricType.TIMING, MetricType.HISTOGRAM, MetricType.DISTRIBUTION})


def query_plan(tenant: str, spec: QuerySpec, mtype: MetricType) -> QueryPlan:
    """The plan of a query of a metric of type `mtype`, once its aggregation is one that type
    offers (MetricType.aggregations). `rate` is what StatsD users expect of the type: a
    counter's sum per second, and for a timing, histogram or distribution its observations
    per second (Etsy's `count_ps`)."""
    wanted = "pNN" if spec.quantile is not None else spec.agg
    if wanted not in mtype.aggregations:
        raise InvalidArgument(
            f"{spec.agg} is not available for {mtype.value} metrics; "
            f"a {mtype.value} has: {', '.join(mtype.aggregations)}",
            "agg",
        )
    if spec.quantile is not None:
        agg = Aggregation(AggOp.QUANTILE, spec.quantile)
    elif spec.agg == "rate" and mtype in _OBSERVATIONS:
        agg = Aggregation(AggOp.COUNT_RATE)
    else:
        agg = Aggregation(AggOp(spec.agg))
    return QueryPlan(
        Selector(tenant, spec.name, spec.matchers),
        agg,
        spec.since,
        spec.until,
        spec.window,
        Grouping(spec.group_by),
    )
