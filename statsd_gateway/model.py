"""The contracts every stage shares: metric types and their limits, series keys, the sample that
enters the aggregator, and the bucket rows (`RowBatch`) that leave it.

Rules (DESIGN.md §2):
- A series is (tenant, name, tag set). A tag set is canonical: keys sorted, duplicates resolved
  last-wins; it is represented as a tuple of (key, value) pairs.
- Each series the daemon knows has an integer id, assigned when it is first admitted (or read
  from the store at start) and stable while it is known; the series registry
  (series_registry.py) is the one place that maps an id to its key and type.
- A metric's type is fixed per (tenant, name) by its first point.
- Sample rate r weighs an observation by 1/r for counters and sketch-backed types; gauges and sets
  ignore it.
- What crosses the seams: every transport hands `Sample`s to the aggregator (ingest.py); the
  aggregator hands out nothing but `RowBatch`es, for a flushed snapshot and for the live interval
  a query reads.
No I/O here.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import re2  # type: ignore[import-untyped]

from statsd_gateway import sketch
from statsd_gateway.sketch import Bins, FlatBins

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
    # A gauge is a level, not a flow: no rate of it means anything a StatsD user expects.
    MetricType.GAUGE: ("count", "sum", "avg", "min", "max", "last", "pNN"),
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
TAGS_MAX = 32
TAG_KEY_MAX = 100
TAG_VALUE_MAX = 200
# ddsketch accepts up to ~1.79e308 but then overflows computing quantiles: cap magnitudes here.
VALUE_ABS_MAX = 1e300
# A sample rate r weighs a value by 1/r; below this the weight (and a flush's sums of weights)
# could overflow to infinity, which no sketch can hold. No real client samples that sparsely.
SAMPLE_RATE_MIN = 1e-9
FUTURE_MAX_SECONDS = 600.0


def is_utf8_text(text: str) -> bool:
    """True when `text` encodes as UTF-8. JSON's `\\ud800` escapes and header bytes that were
    not UTF-8 (aiohttp keeps them as surrogates) decode to lone surrogates, which no store, log
    or JSON answer can encode: every string a client sends is checked with this at the door."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class MatchOp(enum.Enum):
    """A label matcher's operator, as PromQL spells it."""

    EQUAL = "="
    NOT_EQUAL = "!="
    REGEX = "=~"
    NOT_REGEX = "!~"


@dataclass(frozen=True, slots=True)
class Matcher:
    """One tag matcher of a query's series selector, with Prometheus' semantics: a tag a series
    does not carry has the value "" (so `k!="x"` and `k=""` select series without `k`), and a
    regex must match the whole value (it is anchored at both ends). `present`: the series must
    carry the tag (our /v1 `tags` filter, where `canary:` selects the bare tag `canary`)."""

    key: str
    op: MatchOp
    value: str
    present: bool = False

    def __post_init__(self) -> None:
        if self.op in (MatchOp.REGEX, MatchOp.NOT_REGEX):
            _anchored(self.value)  # a bad regex fails here, where the matcher is made

    def accepts(self, value: str | None) -> bool:
        """Whether a series whose tag `key` is `value` (None when absent) passes."""
        if value is None:
            if self.present:
                return False
            value = ""
        op = self.op
        if op is MatchOp.EQUAL:
            return value == self.value
        if op is MatchOp.NOT_EQUAL:
            return value != self.value
        hit = _anchored(self.value).fullmatch(value) is not None
        return hit if op is MatchOp.REGEX else not hit

    def matches(self, tags: Tags) -> bool:
        return self.accepts(dict(tags).get(self.key))


def _anchored(pattern: str) -> Any:
    """The compiled matcher regex: RE2's syntax and linear time, as Prometheus' (Go's regexp
    is RE2): a client's pattern can neither use what RE2 refuses nor take exponential time.
    A pattern RE2 refuses raises ValueError."""
    compiled = _REGEX_CACHE.get(pattern)
    if compiled is None:
        if len(_REGEX_CACHE) >= 1024:
            _REGEX_CACHE.clear()
        try:
            compiled = re2.compile(pattern)
        except re2.error as e:
            raw = e.args[0] if e.args else e
            detail = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            raise ValueError(f"invalid regular expression {pattern!r}: {detail}") from None
        _REGEX_CACHE[pattern] = compiled
    return compiled


_REGEX_CACHE: dict[str, Any] = {}


def matches_all(tags: Tags, matchers: Sequence[Matcher]) -> bool:
    if not matchers:
        return True
    have = dict(tags)
    return all(m.accepts(have.get(m.key)) for m in matchers)


# (tenant, name, tags): a plain tuple, the key of a series wherever its id is not used.
SeriesKey = tuple[str, str, Tags]


class Sample(NamedTuple):
    """One observation on its way into the aggregator, from any transport (tenant aside: a
    whole batch of samples has one).

    A tuple, so that the aggregator's hot loop unpacks it rather than reading seven attributes
    (a tuple subclass takes CPython's generic unpacking path all the same: ~40 ns a sample more
    than a plain tuple, measured). The StatsD parser builds millions, with
    `tuple.__new__(Sample, (...))`: ~135 ns, where calling the class costs ~250.
    `value` is a float for every type but sets, where it is the member as a string.
    `timestamp` is unix seconds, or None for "received now". `is_gauge_delta` (gauges only):
    `value` is a change of the current value, not a value.
    """

    name: str
    tags: Tags
    type: MetricType
    value: float | str
    sample_rate: float
    timestamp: float | None
    is_gauge_delta: bool


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


