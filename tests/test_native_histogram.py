"""native_histogram.py alone: the schema-6 bucket of a value, from the smallest float to ±Inf,
and the spans its buckets are written in."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from statsd_gateway import sketch
from statsd_gateway.exporter.native_histogram import MAX_GAP, bucket_index, native_histogram
from statsd_gateway.sketch import value_of

pytestmark = pytest.mark.same_in_both_passes

MAX_FLOAT = sys.float_info.max
SMALLEST_SUBNORMAL = math.ulp(0.0)  # 2^-1074


@pytest.mark.parametrize(
    ("value", "index"),
    [
        (1.0, 0),  # bucket i holds (2^((i-1)/64), 2^(i/64)]: a power of two ends its bucket
        (math.nextafter(1.0, 2.0), 1),
        (2.0, 64),
        (0.5, -64),
        (2.0**-1022, -1022 * 64),  # the smallest normal float
        (SMALLEST_SUBNORMAL, -1074 * 64),
        (3 * SMALLEST_SUBNORMAL, math.ceil(math.log2(3 * SMALLEST_SUBNORMAL) * 64)),
        (2.0**1023, 1023 * 64),
        (MAX_FLOAT, 1024 * 64),  # the last bucket of finite values, up to MaxFloat64
        (math.inf, 1024 * 64 + 1),  # Prometheus's ±Inf bucket: one past it
    ],
)
def test_the_bucket_of_a_value_is_prometheus_s(value: float, index: int) -> None:
    assert bucket_index(value) == index
    if math.isfinite(value):  # (i-1)/64 < log2(value) <= i/64, in logs: 2^(i/64) may overflow
        assert (index - 1) / 64 < math.log2(value) <= index / 64


# Sketch keys by the native bucket their bin's centre is in (a bin spans γ = 1.0202, about
# 1.85 native buckets of 2^(1/64): some native buckets hold no bin's centre).
KEY_IN_BUCKET = {bucket_index(value_of(k)): k for k in range(1, 400)}


def spans_with_gap(gap: int) -> tuple[int, list[tuple[int, int]]]:
    """(first bucket, positive spans) of a native histogram of two bins `gap` empty buckets
    apart."""
    start = next(i for i in sorted(KEY_IN_BUCKET) if i + gap + 1 in KEY_IN_BUCKET)
    keys = [KEY_IN_BUCKET[start], KEY_IN_BUCKET[start + gap + 1]]
    bins = sketch.Bins(
        np.array(keys, dtype=np.int64),
        np.ones(len(keys)),
        np.array([], dtype=np.int64),
        np.array([], dtype=np.float64),
        0.0,
    )
    native = native_histogram(bins, 1.0, 2.0)
    assert native is not None and native.positive.counts.count(1.0) == 2
    return start, native.positive.spans


def test_a_gap_of_max_gap_empty_buckets_stays_inside_the_span() -> None:
    start, spans = spans_with_gap(MAX_GAP)
    assert spans == [(start, MAX_GAP + 2)]  # both buckets and the empty ones between


def test_a_gap_of_max_gap_plus_one_empty_buckets_starts_a_span() -> None:
    start, spans = spans_with_gap(MAX_GAP + 1)
    assert spans == [(start, 1), (MAX_GAP + 1, 1)]  # the second span's offset: the gap
