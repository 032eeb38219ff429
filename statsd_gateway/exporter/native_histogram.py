"""A histogram series' merged DDSketch bins → a Prometheus native histogram (exponential
buckets), what protobuf.py puts beside the classic buckets.

Contract:
- `SCHEMA` is 6: native bucket i holds (2^((i-1)/64), 2^(i/64)], a width ratio of
  2^(1/64) ≈ 1.0109. The sketch's bins are γ = 1.0202 wide (relative accuracy α = 0.01), so
  schema 6 is the coarsest schema whose buckets are not wider than them (schema 5's are
  1.0219): two bins' values are γ apart, more than a native bucket spans, so no two bins
  share a native bucket and the native histogram keeps every bin the sketch has.
- Each bin's count goes to the native bucket that holds its value (the bin's centre, ÷ the
  series' unit scale, as the classic buckets take it); a negative bin to the negative bucket
  of its |value|. So an observation x lands in a bucket [L, U] with U/L = 2^(1/64) that holds
  a value within α of x, and a quantile Prometheus interpolates in that bucket is within
  (1 + α)·2^(1/64) − 1 ≈ 2.1 % of x (docs/PROMETHEUS.md, "The scrape").
- The zero bucket is the sketch's zero count, with the threshold the sketch counts as zero
  (|v| ≤ `sketch.MIN_POSSIBLE` in the unit sent, so ÷ the scale).
- Counts are exact or the native part is not made: when every count is a whole number below
  2**53 (so every sum is exact), `integral` is set and the buckets with the zero bucket must
  add up to the series' count exactly; otherwise (sample rates gave fractional weights) the
  counts are floats, the histogram's count is the sum of its buckets (Prometheus refuses a
  histogram whose buckets add up to more than its count), and that sum must agree with the
  series' count within float summation error. `native_histogram()` returns None where they
  do not agree.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from statsd_gateway import sketch
from statsd_gateway.sketch import MIN_POSSIBLE, value_of

SCHEMA = 6
_PER_OCTAVE = 1 << SCHEMA
# The upper bounds of an octave's buckets, as the fraction math.frexp gives ([0.5, 1)): a
# value v = f·2^e is in bucket (e - 1)·64 + the first j with f <= _OCTAVE[j].
_OCTAVE = [2.0 ** (j / _PER_OCTAVE) / 2 for j in range(_PER_OCTAVE)]
# The bucket Prometheus counts ±Inf in: one past the last bucket of finite values, 1024 << 6,
# whose upper bound (2^1024 by the formula) Prometheus takes as MaxFloat64 (getBound in
# model/histogram/generic.go).
_INF_INDEX = (1024 << SCHEMA) + 1
# Up to this many empty buckets stay inside a span (a zero delta costs a byte; a new span
# four), as client_golang writes its spans.
MAX_GAP = 2
_EXACT_LIMIT = 2.0**53  # below it, sums of whole numbers in float64 are exact
# How far (relatively) a float sum of the buckets may be from the series' count, the same
# weights summed in another order: float64 rounding over n additions is below n·2^-53, so
# this allows 10^10 of them; a count that lost or gained data is off by far more.
_FLOAT_AGREEMENT = 1e-6


@dataclass(frozen=True, slots=True)
class Side:
    """One sign's buckets: spans of (offset, length), the first offset the first bucket's
    index and each other the empty buckets since the previous span, and each bucket's
    count in order (0 for the empty ones kept inside a span)."""

    spans: list[tuple[int, int]]
    counts: list[float]


@dataclass(frozen=True, slots=True)
class NativeHistogram:
    count: float  # the buckets' and the zero bucket's sum
    zero_threshold: float
    zero_count: float
    positive: Side
    negative: Side
    integral: bool  # every count a whole number: written as integers and deltas
    schema: int = SCHEMA


def bucket_index(value: float) -> int:
    """The schema-6 bucket holding a value > 0 (inf: the bucket of ±Inf)."""
    if math.isinf(value):
        return _INF_INDEX
    fraction, exponent = math.frexp(value)
    return bisect.bisect_left(_OCTAVE, fraction) + (exponent - 1) * _PER_OCTAVE


def native_histogram(
    bins: sketch.Bins | None, scale: float, count: float
) -> NativeHistogram | None:
    """The native histogram of a series' bins since start (`bins` None: it has none), its
    values ÷ `scale`; None if its counts do not add up to the series' `count` (see the
    contract)."""
    bins = bins if bins is not None else sketch.Bins.empty()
    positive = _side(bins.pos_keys.tolist(), bins.pos_counts.tolist(), scale)
    negative = _side(bins.neg_keys.tolist(), bins.neg_counts.tolist(), scale)
    counts = [*positive.counts, *negative.counts, bins.zero, count]
    integral = all(c.is_integer() and 0 <= c < _EXACT_LIMIT for c in counts)
    # Summed as Prometheus checks them: each side in bucket order, then the zero bucket.
    total = (_sum(negative.counts) + _sum(positive.counts)) + bins.zero
    if integral:
        if total != count:
            return None
    elif not (
        math.isfinite(total)
        and math.isfinite(count)
        and abs(total - count) <= _FLOAT_AGREEMENT * max(total, count)
    ):
        return None
    return NativeHistogram(
        count=count if integral else total,
        zero_threshold=MIN_POSSIBLE / scale,
        zero_count=bins.zero,
        positive=positive,
        negative=negative,
        integral=integral,
    )


def _sum(values: list[float]) -> float:
    """Left to right, as Prometheus adds a side's buckets."""
    total = 0.0
    for v in values:
        total += v
    return total


def _side(keys: list[int], weights: list[float], scale: float) -> Side:
    spans: list[tuple[int, int]] = []
    counts: list[float] = []
    previous: int | None = None
    for key, weight in zip(keys, weights, strict=True):
        index = bucket_index(value_of(key) / scale)
        if index == previous:  # only bins whose values are past the largest float (inf)
            counts[-1] += weight
            continue
        if previous is None:
            spans.append((index, 1))
        elif index - previous - 1 <= MAX_GAP:
            gap = index - previous - 1
            counts.extend([0.0] * gap)
            offset, length = spans[-1]
            spans[-1] = (offset, length + gap + 1)
        else:
            spans.append((index - previous - 1, 1))
        counts.append(weight)
        previous = index
    return Side(spans, counts)
