"""The native core against the pure-Python reference: the same datagrams, fed to both, give the
same rows (count, sum, min, max, last, quantile sketches, set cardinality), the same series with
the same ids, the same current gauge values and the same counts by transport and reason.

Random datagrams (hypothesis) are built from StatsD's own vocabulary, so that they reach every
rule: packed values, Etsy multi-metric lines, every tag style, sample rates, client timestamps,
bad UTF-8, binary noise and lines past the length limit.
"""

from __future__ import annotations

import json
import math
import pathlib
from array import array
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statsd_gateway import accumulator, held_interval, native, sketch
from statsd_gateway.aggregator import IntervalAggregator
from statsd_gateway.api.schemas import decode_typed_batch, parse_batch, parse_point, sample_of
from statsd_gateway.ingest import Ingest, LoggedBody
from statsd_gateway.mapping import Mapper, parse_rules
from statsd_gateway.model import MetricType, Sample
from statsd_gateway.protocol import StatsdParser
from statsd_gateway.series_registry import SeriesRegistry
from statsd_gateway.store.rollup import merge_rows
from statsd_gateway.telemetry import Telemetry
from statsd_gateway.wal import WriteAheadLog
from tests.conftest import PARITY, T0, ManualClock, require_native_core

MODULE = require_native_core(module=True)


class Path:
    """One ingest path: its registry, aggregator, telemetry, clock."""

    def __init__(self, *, use_native: bool, gauge_sign: str = "delta", sanitise: str = "statsd",
                 max_series: int = 40, rules: str | None = None) -> None:  # fmt: skip
        """`rules`: the text of a mapping file the parser applies."""
        self.clock = ManualClock()
        self.registry = SeriesRegistry()
        self.aggregator = IntervalAggregator(
            interval=10.0,
            clock=self.clock,
            registry=self.registry,
            max_series_per_tenant=max_series,
            max_backdate=3600.0,
        )
        self.telemetry = Telemetry()
        self.parser = StatsdParser(gauge_sign=gauge_sign, sanitise=sanitise)
        if rules is not None:
            self.parser.set_mapper(Mapper(parse_rules(rules), self.parser.sanitise))
        self.ingest = Ingest(self.aggregator, self.telemetry, self.parser)
        self.live = None
        if use_native:
            assert MODULE is not None
            self.live = native.NativeLive(
                MODULE, self.aggregator, self.parser, self.telemetry,
                gauge_delta=gauge_sign == "delta", clock=self.clock,
            )  # fmt: skip
            self.ingest.native = self.live

    def send(self, data: bytes, transport: str = "udp") -> None:
        self.ingest.statsd_lines("default", data, transport)

    def outcome(self) -> dict[str, Any]:
        """What the interval comes to. Where the swap kept the native core's interval held
        (Snapshot.held, finished in one pass), the same snapshot is also turned into
        accumulators and finished as those: both must give the same rows."""
        snap = self.aggregator.swap()
        rows = self.aggregator.snapshot_rows(snap)
        if snap.held is not None:
            held, order = _rows_outcome(rows), _row_order(rows)
            held_interval.materialize(snap, self.registry)
            rows = self.aggregator.snapshot_rows(snap)
            assert _rows_outcome(rows) == held
            assert _row_order(rows) == order  # sums over rows add in row order
        self.aggregator.release(snap)
        out: dict[str, Any] = {
            "series": sorted(
                (sid, key)
                for key_map in self.registry.series.values()
                for key, sid in key_map.items()
            ),
            "gauges": dict(sorted(snap.gauges.items())),
            "packets": dict(+self.telemetry.packets),
            "lines": dict(+self.telemetry.lines),
            "accepted": dict(+self.telemetry.accepted),
            "rejects": dict(+self.telemetry.rejects),
            "ignored": dict(+self.telemetry.ignored),
        }
        return {**out, **_rows_outcome(rows)}


def _rows_outcome(rows: Any) -> dict[str, Any]:
    """A RowBatch's rows by (bucket, series), every column of them."""
    order = np.lexsort((rows.series, rows.ts))
    out: dict[str, Any] = {}
    for col in ("ts", "series", "count", "sum", "min", "max", "last", "last_ts"):
        out[col] = [_same(x) for x in getattr(rows, col)[order].tolist()]
    out["sketches"] = [_sketch(rows, int(i)) for i in order]
    out["hll"] = [rows.hll[int(i)] for i in order]
    out["types"] = [rows.types[int(i)] for i in order]
    out["keys"] = [rows.keys[int(i)] for i in order]
    return out


def _row_order(rows: Any) -> list[tuple[float, int]]:
    return list(zip(rows.ts.tolist(), rows.series.tolist(), strict=True))


def _same(x: float) -> Any:
    return "nan" if isinstance(x, float) and math.isnan(x) else x


