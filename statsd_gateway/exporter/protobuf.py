"""A Scrape (state.py) → the Prometheus protobuf exposition: a stream of varint-length-delimited
`io.prometheus.client.MetricFamily` messages (client_model's metrics.proto), the format a
Prometheus with native histograms enabled asks for first.

Contract:
- `wants_protobuf(accept)` is true when the scraper's Accept prefers that format (the highest
  q-value, the first listed on a tie) to everything else it lists; the answer's Content-Type
  is then `PROTOBUF`.
- The families, names and labels are the text format's (families.py): the same series left
  out for the same reasons (and one more, below), counters without a `_total` added, timings
  in seconds. So are the values, but for two counts: a float histogram's count
  (`sample_count_float`) is the sum of its native buckets, within float rounding of the
  text format's `_count`, and a summary's count is rounded (below).
- A histogram series carries its classic buckets (its rule's bounds) and, beside them, its
  native histogram (native_histogram.py): a Prometheus without native histograms reads the
  first, one with them the second. Where the native histogram cannot be made exactly (its
  buckets do not add up to its count) the series is left out and counted as
  `native_count_mismatch`, not served with its classic buckets alone: Prometheus up to 3.2
  takes a family as native or classic from its first metric only, so a classic-only member
  after a native one is stored wrong (2.42) or fails the whole scrape (2.50 to 3.2), and a
  classic-only first member makes the family classic, where up to 2.44 the float counts of
  its weighted members are read as 0.
- A summary's count is an integer in this format (`sample_count`; Summary has no float
  count): where sample rates weigh observations and the count is not a whole number, it is
  rounded to the nearest (half up), at most 0.5 from the text format's `_count` and never
  smaller as the count grows, so no counter reset appears. The series is kept, as in the
  text format and statsd_exporter (which counts int(1/rate) events per line).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Final

from statsd_gateway.exporter.families import (
    LabelPairs,
    classic_buckets,
    families,
    help_text,
    scale_of,
)
from statsd_gateway.exporter.native_histogram import NativeHistogram, Side, native_histogram
from statsd_gateway.exporter.state import Scrape, SeriesState
from statsd_gateway.exporter.wire import Message, delimited
from statsd_gateway.model import SeriesKey

_MEDIA_TYPE = "application/vnd.google.protobuf"
_PROTO = "io.prometheus.client.MetricFamily"
PROTOBUF = f"{_MEDIA_TYPE}; proto={_PROTO}; encoding=delimited"


# Field numbers of io.prometheus.client's messages (client_model's metrics.proto).
class _Family:
    NAME: Final = 1  # string
    HELP: Final = 2  # string
    TYPE: Final = 3  # MetricType
    METRIC: Final = 4  # repeated Metric


class _Metric:
    LABEL: Final = 1  # repeated LabelPair
    GAUGE: Final = 2
    COUNTER: Final = 3
    SUMMARY: Final = 4
    HISTOGRAM: Final = 7


class _LabelPair:
    NAME: Final = 1  # string
    VALUE: Final = 2  # string


_VALUE: Final = 1  # Gauge.value and Counter.value, double


class _Summary:
    SAMPLE_COUNT: Final = 1  # uint64
    SAMPLE_SUM: Final = 2  # double
    QUANTILE: Final = 3  # repeated Quantile


class _Quantile:
    QUANTILE: Final = 1  # double
    VALUE: Final = 2  # double


class _Histogram:
    SAMPLE_COUNT: Final = 1  # uint64
    SAMPLE_SUM: Final = 2  # double
    BUCKET: Final = 3  # repeated Bucket (classic)
    SAMPLE_COUNT_FLOAT: Final = 4  # double, overrides sample_count if > 0
    SCHEMA: Final = 5  # sint32
    ZERO_THRESHOLD: Final = 6  # double
    ZERO_COUNT: Final = 7  # uint64
    ZERO_COUNT_FLOAT: Final = 8  # double, overrides zero_count if > 0
    NEGATIVE_SPAN: Final = 9  # repeated BucketSpan
    NEGATIVE_DELTA: Final = 10  # repeated sint64, each bucket's count less the previous one's
    NEGATIVE_COUNT: Final = 11  # repeated double, each bucket's count (float histograms)
    POSITIVE_SPAN: Final = 12
    POSITIVE_DELTA: Final = 13
    POSITIVE_COUNT: Final = 14


class _Bucket:
    CUMULATIVE_COUNT: Final = 1  # uint64
    UPPER_BOUND: Final = 2  # double
    CUMULATIVE_COUNT_FLOAT: Final = 4  # double, overrides cumulative_count if > 0


class _BucketSpan:
    OFFSET: Final = 1  # sint32
    LENGTH: Final = 2  # uint32


_TYPES = {"counter": 0, "gauge": 1, "summary": 2, "histogram": 4}  # enum MetricType
_UINT64_LIMIT = 2.0**64
_UINT64_MAX = (1 << 64) - 1


def wants_protobuf(accept: str) -> bool:
    """Whether the Accept's preferred media range (highest q, first on a tie) is ours."""
    best_q, best_is_protobuf = 0.0, False
    for media_range in accept.split(","):
        media_type, *parameters = media_range.split(";")
        params: dict[str, str] = {}
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            params[name.strip().lower()] = value.strip().strip('"')
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            continue  # a malformed range asks for nothing
        if 0 < q <= 1 and q > best_q:
            best_q = q
            best_is_protobuf = (
                media_type.strip().lower() == _MEDIA_TYPE
                and params.get("proto") == _PROTO
                and params.get("encoding") == "delimited"
            )
    return best_is_protobuf


