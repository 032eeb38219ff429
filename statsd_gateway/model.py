"""The data model every stage shares: metric types, series keys, points, and their limits.

Rules (DESIGN.md §2):
- A series is (tenant, name, tag set). A tag set is canonical: keys sorted, duplicates resolved
  last-wins; it is represented as a tuple of (key, value) pairs.
- A metric's type is fixed per (tenant, name) by its first point.
- Sample rate r weighs an observation by 1/r for counters and sketch-backed types; gauges and sets
  ignore it.
No I/O here.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from statsd_gateway.sketch import Bins

Tags = tuple[tuple[str, str], ...]


class MetricType(enum.Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    TIMING = "timing"
    HISTOGRAM = "histogram"
    DISTRIBUTION = "distribution"
    SET = "set"

    @property
    def has_sketch(self) -> bool:
        """Types whose values are kept in a DDSketch (quantiles available)."""
        return self in _SKETCHED

    @property
    def aggregations(self) -> tuple[str, ...]:
        """The aggregations a query may ask of this type (quantiles shown as pNN)."""
        return _AGGREGATIONS[self]


_SKETCHED = frozenset(
    {MetricType.GAUGE, MetricType.TIMING, MetricType.HISTOGRAM, MetricType.DISTRIBUTION}
)
_NUMERIC = ("count", "sum", "avg", "min", "max", "rate")
_AGGREGATIONS: dict[MetricType, tuple[str, ...]] = {
    MetricType.COUNTER: _NUMERIC,
    MetricType.GAUGE: (*_NUMERIC, "last", "pNN"),
    MetricType.TIMING: (*_NUMERIC, "pNN"),
    MetricType.HISTOGRAM: (*_NUMERIC, "pNN"),
    MetricType.DISTRIBUTION: (*_NUMERIC, "pNN"),
    MetricType.SET: ("count", "distinct"),
}

# StatsD type codes → MetricType.
STATSD_TYPES: dict[str, MetricType] = {
    "c": MetricType.COUNTER,
    "g": MetricType.GAUGE,
    "ms": MetricType.TIMING,
    "h": MetricType.HISTOGRAM,
    "d": MetricType.DISTRIBUTION,
    "s": MetricType.SET,
}

# Limits of DESIGN.md §4.
NAME_MAX = 200
NAME_RE = re.compile(r"[A-Za-z0-9_.\-/:]{1,200}")
TAGS_MAX = 32
TAG_KEY_MAX = 100
TAG_VALUE_MAX = 200
# ddsketch accepts up to ~1.79e308 but then overflows computing quantiles: cap magnitudes here.
VALUE_ABS_MAX = 1e300
FUTURE_MAX_SECONDS = 600.0


def is_valid_value(v: float) -> bool:
    return math.isfinite(v) and abs(v) <= VALUE_ABS_MAX


def canonical_tags(pairs: list[tuple[str, str]] | dict[str, str]) -> Tags:
    """Sort by key, last duplicate wins."""
    d = pairs if isinstance(pairs, dict) else dict(pairs)
    return tuple(sorted(d.items()))


# (tenant, name, tags): a plain tuple, because the ingest hot path builds one per line.
SeriesKey = tuple[str, str, Tags]


@dataclass(slots=True)
class Point:
    """One observation on its way into the aggregator.

    `value` is a float for every type but sets, where it is the member as a string.
    `timestamp` is unix seconds, or None for "received now".
    """

    name: str
    type: MetricType
    value: float | str
    tags: Tags = ()
    sample_rate: float = 1.0
    timestamp: float | None = None
    delta: bool = False  # gauge only: value is a change of the current value


@dataclass(slots=True)
class BucketRow:
    """One series' aggregate over one bucket: what the flusher writes and the query reads.

    `sketch` holds the DDSketch bins of sketch-backed types, `hll` the serialised HyperLogLog of
    sets. `count` is sample-rate weighted; `min`/`max` are the raw extremes.
    """

    ts: float
    key: SeriesKey
    type: MetricType
    count: float
    sum: float
    min: float | None
    max: float | None
    last: float | None = None
    last_ts: float | None = None
    sketch: Bins | None = None
    hll: bytes | None = None
    blob: bytes | None = None  # the sketch still DDV1-encoded, when read for a batch quantile