def _sketch(rows: Any, i: int) -> Any:
    if not rows.has_sketch[i]:
        return None
    b = rows.sketches.bins(i)
    return (b.pos_keys.tolist(), b.pos_counts.tolist(), b.neg_keys.tolist(),
            b.neg_counts.tolist(), b.zero, bool(rows.sketches.integral[i]))  # fmt: skip


def both(**kw: Any) -> tuple[Path, Path]:
    return Path(use_native=False, **kw), Path(use_native=True, **kw)


def assert_same(datagrams: list[bytes], **kw: Any) -> None:
    ref, nat = both(**kw)
    for data in datagrams:
        ref.send(data)
        nat.send(data)
    assert nat.outcome() == ref.outcome()


# ---- hand-written cases: each rule once

CASES = [
    b"hits:1|c",
    b"hits:1|c\nhits:2|c|@0.5\nlat:3|ms\nlat:4.5|ms|@0.25",
    b"g:5|g\ng:+3|g\ng:-1|g\ng:+x|g",
    b"t:1:2::3|ms\nt:|ms\nt::|ms",
    b"a:1|c|@0.5:2|c:3|ms",
    b"a:1|c:2|x",
    b"u:alice|s\nu:bob|s\nu:alice|s\nu:a:b|s\nu:|s",
    b"x:1|c|#env:prod,host:a\nx:1|c|#host:a,env:prod|#zone:1",
    b"x,env=prod,host=a:1|c\nx#env=prod:1|c\nx[env=prod]:1|c\nx,env=prod:1|c|#a:b",
    b"x,=v:1|c\nx,k:1|c\n:1|c\n...:1|c\n  :1|c\nx y/z\xc3\xa9:1|c",
    b"x:1|c|T1700000000\nx:1|c|T99999999999\nx:1|c|T0\nx:1|c|T-5\nx:1|c|T\nx:1|c|T1e3",
    b"x:1e2|c\nx:0x10|c\nx:inf|c\nx:nan|ms\nx:1e400|c\nx:-1e300|ms",
    b"x: 1|c\nx:1_0|c\nx:\xef\xbc\x91|c\nx:1.|c\nx:.5|ms\nx:.|c\nx:1e|c\nx:Infinity|c",
    b"x:1|c|@0\nx:1|c|@1.5\nx:1|c|@\nx:1|c|@nan\nx:1|c|@1e-9\nx:1|c|@ 0.5",
    b"x:1|c|c:abc|e:1|card:low|zz\nx:1|c||",
    b"_e{5,4}:title|text\n_sc|check|0\n_x:1|c",
    b"\xff\xfe:1|c\nok:1|c\n\xed\xa0\x80:1|c\n\xc0\x80:1|c",
    b"x:1|c\r\n\r\ny:2|c\r",
    b"x" * 9000 + b":1|c\nshort:1|c",
    b"x:1|h\nx:1|c\ny:1|d\ny:2|d|@0.1\nz:1|q\nz:1\nz\n|c\nz:1|",
    b"\x00\x01\x02:1|c\nn\x00ame:1|c",
]


@pytest.mark.parametrize("data", CASES, ids=range(len(CASES)))
def test_each_rule_as_the_reference(data: bytes) -> None:
    assert_same([data])


@pytest.mark.parametrize("gauge_sign", ["delta", "absolute"])
@pytest.mark.parametrize("sanitise", ["statsd", "none", "prometheus"])
def test_settings_as_the_reference(gauge_sign: str, sanitise: str) -> None:
    assert_same(CASES, gauge_sign=gauge_sign, sanitise=sanitise)


def test_cardinality_limit_as_the_reference() -> None:
    lines = b"\n".join(b"m%d:1|c" % i for i in range(60))
    assert_same([lines, lines], max_series=25)


def test_client_timestamps_land_in_their_buckets() -> None:
    old = int(T0 - 7200)
    recent = int(T0 - 30)
    future = int(T0 + 3600)
    assert_same([b"x:1|c|T%d\nx:2|c|T%d\nx:3|c|T%d\nx:4|c" % (old, recent, future)])


# ---- random datagrams

VOCAB = [
    b"a", b"b.c", b"x_y", b"hits", b"lat", b"g", b"u", b"env", b"prod", b"host", b"1", b"2",
    b"-1", b"+3", b"0.5", b"1e3", b"nan", b"inf", b"", b":", b"|", b"|c", b"|g", b"|ms", b"|h",
    b"|d", b"|s", b"|x", b"|@0.5", b"|@0.1", b"|@2", b"|#", b"#", b",", b"=", b"[", b"]",
    b"|T1700000000", b"|T170000000", b"|T", b"|c:x", b"_e{1,1}:a|b", b"_sc|a|0", b" ",
    b"/", b"\r", b"\n", b"\xc3\xa9", b"\xff", b"\x00", b"\xed\xa0\x80",
]  # fmt: skip

