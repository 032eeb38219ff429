"""What the engine answers: typed arrays and values, for a renderer to turn into a language's
answer (our /v1 JSON: api/v1_query.py; the Prometheus HTTP API next). No JSON here."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from statsd_gateway.model import MetricType, Tags
from statsd_gateway.sketch import Bins


@dataclass(frozen=True, slots=True)
class SeriesResult:
    """One group's cells, in time order: `timestamps[i]` is the start of cell i (see
    plan.py), `values[i]` its value, NaN where the cell has rows but no value (no min among
    them, no sketch, a count of zero for an average). A cell that overflowed (a sum beyond
    float64, or one that overflowed both ways) is +-inf. A cell without rows is not listed."""

    tags: Tags
    timestamps: npt.NDArray[np.float64]
    values: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return int(self.timestamps.size)


@dataclass(frozen=True, slots=True)
class QueryResult:
    """A plan's answer: the metric's type, and the groups that have at least one cell, in
    the order of their tags (each group's tags as Grouping.group_of gives them)."""

    type: MetricType
    series: list[SeriesResult]


@dataclass(frozen=True, slots=True)
class MergedSketch:
    """The DDSketch of every matching row of a range merged into one, with the exact count,
    sum, min and max of the observations (min and max NaN when no row has one)."""

    type: MetricType
    bins: Bins
    count: float
    sum: float
    min: float
    max: float
