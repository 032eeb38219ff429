"""What a PromQL expression evaluates to, over every step of a query at once: a scalar (one
number a step), an instant vector (series × steps, NaN where a series has no value at a step),
a string, or a set of histograms, kept as the rows they come from until a function turns them
into numbers (histograms.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from statsd_gateway.promql.cells import F64, I64, Labels, SeriesRows

NAME = "__name__"


@dataclass(frozen=True, slots=True)
class Scalar:
    values: F64  # one per step


@dataclass(frozen=True, slots=True)
class StringValue:
    value: str


@dataclass(frozen=True, slots=True)
class Vector:
    """`labels[s]` of series s (sorted pairs, `__name__` among them where kept), `values[s, i]`
    its value at step i (NaN: none)."""

    labels: list[Labels]
    values: F64

    @staticmethod
    def empty(n_steps: int) -> Vector:
        return Vector([], np.empty((0, n_steps)))

    def present(self) -> Vector:
        """Without the series that have no value at any step."""
        keep = np.asarray(~np.isnan(self.values).all(axis=1), dtype=np.bool_)
        if keep.all():
            return self
        labels = [lab for lab, k in zip(self.labels, keep.tolist(), strict=True) if k]
        return Vector(labels, self.values[keep])


@dataclass(frozen=True, slots=True)
class Histograms:
    """Histograms per group and step, not yet reduced: the rows of a sketched metric
    (`rows`, with count, sum, min, max and sketches read), each step covering the cells
    [lo, hi) of the grid, and the group each series belongs to (`group_of[s]` indexes
    `groups`). `per_second`: a rate (counts divided by the window's seconds, `covered`) rather
    than an increase. `classic`: selected as `<name>_bucket` (so `le` is among the labels
    a grouping may name, and it must keep it)."""

    rows: SeriesRows
    lo: I64
    hi: I64
    covered: F64  # per step, the seconds of the cells a window holds
    width: float  # the range asked, what an increase extrapolates to
    groups: list[Labels]
    group_of: I64
    per_second: bool
    classic: bool


Value = Scalar | StringValue | Vector | Histograms


def drop_name(labels: Labels) -> Labels:
    return tuple(p for p in labels if p[0] != NAME)


def with_name(labels: Labels, name: str) -> Labels:
    return tuple(sorted((*drop_name(labels), (NAME, name))))