line_parts = st.lists(st.sampled_from(VOCAB), min_size=1, max_size=12).map(b"".join)
valid_line = st.builds(
    lambda name, tags, values, kind, rate: b"%s:%s|%s%s%s" % (name, values, kind, rate, tags),
    st.sampled_from([b"a", b"b.c", b"hits", b"g", b"u", b"x,env=prod", b"y#k=v", b"z[k=v]"]),
    st.sampled_from([b"", b"|#env:prod", b"|#env:prod,host:a", b"|#k"]),
    st.lists(
        st.sampled_from([b"1", b"2.5", b"-1", b"+3", b"0", b"7e1"]), min_size=1, max_size=4
    ).map(b":".join),
    st.sampled_from([b"c", b"g", b"ms", b"h", b"d", b"s"]),
    st.sampled_from([b"", b"", b"|@0.5", b"|@0.25"]),
)
datagram = st.lists(st.one_of(valid_line, line_parts, st.binary(max_size=40)), max_size=8).map(
    b"\n".join
)


@settings(PARITY, max_examples=max(PARITY.max_examples // 5, 50))
@given(st.lists(datagram, min_size=1, max_size=4), st.sampled_from(["delta", "absolute"]))
def test_random_datagrams_as_the_reference(datagrams: list[bytes], gauge_sign: str) -> None:
    assert_same(datagrams, gauge_sign=gauge_sign)


# ---- timer values binned by the native core (sg_bins.c) against bin_flat, the reference

magnitude = st.one_of(
    st.floats(min_value=-3, max_value=3),  # 0.001 .. 1000: close keys, counted densely
    st.floats(min_value=-300, max_value=300),  # far apart: counted through a sort
    st.sampled_from([-308.0, -307.7, 307.5]),  # next to the zero bucket and to the largest
)
timer_value = st.builds(
    lambda m, sign: sign * 10.0**m, magnitude, st.sampled_from([1.0, 1.0, 1.0, -1.0, 0.0])
)
weight = st.sampled_from([1.0, 2.0, 10.0, 1 / 0.3, 1 / 0.7, 1e9])


@settings(PARITY, max_examples=max(PARITY.max_examples // 10, 50))
@given(
    st.lists(
        st.tuples(st.lists(timer_value, max_size=80), st.booleans(), st.data()),
        min_size=1,
        max_size=12,
    )
)
def test_native_binning_is_bin_flat(series: list[tuple[list[float], bool, Any]]) -> None:
    """bin_values over arrays, as the flush calls it: bit-identical to bin_flat over the same
    values and weights (keys, counts added in the values' order, zero bucket, integrality)."""
    values = [array("d", v) for v, _, _ in series]
    weights = [
        array("d", data.draw(st.lists(weight, min_size=len(v), max_size=len(v))))
        if weighted else None
        for v, weighted, data in series
    ]  # fmt: skip
    assert_native_bins_are_bin_flat(values, weights)


def assert_native_bins_are_bin_flat(values: list[Any], weights: list[Any]) -> None:
    """bin_values of these arrays (weights: an array or None each) equals bin_flat of the same
    values and weights, every array of it, and its integrality."""
    assert MODULE is not None
    weighted = any(w is not None for w in weights)
    got = MODULE.bin_values(values, weights if weighted else None)
    assert got is not None
    types = (np.int64, np.float64, np.int64, np.float64)
    keys, counts, bounds, zero = (np.frombuffer(b, t) for b, t in zip(got, types, strict=True))
    flat_v = np.concatenate([np.asarray(v, dtype=np.float64) for v in values])
    flat_w = None
    if weighted:
        flat_w = np.concatenate([
            np.asarray(w if w is not None else [1.0] * len(v), dtype=np.float64)
            for v, w in zip(values, weights, strict=True)
        ])  # fmt: skip
    offsets = np.cumsum([0] + [len(v) for v in values])
    want = sketch.bin_flat(flat_v, flat_w, offsets)
    assert keys.tolist() == want.keys.tolist()
    assert counts.tolist() == want.counts.tolist()
    assert bounds.tolist() == want.bounds.tolist()
    assert zero.tolist() == want.zero.tolist()
    assert sketch.flat_from_arrays(keys, counts, bounds, zero).integral.tolist() == (
        want.integral.tolist()
    )


def edge_values() -> list[float]:
    """Where a key formula that is not key_of's (log2, another order of operations) or a zero
    bucket edge off by one would show: powers of gamma and their neighbours, either side of
    MIN_POSSIBLE, -0.0, subnormals, the extremes."""
    powers = [sketch.GAMMA**k for k in range(-3000, 3001, 7)]
    edges = [x for p in powers for x in (p, math.nextafter(p, 0), math.nextafter(p, math.inf))]
    edges += [1.4623031129344288]  # key 20 by key_of, 19 by ceil(log2(v) * mult)
    mp = sketch.MIN_POSSIBLE
    special = [0.0, -0.0, 5e-324, -5e-324, 1e-310, mp, -mp, math.nextafter(mp, 1),
               -math.nextafter(mp, 1), math.nextafter(mp, 0), 1e300, -1e300, 1.7e308]  # fmt: skip
    return edges + [-x for x in edges] + special


def test_native_binning_is_bin_flat_at_the_edges() -> None:
    """The key edges in one series (far apart: the sort path) and in short runs (close: the
    dense path), and one key weighted many times over with weights whose sums depend on their
    order (1e9, 1/0.3, 1/0.7, ...), through both paths."""
    edges = edge_values()
    runs = [edges] + [edges[i : i + 3] for i in range(0, len(edges), 3)]
    repeated = [5.0] * 40 + [1e200, 5.0, -5.0] * 5
    order = [1e9, 1 / 0.3, 1 / 0.7, 1.0, 3.0, 1 / 0.3] * 9
    values = [array("d", r) for r in [*runs, repeated]]
    weights = [None] * len(runs) + [array("d", (order * 2)[: len(repeated)])]
    assert_native_bins_are_bin_flat(values, weights)


def test_native_binning_leaves_a_value_that_is_not_finite_to_bin_flat() -> None:
    """A gauge run to infinity by +N changes cannot be binned: the native binner says so
    (None), and bin_flat raises the error that names it, as on the pure-Python path."""
    assert MODULE is not None
    assert MODULE.bin_values([array("d", [1.0]), array("d", [2.0, math.inf])], None) is None
    assert MODULE.bin_values([array("d", [math.nan])], None) is None
    # ...and so is a weight bin_flat would refuse (the core never makes one: rates are checked)
    for bad in (0.0, -1.0, math.inf, math.nan):
        assert MODULE.bin_values([array("d", [1.0])], [array("d", [bad])]) is None


def test_a_flush_of_native_arrays_and_python_lists_is_binned_by_the_core_as_bin_flat() -> None:
    """A body applied after a swap takes the reference's path, so a flush can hold both the
    core's arrays and Python lists (weighted or not): all of it is binned by the core, exactly
    as bin_flat bins it, rather than the lists sending the whole flush through numpy. Lists
    alone (the pure-Python path) stay bin_flat's."""

    def acc(values: Any, weights: Any = None) -> accumulator.SeriesAccumulator:
        a = accumulator.SeriesAccumulator(MetricType.TIMING)
        a.count, a.sum = float(len(values)), float(sum(values))
        a.min, a.max = min(values), max(values)
        a.values, a.weights = values, weights
        return a

    def rows(accs: list[accumulator.SeriesAccumulator]) -> Any:
        n = len(accs)
        keys = [("t", "lat", (("host", str(i)),)) for i in range(n)]
        return accumulator.finish_rows([T0] * n, list(range(n)), accs, keys)

    def mixed() -> list[accumulator.SeriesAccumulator]:
        return [
            acc(array("d", [1.0, 2.5, 1e6])),
            acc([3.0, -4.0, 0.0]),
            acc([7.0, 7.0], [2.0, 1 / 0.3]),
            acc(array("d", [5.0]), array("d", [10.0])),
        ]

    calls: list[bool] = []
    binning = accumulator.native_binning
    assert binning is not None

    def spy(values: Any, weights: Any) -> Any:
        calls.append(all(type(v) is array for v in values))
        return binning(values, weights)

    accumulator.native_binning = spy
    try:
        got = rows(mixed())
        assert calls == [True]
        rows([acc([1.0, 2.0]), acc([3.0], [2.0])])
        assert calls == [True]  # lists alone: not the core's
    finally:
        accumulator.native_binning = binning
    accumulator.native_binning = None
    try:
        want = rows(mixed())
    finally:
        accumulator.native_binning = binning
    for field in ("keys", "counts", "bounds", "zero", "integral"):
        assert getattr(got.sketches, field).tolist() == getattr(want.sketches, field).tolist()


@settings(PARITY, max_examples=max(PARITY.max_examples // 20, 50))
@given(
    st.lists(
        st.tuples(
            st.integers(0, 2),  # series
            st.lists(timer_value, min_size=1, max_size=60),
            st.sampled_from(["", "", "|@0.5", "|@0.1", "|@0.3", "|@0.7"]),
            st.sampled_from([b"ms", b"h", b"d", b"g"]),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_timer_values_of_datagrams_as_the_reference(
    runs: list[tuple[int, list[float], str, bytes]],
) -> None:
    """Many values per series-bucket over StatsD, of magnitudes near and far apart, positive,
    negative and zero, with whole and fractional sample-rate weights: the native core's rows
    (its arrays, binned by it) are the reference's (lists, binned by bin_flat)."""
    lines = []
    for series, values, rate, mtype in runs:
        suffix = b"" if mtype == b"g" else rate.encode()  # a gauge's value is the value
        lines += [b"s%d%s:%r|%s%s" % (series, mtype, v, mtype, suffix) for v in values]
    datagrams = [b"\n".join(lines[i : i + 20]) for i in range(0, len(lines), 20)]
    ref, nat = both(gauge_sign="absolute")
    for data in datagrams:
        ref.send(data)
        nat.send(data)
    want = ref.outcome()
    binned = []

    def spy(values: Any, weights: Any) -> Any:  # the accumulators' binning, after the held one
        out = binning(values, weights)
        binned.append(out is not None)
        return out

    binning = accumulator.native_binning
    assert binning is not None
    accumulator.native_binning = spy
    try:
        got = nat.outcome()
    finally:
        accumulator.native_binning = binning
    assert got == want
    # The native path's sketches came from the native core's binning (unless a value was not
    # finite: then it gives up and bin_flat raises, as on the reference path).
    if any(sk is not None for sk in got["sketches"]):
        assert binned and all(binned)


# ---- HTTP points: admitted in Python, added into the native core

NOW = T0 + 5.0
http_sample = st.builds(
    lambda name, tags, mtype, value, rate, ts: Sample(
        name, tags, mtype, str(value) if mtype is MetricType.SET else value, rate, ts, False
    ),
    st.sampled_from(["a", "b.c", "g", "u"]),
    st.sampled_from([(), (("env", "prod"),), (("env", "prod"), ("host", "a"))]),
    st.sampled_from(list(MetricType)),
    st.sampled_from([0.0, 1.0, -2.5, 3e10, 7.25]),
    st.sampled_from([1.0, 1.0, 0.5, 0.1]),
    st.sampled_from([None, None, NOW - 30, NOW - 7200, NOW + 3600, NOW - 3599]),
)


@settings(PARITY, max_examples=max(PARITY.max_examples // 10, 50))
@given(
    st.lists(st.lists(http_sample, max_size=20), min_size=1, max_size=3),
    st.lists(datagram, max_size=2),
    st.sampled_from([0.001, 0.0]),
)
def test_http_points_as_the_reference(
    batches: list[list[Sample]], datagrams: list[bytes], step: float
) -> None:
    """HTTP batches and StatsD datagrams interleaved: both go into the native core, in two
    cores of it. Each arrives `step` after the one before: a millisecond, as in a running
    daemon, or at the very same clock reading."""
    ref, nat = both()
    for i, batch in enumerate(batches):
        for path in (ref, nat):
            path.clock.advance(step)
            path.ingest.samples("default", batch, "http")
            if i < len(datagrams):
                path.clock.advance(step)
                path.send(datagrams[i])
    assert nat.outcome() == ref.outcome()


def test_gauges_of_two_transports_at_the_same_instant_as_the_reference() -> None:
    """Gauge values from HTTP and from a StatsD socket at the very same clock reading, in two
    cores: the bucket's last value is the one that arrived last, as in the reference."""
    ref, nat = both()
    gauge = Sample("a", (), MetricType.GAUGE, 0.0, 1.0, None, False)
    for path in (ref, nat):
        path.ingest.samples("default", [gauge], "http")
        path.send(b"a:1|g")
        path.ingest.samples("default", [gauge], "http")
    assert nat.outcome() == ref.outcome()


# ---- typed HTTP points (POST /v1/metrics/batch): judged in C where the series is known

valid_point_json = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["a", "b.c", "g", "u", "h"]),
        "value": st.sampled_from([0.0, 1, -2.5, 3e10, 7.25]),
    },
    optional={
        "type": st.sampled_from([t.value for t in MetricType]),
        "tags": st.sampled_from(
            [{}, {"env": "prod"}, {"host": "a", "env": "prod"}, {"env": "prod", "host": "a"}]
        ),
        "timestamp": st.sampled_from([NOW - 30, NOW - 7200, NOW + 3600, NOW - 3599, None]),
        "sample_rate": st.sampled_from([1.0, 0.5, 0.1]),
    },
)
any_point_json = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["a", "b.c", "g", "u", "", "..", "x y", "\ud800", 5]),
        "value": st.sampled_from([0.0, 1, -2.5, 3e10, 7.25, 1e301, "m", "", "1"]),
    },
    optional={
        "type": st.sampled_from([t.value for t in MetricType] + ["gauge", "bogus"]),
        "tags": st.sampled_from(
            [
                {},
                {"env": "prod"},
                {"host": "a", "env": "prod"},
                {"env": "prod", "host": "a"},
                {"": "x"},
                {"env": 1},
            ]
        ),
        "timestamp": st.sampled_from(
            [NOW - 30, NOW - 7200, NOW + 3600, NOW - 3599, "2023-11-14T22:13:00Z", -1, None]
        ),
        "sample_rate": st.sampled_from([1.0, 0.5, 0.1, 0.0, 2]),
        "extra": st.just(1),
    },
)


def _batch_points(points: list[dict[str, Any]]) -> tuple[list[Any], Any]:
    """The points and their to_sample(), as POST /v1/metrics/batch decodes a body."""
    raw = json.dumps({"points": points}).encode()
    typed = decode_typed_batch(raw)
    if typed is not None:
        return typed.points, lambda p: sample_of(p, StatsdParser().sanitise)
    return parse_batch(json.loads(raw), 10_000), lambda p: parse_point(
        p, sanitise=StatsdParser().sanitise
    )


def _answer(result: tuple[list[tuple[int, Any]], list[tuple[int, str]]]) -> Any:
    invalid, refused = result
    return sorted((i, e.code, e.message, e.field) for i, e in invalid), sorted(refused)


def _typed_points(path: Path, points: list[dict[str, Any]]) -> Any:
    decoded, to_sample = _batch_points(points)
    return _answer(path.ingest.points("default", decoded, to_sample, "http"))


@settings(PARITY, max_examples=max(PARITY.max_examples // 10, 50))
@given(
    st.lists(
        st.lists(st.one_of(valid_point_json, valid_point_json, any_point_json), max_size=12),
        min_size=1,
        max_size=5,
    ),
    st.booleans(),
)
def test_typed_http_points_as_the_reference(
    batches: list[list[dict[str, Any]]], forget_between: bool
) -> None:
    """The same batches through the native path (its cache of known series, the fallback for
    the rest) and the reference: the same answer per point, the same aggregates and counts,
    also when a series the cache knows is forgotten between two batches."""
    ref, nat = both(max_series=6)
    for batch in batches:
        for path in (ref, nat):
            path.clock.advance(0.001)
        assert _typed_points(nat, batch) == _typed_points(ref, batch)
        if forget_between:  # as retention does: once memory holds none of its points
            assert nat.outcome() == ref.outcome()
            for path in (ref, nat):
                known = sorted(path.registry.ids_of("default").items(), key=lambda kv: kv[1])
                path.registry.forget([("default", *key) for key, _ in known[:1]])
    assert nat.outcome() == ref.outcome()


def _timing(value: float, **extra: Any) -> dict[str, Any]:
    return {"name": "lat", "value": value, "type": "timing", **extra}


# Each rule once, for a point whose series the native cache knows already (the first batch).
KNOWN_SERIES_CASES = {
    "plain": [_timing(2.0)],
    "tags in another order": [
        _timing(1.0, tags={"env": "prod", "host": "a"}),
        _timing(2.0, tags={"host": "a", "env": "prod"}),
    ],
    "timestamp too old": [_timing(2.0, timestamp=NOW - 7200)],
    "timestamp in the future": [_timing(2.0, timestamp=NOW + 3600)],
    "timestamps at the limits": [
        _timing(2.0, timestamp=NOW - 3600),
        _timing(3.0, timestamp=NOW + 600),
    ],
    "an ISO timestamp": [_timing(2.0, timestamp="2023-11-14T22:13:20Z")],
    "value out of range": [_timing(1e301), _timing(-1e301), _timing(2.0)],
    "another type": [{"name": "lat", "value": 1.0, "type": "counter"}, _timing(2.0)],
    "a sample rate": [_timing(2.0, sample_rate=0.25)],
    "a gauge after its first value": [
        {"name": "g", "value": 1.0},
        {"name": "g", "value": 5.0},
        {"name": "g", "value": -2.0, "timestamp": NOW - 30},
    ],
    "set members": [
        {"name": "u", "value": "alice", "type": "set"},
        {"name": "u", "value": 1, "type": "set"},
        {"name": "u", "value": 1.0, "type": "set"},
    ],
    "over the series limit": [_timing(1.0, tags={"n": str(i)}) for i in range(8)],
}


@pytest.mark.parametrize("case", list(KNOWN_SERIES_CASES), ids=list(KNOWN_SERIES_CASES))
def test_typed_points_of_known_series_as_the_reference(case: str) -> None:
    first = [_timing(1.0), _timing(1.0, tags={"env": "prod", "host": "a"}),
             {"name": "g", "value": 0.0}, {"name": "u", "value": "bob", "type": "set"}]  # fmt: skip
    ref, nat = both(max_series=6)
    for batch in (first, KNOWN_SERIES_CASES[case], KNOWN_SERIES_CASES[case]):
        for path in (ref, nat):
            path.clock.advance(0.001)
        assert _typed_points(nat, batch) == _typed_points(ref, batch)
    assert nat.live is not None and nat.live.point_keys("default")  # the cache was used
    assert nat.outcome() == ref.outcome()


def test_a_deleted_metric_sent_again_with_another_type_as_the_reference() -> None:
    """The cache forgets with the registry: the name comes back as a new metric."""
    ref, nat = both()
    for batch in ([_timing(1.0)], [_timing(2.0)]):
        assert _typed_points(nat, batch) == _typed_points(ref, batch)
    assert nat.outcome() == ref.outcome()
    for path in (ref, nat):
        path.registry.forget([("default", "lat", ())])
    again = [{"name": "lat", "value": 3.0, "type": "counter"}, _timing(4.0)]
    answer = _typed_points(ref, again)
    assert answer[1] == [(1, "type_conflict")]
    assert _typed_points(nat, again) == answer
    assert nat.outcome() == ref.outcome()


def _rows_of_every_snapshot(path: Path) -> list[Any]:
    """Each pending snapshot's rows (series key, time, count, sum, last), after a last swap."""
    path.aggregator.swap()
    out = []
    for snap in path.aggregator.pending:
        rows = path.aggregator.snapshot_rows(snap)
        out.append(
            sorted(
                zip(
                    rows.keys,
                    rows.ts.tolist(),
                    rows.count.tolist(),
                    rows.sum.tolist(),
                    [_same(x) for x in rows.last.tolist()],
                    strict=True,
                )
            )
        )
    return out


def _judge_logged(path: Path, points: list[dict[str, Any]]) -> tuple[LoggedBody, Any]:
    """A batch judged as a write-ahead-logged request judges it (a millisecond after what came
    before), not yet committed: (its LoggedBody, the per-point answer)."""
    path.clock.advance(0.001)
    decoded, to_sample = _batch_points(points)
    logged = LoggedBody("batch", json.dumps({"points": points}).encode(), total=len(points))
    result = path.ingest.points(
        "default", decoded, to_sample, "http", logged=logged,
        reread=lambda: _batch_points(points)[0],
    )  # fmt: skip
    return logged, result


@pytest.mark.parametrize("between", ["a swap", "a forgotten series"])
def test_logged_typed_points_judged_anew_when_memory_changed_before_the_commit(
    tmp_path: pathlib.Path, between: str
) -> None:
    """With the write-ahead log, a batch is applied once the log holds it: if the interval was
    swapped out or a series forgotten in between, the points are read again from the body and
    judged as the reference judges them, into the snapshot the log entry names."""
    first = [_timing(1.0), {"name": "g", "value": 2.0}, {"name": "old", "value": 1.0}]
    batch = [_timing(2.0), {"name": "g", "value": 5.0}, _timing(3.0, tags={"new": "x"}),
             {"name": "lat", "value": 1.0, "type": "counter"}]  # fmt: skip
    answers = []
    for path in both():
        path.ingest.wal = WriteAheadLog(tmp_path / f"wal-{path.live is not None}")
        assert _typed_points(path, first) == ([], [])  # no log entry asked: applied at once
        snap = path.aggregator.swap()
        path.aggregator.release(snap)  # as if flushed: "old" is in no memory now
        logged, result = _judge_logged(path, batch)
        assert logged.header is not None and logged.header["keep"] == [0, 1, 2]
        if between == "a swap":
            path.aggregator.swap()
        else:
            path.registry.forget([("default", "old", ())])
        path.ingest.commit(logged)
        answers.append(
            (
                _answer(result),
                _rows_of_every_snapshot(path),
                dict(+path.telemetry.accepted),
                dict(+path.telemetry.rejects),
            )
        )
    assert answers[1] == answers[0]
    assert answers[0][0] == ([], [(3, "type_conflict")])


def test_a_logged_body_committed_into_a_held_snapshot_adds_after_what_the_core_held(
    tmp_path: pathlib.Path,
) -> None:
    """The swap keeps the native core's interval as it is (Snapshot.held); a body logged
    before that swap and committed after it goes into that snapshot: the series-buckets it
    adds to leave the held interval first, so the body's points land after them (the gauge's
    later value stays, the timings add) exactly as the reference's accumulators take them,
    and the others stay held until the flush finishes them."""
    first = [_timing(1.0), {"name": "g", "value": 2.0}, _timing(7.0, tags={"other": "y"})]
    batch = [_timing(2.0), {"name": "g", "value": 5.0}, _timing(3.0, tags={"new": "x"})]
    answers = []
    for path in both():
        path.ingest.wal = WriteAheadLog(tmp_path / f"wal-{path.live is not None}")
        assert _typed_points(path, first) == ([], [])
        logged, _ = _judge_logged(path, batch)
        snap = path.aggregator.swap()
        if path.live is not None:
            assert snap.held is not None and len(snap.held) == 3
        path.ingest.commit(logged)
        if path.live is not None:
            assert snap.held is not None and len(snap.held) == 1  # only {other: y} stays held
        answers.append((_rows_of_every_snapshot(path), path.aggregator.keys_in_memory()))
    assert answers[1] == answers[0]
    rows_of_snapshot = answers[0][0][0]  # the held snapshot's (the last swap's is empty)
    rows = {
        (key[1], key[2]): (count, total, last) for key, _, count, total, last in rows_of_snapshot
    }
    assert rows[("lat", ())] == (2.0, 3.0, "nan")
    assert rows[("g", ())][2] == 5.0


def test_what_a_held_snapshot_holds_is_read_discarded_and_materialized_as_the_reference() -> None:
    """A snapshot's held interval, before the flush: a query's copy of one metric reads it, a
    delete drops its series from it, and turned into accumulators (as the flusher does before
    setting series aside) it gives the same rows."""
    answers = []
    for path in both():
        path.send(b"lat:1|ms\nlat:2|ms|#host:a\ngone:1|c\nfine:3|g\nu:x|s\nu:y|s")
        snap = path.aggregator.swap()
        if path.live is not None:
            assert snap.held is not None and len(snap.held) == 5
        memory = path.aggregator.metric_in_memory("default", "lat")
        rows = memory.rows(0, 0.0, float("inf"), lambda tags: True)
        assert sorted(rows.sum.tolist()) == [1.0, 2.0]
        assert path.aggregator.discard({("default", "gone", ())}) == 1
        assert ("default", "gone", ()) not in path.aggregator.keys_in_memory()
        assert snap.series_count() == 4
        held = _rows_outcome(path.aggregator.snapshot_rows(snap))
        held_interval.materialize(snap, path.registry)
        assert snap.held is None and path.aggregator.unfinishable(snap) == []
        assert _rows_outcome(path.aggregator.snapshot_rows(snap)) == held
        answers.append(held)
    assert answers[1] == answers[0]


def test_a_held_interval_the_core_cannot_bin_fails_with_the_reference_error() -> None:
    """A value the core refuses to bin (a gauge run past the largest float by +N changes):
    the finish of the held interval raises what the reference's finish raises for the same
    entries, so the flusher materializes the snapshot and sets that series aside."""
    registry = SeriesRegistry()
    sid = registry.admit("default", "huge", (), MetricType.GAUGE, 10)
    assert isinstance(sid, int)
    entry = (T0, sid, 2.0, math.inf, 1e300, math.inf, math.inf, T0, array("d", [1e300, math.inf]),
             None, None, 0)  # fmt: skip

    class Unbinnable:
        def __len__(self) -> int:
            return 1

        def columns(self) -> None:
            return None

        def sids(self) -> set[int]:
            return {sid}

        def copy(self, sids: list[int]) -> tuple[list[Any], list[int]]:
            return ([entry], [0]) if sid in sids else ([], [])

    with pytest.raises(ValueError, match="finite"):
        held_interval.held_rows(Unbinnable(), registry)  # type: ignore[arg-type]


def test_a_held_snapshot_keeps_the_reference_order_of_its_rows(tmp_path: pathlib.Path) -> None:
    """Sums over rows add in row order (a rollup's merge, the scrape's totals, a query's
    reduction), so a held snapshot's rows come in the order the reference's maps give them:
    buckets as first seen, then series, and what a logged body committed after the swap adds,
    after. Back-dated points out of order, so that a 60 s rollup of 0.3 + 0.2 + 0.1 would show
    another order in its last bit; and a query's copy of the metric in the same order."""
    base = int(T0) - int(T0) % 60 - 120
    data = b"b:1|c|T%d\na:0.3|c|T%d\na:0.2|c|T%d\na:0.1|c|T%d" % (base, base + 20, base + 10, base)
    late = [{"name": "a", "value": 0.7, "type": "counter", "timestamp": base + 30},
            {"name": "c", "value": 0.4, "type": "counter", "timestamp": base + 10},
            {"name": "a", "value": 0.05, "type": "counter", "timestamp": base + 10}]  # fmt: skip
    answers = []
    for path in both():
        path.ingest.wal = WriteAheadLog(tmp_path / f"wal-{path.live is not None}")
        path.send(data)
        logged, _ = _judge_logged(path, late)
        snap = path.aggregator.swap()
        assert (snap.held is not None) == (path.live is not None)
        path.ingest.commit(logged)
        memory = path.aggregator.metric_in_memory("default", "a")
        copied = memory.rows(0, -math.inf, math.inf, lambda tags: True)
        rows = path.aggregator.snapshot_rows(snap)
        rollup = merge_rows(rows, 60.0)
        answers.append((
            [(k, t, v) for k, t, v in zip(rows.keys, rows.ts.tolist(), rows.sum.tolist(),
                                          strict=True)],
            [(k, v) for k, v in zip(rollup.keys, rollup.sum.tolist(), strict=True)],
            list(zip(copied.ts.tolist(), copied.sum.tolist(), strict=True)),
        ))  # fmt: skip
    assert answers[1] == answers[0]
    assert [t - base for _, t, _ in answers[0][0]] == [0, 0, 20, 10, 10, 30]