_F64 = npt.NDArray[np.float64]


def _nan_to_none(a: _F64) -> list[float | None]:
    if not np.isnan(a).any():
        return a.tolist()  # type: ignore[no-any-return]
    return [None if x != x else x for x in a.tolist()]


def _none_to_nan(xs: Sequence[float | None]) -> _F64:
    return np.array([math.nan if x is None else x for x in xs], dtype=np.float64)


@dataclass(slots=True, eq=False)
class RowBatch:
    """Bucket rows as columns: what a flush finishes, writes and folds into the rollups, without
    a Python object per row (a flush holds one row per series).

    Row i is (ts[i], keys[i], types[i], count[i], …); NaN stands where a BucketRow has None.
    `sketches` holds one item per row (empty bins for rows without a sketch), `has_sketch`
    which rows have one, `hll` the HyperLogLog blob of set rows. `series` is the registry id
    of each row's series (int64) in every batch the aggregator hands out; None in batches
    built from rows that carry no id (BucketRows, the store's reads, the rollups' merges).
    `keys` and `types` repeat what the registry says of those ids, for the stages that still
    key by series key. Treat a batch as immutable.
    """

    ts: _F64
    keys: list[SeriesKey]
    types: list[MetricType]
    count: _F64
    sum: _F64
    min: _F64
    max: _F64
    last: _F64
    last_ts: _F64
    sketches: FlatBins
    has_sketch: npt.NDArray[np.bool_]
    hll: list[bytes | None]
    series: npt.NDArray[np.int64] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    @staticmethod
    def from_rows(rows: Sequence[BucketRow]) -> RowBatch:
        empty = Bins.empty()
        return RowBatch(
            ts=np.array([r.ts for r in rows], dtype=np.float64),
            keys=[r.key for r in rows],
            types=[r.type for r in rows],
            count=np.array([r.count for r in rows], dtype=np.float64),
            sum=np.array([r.sum for r in rows], dtype=np.float64),
            min=_none_to_nan([r.min for r in rows]),
            max=_none_to_nan([r.max for r in rows]),
            last=_none_to_nan([r.last for r in rows]),
            last_ts=_none_to_nan([r.last_ts for r in rows]),
            sketches=sketch.flat_from_bins([r.sketch or empty for r in rows]),
            has_sketch=np.array([r.sketch is not None for r in rows], dtype=np.bool_),
            hll=[r.hll for r in rows],
        )

    def rows(self) -> list[BucketRow]:
        """One BucketRow per row (tests, tools and the rare per-row paths)."""
        cols = [_nan_to_none(a) for a in (self.min, self.max, self.last, self.last_ts)]
        has = self.has_sketch.tolist()
        return [
            BucketRow(
                t, k, ty, c, s, mn, mx, la, lt, self.sketches.bins(i) if has[i] else None, h
            )
            for i, (t, k, ty, c, s, mn, mx, la, lt, h) in enumerate(
                zip(
                    self.ts.tolist(), self.keys, self.types, self.count.tolist(),
                    self.sum.tolist(), *cols, self.hll, strict=True,
                )
            )
        ]  # fmt: skip

    def nullable(self, column: str) -> list[float | None]:
        """A float column as SQL parameters: NaN → None."""
        a: _F64 = getattr(self, column)
        return _nan_to_none(a)

    def take(self, idx: npt.NDArray[Any]) -> RowBatch:
        """Rows idx (integer indices, in that order)."""
        sel = np.asarray(idx, dtype=np.int64)
        at = sel.tolist()
        return RowBatch(
            self.ts[sel], [self.keys[i] for i in at], [self.types[i] for i in at],
            self.count[sel], self.sum[sel], self.min[sel], self.max[sel], self.last[sel],
            self.last_ts[sel], sketch.flat_take(self.sketches, sel), self.has_sketch[sel],
            [self.hll[i] for i in at], None if self.series is None else self.series[sel],
        )  # fmt: skip

    @staticmethod
    def concat(batches: Sequence[RowBatch]) -> RowBatch:
        if len(batches) == 1:
            return batches[0]
        if not batches:
            return RowBatch.from_rows([])

        def cat(name: str) -> _F64:
            return np.concatenate([getattr(b, name) for b in batches])

        ids = [b.series for b in batches if b.series is not None]
        return RowBatch(
            cat("ts"), [k for b in batches for k in b.keys], [t for b in batches for t in b.types],
            cat("count"), cat("sum"), cat("min"), cat("max"), cat("last"), cat("last_ts"),
            sketch.flat_concat([b.sketches for b in batches]),
            np.concatenate([b.has_sketch for b in batches]), [h for b in batches for h in b.hll],
            np.concatenate(ids) if len(ids) == len(batches) else None,
        )  # fmt: skip
