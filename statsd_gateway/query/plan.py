"""The query plan: what a query language (our /v1 JSON API today, PromQL next) hands the engine.

A plan says which series to read (a metric selector), how to reduce their bucket rows (an
aggregation per cell), how to group series into result series (a grouping), over which range
and in which time cells (a window). It names no HTTP parameter, JSON field or text syntax: a
front end parses its language, checks what only it knows (its own names, limits and wording),
and builds a plan; the engine (engine.py) checks what is true of every language (the window
against the storage tiers, the aggregation against the metric's type) and runs it.

Cells (the engine's model, DESIGN.md §4): with a window, a cell is one window bucket
[b, b + window), b a multiple of the window since the epoch, and the rows read start at the
bucket holding `start`, so every cell is whole; without one, a single cell covers
[start, until) and is stamped `start`.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from statsd_gateway.model import Matcher, MetricType, Tags


class AggOp(enum.Enum):
    """How a cell's rows become one number."""

    COUNT = "count"  # observations, weighted by 1/sample rate
    SUM = "sum"
    AVG = "avg"  # sum / count
    MIN = "min"
    MAX = "max"
    LAST = "last"  # the value with the latest timestamp (gauges)
    RATE = "rate"  # sum per second of the cell
    COUNT_RATE = "count_rate"  # observations per second of the cell
    DISTINCT = "distinct"  # estimated distinct members (sets' HyperLogLogs merged)
    QUANTILE = "quantile"  # of the merged DDSketch, clamped into the exact [min, max]


# The numeric columns (store.base.NUMERIC_COLUMNS) each operation reads.
_COLUMNS: dict[AggOp, tuple[str, ...]] = {
    AggOp.COUNT: ("count",),
    AggOp.SUM: ("sum",),
    AggOp.AVG: ("count", "sum"),
    AggOp.RATE: ("sum",),
    AggOp.COUNT_RATE: ("count",),
    AggOp.MIN: ("min",),
    AggOp.MAX: ("max",),
    AggOp.LAST: ("last", "last_ts"),
    AggOp.DISTINCT: (),
    AggOp.QUANTILE: ("min", "max"),
}
# What a set's rows hold: a count of members and their HyperLogLog, no values.
_OF_SETS = frozenset({AggOp.COUNT, AggOp.COUNT_RATE, AggOp.DISTINCT})


@dataclass(frozen=True, slots=True)
class Aggregation:
    """One operation, with its quantile `q` (0..1) when the operation is QUANTILE."""

    op: AggOp
    q: float | None = None

    def __post_init__(self) -> None:
        if (self.op is AggOp.QUANTILE) != (self.q is not None):
            raise ValueError("a quantile aggregation, and only one, has a q")
        if self.q is not None and not 0.0 <= self.q <= 1.0:
            raise ValueError(f"a quantile lies in [0, 1], not {self.q}")

    @property
    def columns(self) -> tuple[str, ...]:
        """The numeric columns of the bucket rows this aggregation reads."""
        return _COLUMNS[self.op]

    @property
    def sketches(self) -> bool:
        return self.op is AggOp.QUANTILE

    @property
    def hll(self) -> bool:
        return self.op is AggOp.DISTINCT

    def applies_to(self, mtype: MetricType) -> bool:
        """Whether the rows of a metric of this type hold what the aggregation needs."""
        if mtype is MetricType.SET:
            return self.op in _OF_SETS
        if self.op is AggOp.DISTINCT:
            return False
        if self.op is AggOp.LAST:
            return mtype is MetricType.GAUGE
        if self.op is AggOp.QUANTILE:
            return mtype.has_sketch
        return True


@dataclass(frozen=True, slots=True)
class Grouping:
    """Which result series a series' rows go to, named by its tags.

    `by` (without=False): the tags among `keys` that the series carries, in the order of
    `keys`; `Grouping()` puts every series in one group, with no tags. `without=True`: all of
    the series' tags but `keys`. PromQL's `sum by (k)` and `sum without (k)` are the two."""

    keys: tuple[str, ...] = ()
    without: bool = False

    @property
    def is_total(self) -> bool:
        """Every series in one group: the rows' series need not be read."""
        return not self.keys and not self.without

    def group_of(self, tags: Tags) -> Tags:
        if self.without:
            return tuple((k, v) for k, v in tags if k not in self.keys)
        have = dict(tags)
        return tuple((k, have[k]) for k in self.keys if k in have)


@dataclass(frozen=True, slots=True)
class Selector:
    """The series of one metric of a tenant whose tags pass every matcher (Prometheus
    semantics, see model.Matcher)."""

    tenant: str
    name: str
    matchers: tuple[Matcher, ...] = ()


@dataclass(frozen=True, slots=True)
class QueryPlan:
    """A whole query: the cells of [start, until) (see the module docstring), each group's
    cells reduced by `aggregation`. `window` None: one cell over the range."""

    selector: Selector
    aggregation: Aggregation
    start: float
    until: float
    window: float | None = None
    grouping: Grouping = Grouping()

    def __post_init__(self) -> None:
        if not self.start < self.until:
            raise ValueError("a plan's range must not be empty: start < until")
        if self.window is not None and not (math.isfinite(self.window) and self.window > 0):
            raise ValueError(f"a window is a positive number of seconds, not {self.window}")

    @property
    def read_from(self) -> float:
        """Where the rows are read from: the start of the first cell."""
        w = self.window
        return math.floor(self.start / w) * w if w else self.start

    @property
    def cell_seconds(self) -> float:
        """How long one cell is (what RATE and COUNT_RATE divide by)."""
        return self.window if self.window else self.until - self.start