def render_protobuf(scrape: Scrape, *, dropped: Counter[str]) -> bytes:
    """The exposition; what had to be left out is added to `dropped` by reason."""
    out = bytearray()
    for family, kind, members in families(scrape, dropped, False):
        message = Message()
        message.string(_Family.NAME, family)
        message.string(_Family.HELP, help_text(scrape, members))
        message.uint(_Family.TYPE, _TYPES[kind])
        served = 0
        for labels, key in members:
            metric = _metric(kind, labels, key, scrape, dropped)
            if metric is not None:
                message.message(_Family.METRIC, metric)
                served += 1
        if served:  # a family without metrics would only be skipped
            out += delimited(message)
    return bytes(out)


def _metric(
    kind: str, labels: LabelPairs, key: SeriesKey, scrape: Scrape, dropped: Counter[str]
) -> Message | None:
    state = scrape.series[key]
    metric = Message()
    for label, text in labels:
        pair = Message()
        pair.string(_LabelPair.NAME, label)
        pair.string(_LabelPair.VALUE, text)
        metric.message(_Metric.LABEL, pair)
    value = Message()
    if kind == "counter":
        value.double(_VALUE, state.total)
        metric.message(_Metric.COUNTER, value)
    elif kind == "gauge":
        value.double(_VALUE, state.value)
        metric.message(_Metric.GAUGE, value)
    elif kind == "summary":
        _summary(value, state, scrape.quantiles.get(key))
        metric.message(_Metric.SUMMARY, value)
    else:
        native = native_histogram(scrape.since_start.get(key), scale_of(state), state.count)
        if native is None:
            dropped["native_count_mismatch"] += 1
            return None
        _histogram(value, state, scrape, key, native)
        metric.message(_Metric.HISTOGRAM, value)
    return metric


def _is_count(value: float) -> bool:
    """Whether a float is exactly a uint64."""
    return value.is_integer() and 0 <= value < _UINT64_LIMIT


def rounded_count(value: float) -> int:
    """A count as a uint64: the nearest whole number, half up (a monotone rounding, so a count
    that grows never reads smaller), within [0, 2**64)."""
    whole = math.floor(value)
    # value - whole is exact (finite value): floor(value + 0.5) would round 0.49999999999999994
    # up, and 2**52 + 1 to 2**52 + 2.
    return min(max(whole + (value - whole >= 0.5), 0), _UINT64_MAX)


def _summary(summary: Message, state: SeriesState, values: tuple[float, ...] | None) -> None:
    scale = scale_of(state)
    qs = state.quantiles
    summary.uint(_Summary.SAMPLE_COUNT, rounded_count(state.count))
    summary.double(_Summary.SAMPLE_SUM, state.total / scale)
    for q, v in zip(qs, values or (math.nan,) * len(qs), strict=True):
        quantile = Message()
        quantile.double(_Quantile.QUANTILE, q)
        quantile.double(_Quantile.VALUE, v / scale)
        summary.message(_Summary.QUANTILE, quantile)


def _histogram(
    histogram: Message,
    state: SeriesState,
    scrape: Scrape,
    key: SeriesKey,
    native: NativeHistogram,
) -> None:
    scale = scale_of(state)
    # Its count is the native buckets' sum (equal to the series' count when whole; within
    # float rounding of it when not), so that the two parts agree. A float native histogram
    # is one whose sample_count_float is set: Prometheus reads its buckets as float counts
    # then, and as deltas otherwise, even if that float is whole.
    if native.integral and _is_count(native.count):
        histogram.uint(_Histogram.SAMPLE_COUNT, int(native.count))
    else:
        histogram.double(_Histogram.SAMPLE_COUNT_FLOAT, native.count)
    histogram.double(_Histogram.SAMPLE_SUM, state.total / scale)
    for upper, cumulative in classic_buckets(state, scrape.since_start.get(key), scale):
        bucket = Message()
        if _is_count(cumulative):
            bucket.uint(_Bucket.CUMULATIVE_COUNT, int(cumulative))
        else:
            bucket.double(_Bucket.CUMULATIVE_COUNT_FLOAT, cumulative)
        bucket.double(_Bucket.UPPER_BOUND, upper)
        histogram.message(_Histogram.BUCKET, bucket)
    _native(histogram, native)


def _native(histogram: Message, native: NativeHistogram) -> None:
    histogram.sint(_Histogram.SCHEMA, native.schema)
    histogram.double(_Histogram.ZERO_THRESHOLD, native.zero_threshold)
    if native.integral:
        histogram.uint(_Histogram.ZERO_COUNT, int(native.zero_count))
    else:
        histogram.double(_Histogram.ZERO_COUNT_FLOAT, native.zero_count)
    sides = (
        (native.negative, _Histogram.NEGATIVE_SPAN, _Histogram.NEGATIVE_DELTA,
         _Histogram.NEGATIVE_COUNT),
        (native.positive, _Histogram.POSITIVE_SPAN, _Histogram.POSITIVE_DELTA,
         _Histogram.POSITIVE_COUNT),
    )  # fmt: skip
    for side, span_field, delta_field, count_field in sides:
        _spans(histogram, side, span_field)
        if native.integral:
            previous = 0
            for c in side.counts:
                histogram.sint(delta_field, int(c) - previous)
                previous = int(c)
        else:
            for c in side.counts:
                histogram.double(count_field, c)


def _spans(histogram: Message, side: Side, field: int) -> None:
    for offset, length in side.spans:
        span = Message()
        span.sint(_BucketSpan.OFFSET, offset)
        span.uint(_BucketSpan.LENGTH, length)
        histogram.message(field, span)
