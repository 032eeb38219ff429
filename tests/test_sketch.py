"""Behaviour of statsd_gateway.sketch against the reference ``ddsketch`` package."""

from __future__ import annotations

import itertools
import math
import sqlite3
import struct

import numpy as np
import pytest
from ddsketch import DDSketch

from statsd_gateway import sketch as sk
from statsd_gateway.sketch._merge import _merge_parts

# Nothing here asks which path runs (native.native_module()): the same in both passes, skipped in
# the pure-Python one (tests/conftest.py). window_quantiles, which runs the C kernel or the numpy
# one by the pass, is tests/test_sketch_windows.py's.
pytestmark = pytest.mark.same_in_both_passes

QS = (0.0, 0.01, 0.5, 0.9, 0.99, 0.999, 1.0)


# ----------------------------------------------------------------------------------------------
# helpers


def dd_of(values: list[float], weights: list[float] | None = None) -> DDSketch:
    d = DDSketch(0.01)
    if weights is None:
        for v in values:
            d.add(v)
    else:
        for v, w in zip(values, weights, strict=True):
            d.add(v, w)
    return d


def store_dict(store: object) -> dict[int, float]:
    bins: list[float] = store.bins  # type: ignore[attr-defined]
    offset: int = store.offset  # type: ignore[attr-defined]
    return {i + offset: c for i, c in enumerate(bins) if c != 0.0}


def dd_bins(d: DDSketch) -> tuple[dict[int, float], dict[int, float], float]:
    return store_dict(d._store), store_dict(d._negative_store), d._zero_count


def our_bins(b: sk.Bins) -> tuple[dict[int, float], dict[int, float], float]:
    pos = dict(zip(b.pos_keys.tolist(), b.pos_counts.tolist(), strict=True))
    neg = dict(zip(b.neg_keys.tolist(), b.neg_counts.tolist(), strict=True))
    return pos, neg, b.zero


def assert_same_bins(b: sk.Bins, d: DDSketch) -> None:
    ours, ref = our_bins(b), dd_bins(d)
    assert ours[2] == ref[2], "zero count differs"
    for name, o, r in (("positive", ours[0], ref[0]), ("negative", ours[1], ref[1])):
        mismatched = {k for k in o.keys() | r.keys() if o.get(k) != r.get(k)}
        assert not mismatched, (
            f"{len(mismatched)} {name} bins differ, e.g. {sorted(mismatched)[:5]}"
        )


def assert_well_formed(b: sk.Bins) -> None:
    for keys, counts in ((b.pos_keys, b.pos_counts), (b.neg_keys, b.neg_counts)):
        assert keys.dtype == np.int64 and counts.dtype == np.float64
        assert keys.shape == counts.shape
        assert (np.diff(keys) > 0).all()
        assert (counts > 0).all()


def lognormal(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(math.log(20), 0.8, n)


def bimodal(n: int, seed: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    fast = rng.lognormal(math.log(5), 0.2, n)
    slow = rng.lognormal(math.log(200), 0.2, n)
    return np.where(rng.random(n) < 0.9, fast, slow)


def pareto(n: int, seed: int = 3) -> np.ndarray:
    return 10 * (1 + np.random.default_rng(seed).pareto(1.5, n))


def tricky(seed: int = 4) -> np.ndarray:
    """Edges: exact powers of gamma and their neighbours, tiny/huge, zeros, negatives."""
    rng = np.random.default_rng(seed)
    powers = [sk.GAMMA**k for k in range(-3000, 3001, 3)]
    edges = [x for p in powers for x in (p, math.nextafter(p, 0), math.nextafter(p, math.inf))]
    centres = [sk.value_of(k) for k in range(-2000, 2000, 13)]
    special = [
        0.0, -0.0, 5e-324, -5e-324, 1e-310, sk.MIN_POSSIBLE, -sk.MIN_POSSIBLE,
        math.nextafter(sk.MIN_POSSIBLE, 1), -math.nextafter(sk.MIN_POSSIBLE, 1),
        2.2250738585072014e-308, -2.2250738585072014e-308, 1e-300, -1e-300, 1e300, -1e300, 1.7e308,
        1.0, -1.0, 2.0, 0.5,
    ]  # fmt: skip
    wide = np.exp(rng.uniform(-700, 700, 60_000)) * rng.choice([-1.0, 1.0], 60_000)
    normal = rng.normal(0, 100, 20_000)
    ints = rng.integers(0, 1000, 10_000).astype(float)  # many exact zeros and small integers
    return np.concatenate([edges, centres, special, wide, normal, ints, -np.array(edges)])


DATASETS = {
    "lognormal": lognormal(20_000),
    "bimodal": bimodal(20_000),
    "pareto": pareto(20_000),
    "negatives": -lognormal(5_000, seed=9),
    "mixed_sign": np.random.default_rng(5).normal(0, 100, 10_000),
    "zeros": np.zeros(100),
    "tiny": np.array([5e-324, 1e-320, -1e-315, 2.2250738585072014e-308, 1e-307, 3e-308] * 5),
    "tricky": tricky(),
}


# ----------------------------------------------------------------------------------------------
# binning is bit-identical to ddsketch


def test_constants_match_ddsketch() -> None:
    m = DDSketch(0.01)._mapping
    assert m.gamma == sk.GAMMA
    assert m.min_possible == sk.MIN_POSSIBLE
    for k in (-40000, -1000, -1, 0, 1, 17, 500, 35000):
        assert sk.value_of(k) == m.value(k)
    for v in (1e-300, 0.001, 1.0, 3.7, 20.0, sk.GAMMA**100, 1e300):
        assert sk.key_of(v) == m.key(v)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_bins_identical_to_ddsketch(name: str) -> None:
    values = DATASETS[name]
    b = sk.bin_values(values)
    assert_well_formed(b)
    assert_same_bins(b, dd_of(values.tolist()))
    assert b.count == len(values)


def test_tricky_dataset_is_large_and_covers_edges() -> None:
    # Guard against the identity test silently shrinking: ~1e5 values incl. powers of gamma.
    values = DATASETS["tricky"]
    assert len(values) >= 100_000
    assert sk.GAMMA**699 in values and -(sk.GAMMA**-699) in values


@pytest.mark.parametrize("name", ["lognormal", "bimodal", "pareto", "mixed_sign", "tricky"])
def test_weighted_bins_identical_to_ddsketch(name: str) -> None:
    values = DATASETS[name][:20_000]
    rates = np.random.default_rng(6).choice([0.1, 0.3, 0.5, 1.0], len(values))
    weights = [1 / r for r in rates.tolist()]
    b = sk.bin_values(values, weights)
    assert_well_formed(b)
    d = dd_of(values.tolist(), weights)
    assert_same_bins(b, d)
    assert b.count == pytest.approx(d.count, rel=1e-12)


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5])
def test_uniform_sample_rate_weights(rate: float) -> None:
    values = lognormal(3_000, seed=7)
    weights = [1 / rate] * len(values)
    b = sk.bin_values(values, np.array(weights))
    d = dd_of(values.tolist(), weights)
    assert_same_bins(b, d)
    for q in QS:
        assert sk.quantile(b, q) == d.get_quantile_value(q)


# ----------------------------------------------------------------------------------------------
# quantiles


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_quantile_equals_ddsketch(name: str) -> None:
    values = DATASETS[name]
    b = sk.bin_values(values)
    d = dd_of(values.tolist())
    for q in (*QS, 0.25, 0.75, 0.95):
        got, want = sk.quantile(b, q), d.get_quantile_value(q)
        assert got == want, (q, got, want)
        assert isinstance(got, float)


def test_weighted_quantile_equals_ddsketch() -> None:
    values = DATASETS["mixed_sign"]
    rates = np.random.default_rng(8).choice([0.1, 0.3, 0.5], len(values))
    weights = [1 / r for r in rates.tolist()]
    b = sk.bin_values(values, weights)
    d = dd_of(values.tolist(), weights)
    for q in QS:
        assert sk.quantile(b, q) == d.get_quantile_value(q)


@pytest.mark.parametrize("gen", [lognormal, bimodal])
def test_relative_error_within_one_percent(gen: object) -> None:
    values = gen(10_000, seed=11)  # type: ignore[operator]
    b = sk.bin_values(values)
    for q in QS:
        exact = float(np.quantile(values, q, method="lower"))
        got = sk.quantile(b, q)
        assert got is not None
        assert abs(got - exact) <= 0.01 * abs(exact), (q, got, exact)


def test_quantile_edge_cases() -> None:
    assert sk.quantile(sk.Bins.empty(), 0.5) is None
    b = sk.bin_values([1.0, 2.0, 3.0])
    assert sk.quantile(b, -0.01) is None
    assert sk.quantile(b, 1.01) is None
    assert sk.quantile(b, math.nan) is None
    z = sk.bin_values([0.0, 0.0, -0.0])
    assert z.zero == 3.0 and z.pos_keys.size == 0
    assert sk.quantile(z, 0.5) == 0.0
    # not clamped: the bucket centre of a single value is not the value
    one = sk.bin_values([1234.0])
    assert sk.quantile(one, 0.5) == DDSketch(0.01)._mapping.value(sk.key_of(1234.0))
    assert sk.quantile(one, 0.5) != 1234.0
    # negative store is read from the top: p0 is the most negative value
    neg = sk.bin_values([-1.0, -10.0, -100.0])
    p0, p100 = sk.quantile(neg, 0.0), sk.quantile(neg, 1.0)
    assert p0 is not None and p100 is not None
    assert p0 == pytest.approx(-100, rel=0.01)
    assert p100 == pytest.approx(-1, rel=0.01)


def test_to_ddsketch_reproduces_bins_and_quantiles() -> None:
    values = DATASETS["mixed_sign"]
    b = sk.bin_values(values)
    d = sk.to_ddsketch(b)
    assert_same_bins(b, d)
    assert d.count == len(values)
    for q in QS:
        assert d.get_quantile_value(q) == sk.quantile(b, q)


# ----------------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_rejected(bad: float) -> None:
    with pytest.raises(ValueError):
        sk.bin_values([1.0, bad])


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_bad_weights_rejected(bad: float) -> None:
    with pytest.raises(ValueError):
        sk.bin_values([1.0, 2.0], [1.0, bad])


def test_bad_offsets_rejected() -> None:
    v = np.arange(1.0, 5.0)
    for off in ([1, 4], [0, 3], [0, 3, 2, 4], [[0, 4]]):
        with pytest.raises(ValueError):
            sk.bin_groups(v, None, np.array(off))


# ----------------------------------------------------------------------------------------------
# merge


def test_merge_of_parts_equals_sketch_of_union() -> None:
    values = np.concatenate([DATASETS["mixed_sign"], np.zeros(7), lognormal(5_000)])
    cuts = [0, 3, 1_000, 1_000, 9_000, 12_345, len(values)]
    parts = [sk.bin_values(values[a:b]) for a, b in itertools.pairwise(cuts)]
    merged = sk.merge(parts)
    whole = sk.bin_values(values)
    assert merged == whole
    assert_well_formed(merged)
    assert sk.merge([whole]) == whole
    assert sk.merge([]) == sk.Bins.empty()
    assert sk.merge([sk.Bins.empty(), whole, sk.Bins.empty()]) == whole


def test_merge_weighted_equals_ddsketch_merge() -> None:
    values = DATASETS["mixed_sign"]
    rates = np.random.default_rng(12).choice([0.1, 0.3, 0.5], len(values))
    weights = [1 / r for r in rates.tolist()]
    cuts = [0, 2_500, 5_000, len(values)]
    ours = []
    ref = DDSketch(0.01)
    for a, b in itertools.pairwise(cuts):
        ours.append(sk.bin_values(values[a:b], weights[a:b]))
        ref.merge(dd_of(values[a:b].tolist(), weights[a:b]))
    merged = sk.merge(ours)
    assert_same_bins(merged, ref)  # same addition order as ddsketch's merge: bit-identical
    whole = sk.bin_values(values, weights)
    assert np.array_equal(merged.pos_keys, whole.pos_keys)
    np.testing.assert_allclose(merged.pos_counts, whole.pos_counts, rtol=1e-12)


def test_merge_detects_difference() -> None:
    a = sk.bin_values([1.0, 2.0])
    assert sk.merge([a, a]) != a
    assert sk.merge([a, a]).count == 4


# ----------------------------------------------------------------------------------------------
# bin_groups


def test_bin_groups_equals_per_segment_bin_values() -> None:
    rng = np.random.default_rng(13)
    lengths = rng.integers(0, 30, 500)
    lengths[:3] = 0
    lengths[-2:] = 0
    lengths[100] = 1
    total = int(lengths.sum())
    values = np.concatenate(
        [rng.normal(0, 50, total // 2), rng.lognormal(3, 1, total - total // 2)]
    )
    values[rng.random(total) < 0.05] = 0.0
    rng.shuffle(values)
    weights = 1 / rng.choice([0.1, 0.3, 0.5, 1.0], total)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    for w in (None, weights):
        groups = sk.bin_groups(values, w, offsets)
        assert len(groups) == len(lengths)
        for i, g in enumerate(groups):
            a, b = offsets[i], offsets[i + 1]
            single = sk.bin_values(values[a:b], None if w is None else w[a:b])
            assert g == single, i
            assert_well_formed(g)
            if a == b:
                assert g == sk.Bins.empty() and g.count == 0
            else:
                assert g.count == pytest.approx(b - a if w is None else w[a:b].sum())


def test_bin_groups_matches_ddsketch_per_series() -> None:
    rng = np.random.default_rng(14)
    lengths = rng.integers(0, 12, 200)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = bimodal(int(offsets[-1]), seed=15)
    for i, g in enumerate(sk.bin_groups(values, None, offsets)):
        assert_same_bins(g, dd_of(values[offsets[i] : offsets[i + 1]].tolist()))


def test_bin_groups_degenerate_inputs() -> None:
    assert sk.bin_groups(np.empty(0), None, np.array([0])) == []
    empties = sk.bin_groups(np.empty(0), None, np.array([0, 0, 0]))
    assert empties == [sk.Bins.empty(), sk.Bins.empty()]
    zeros = sk.bin_groups(np.zeros(3), None, np.array([0, 2, 2, 3]))
    assert [g.zero for g in zeros] == [2.0, 0.0, 1.0]


# ----------------------------------------------------------------------------------------------
# DDV1 encoding


def roundtrip_cases() -> dict[str, sk.Bins]:
    lognorm = lognormal(1_000, seed=17)
    big = sk.bin_values([1.0, 5.0, 1e300, -1e-300], [3e20, 1.0, 2.0**53, 7.0])
    return {
        "empty": sk.Bins.empty(),
        "integral": sk.bin_values(np.concatenate([lognorm, -lognorm[:100], np.zeros(5)])),
        "heavy_counts": sk.bin_values(np.repeat(lognorm[:20], 300)),  # multi-byte varints
        "float_counts": sk.bin_values(lognorm, np.full(lognorm.size, 1 / 0.3)),
        "negatives_only": sk.bin_values(-lognorm[:50]),
        "zeros_only": sk.bin_values(np.zeros(4)),
        "float_zero_only": sk.bin_values([0.0], [1 / 0.3]),
        "wide_keys": sk.bin_values(DATASETS["tricky"]),
        "huge_counts": big,
    }


@pytest.mark.parametrize("name", sorted(roundtrip_cases()))
def test_encode_decode_roundtrip(name: str) -> None:
    b = roundtrip_cases()[name]
    blob = sk.encode(b)
    assert isinstance(blob, bytes)
    assert blob[0] == 1 and blob[2] == sk.MAPPING_ID
    back = sk.decode(blob)
    assert back == b
    assert_well_formed(back)
    assert sk.encode(back) == blob
    for q in QS:
        assert sk.quantile(back, q) == sk.quantile(b, q)


def test_encoding_layout() -> None:
    # version, flags, mapping, zero; n_pos, zz(key) count...; n_neg ...
    k1, k2 = sk.key_of(1.0), sk.key_of(2.0)
    b = sk.bin_values([2.0, 1.0, 2.0, 0.0, -1.0])
    assert k1 == 0 and 0 < 2 * k2 < 0x80
    assert sk.encode(b) == bytes([1, 0, 1, 1, 2, 0, 1, 2 * k2, 2, 1, 0, 1])
    f = sk.bin_values([2.0], [1 / 0.3])
    assert sk.encode(f) == bytes([1, 1, 1]) + struct.pack("<d", 0.0) + bytes(
        [1, 2 * k2]
    ) + struct.pack("<d", 1 / 0.3) + bytes([0])
    assert sk.encode(sk.Bins.empty()) == bytes([1, 0, 1, 0, 0, 0])
    # sparse varints keep 10-value buckets tiny
    assert len(sk.encode(sk.bin_values(lognormal(10, seed=18)))) <= 30


def test_float_mode_only_when_needed() -> None:
    assert sk.encode(sk.bin_values([1.0, 2.0], [10.0, 2.0]))[1] == 0
    assert sk.encode(sk.bin_values([1.0, 2.0], [10.0, 1 / 0.3]))[1] == 1
    assert sk.encode(sk.bin_values([0.0], [2.5]))[1] == 1


def test_decode_rejects_bad_blobs() -> None:
    good = sk.encode(roundtrip_cases()["integral"])
    good_f = sk.encode(roundtrip_cases()["float_counts"])
    bad = [
        b"",
        b"\x01",
        b"garbage that is not a sketch",
        b"\x02" + good[1:],  # unknown version
        good[:2] + b"\x02" + good[3:],  # unknown mapping
        good[:1] + b"\x02" + good[2:],  # reserved flag
        good + b"\x00",  # trailing bytes
        good_f + b"\x00",
        bytes([1, 0, 1, 0, 2, 2, 1, 0, 1, 0]),  # non-increasing keys (delta 0)
        bytes([1, 0, 1, 0, 1, 2, 0, 0]),  # zero count
        bytes([1, 0, 1, 0, 1] + [0xFF] * 12 + [1, 1, 0]),  # overlong varint
        bytes([1, 1, 1]) + struct.pack("<d", math.nan) + b"\x00\x00",  # NaN zero count
        bytes([1, 1, 1]) + struct.pack("<d", 0.0) + b"\x01\x02" + struct.pack("<d", -1.0) + b"\0",
    ]
    bad += [good[:i] for i in range(len(good))]  # every truncation
    bad += [good_f[:i] for i in range(len(good_f))]
    for blob in bad:
        with pytest.raises(ValueError):
            sk.decode(blob)


def test_merge_blobs() -> None:
    a_vals, b_vals = lognormal(500, seed=19), -bimodal(300, seed=20)
    a, b = sk.encode(sk.bin_values(a_vals)), sk.encode(sk.bin_values(b_vals))
    assert sk.merge_blobs(None, None) is None
    assert sk.merge_blobs(a, None) == a
    assert sk.merge_blobs(None, b) == b
    merged = sk.merge_blobs(a, b)
    assert merged is not None
    assert sk.decode(merged) == sk.bin_values(np.concatenate([a_vals, b_vals]))
    with pytest.raises(ValueError):
        sk.merge_blobs(a, b"\x09junk")


def test_merge_blobs_as_sqlite_upsert_function() -> None:
    db = sqlite3.connect(":memory:")
    db.create_function("dd_merge", 2, sk.merge_blobs, deterministic=True)
    db.execute("CREATE TABLE p(id INTEGER PRIMARY KEY, sketch BLOB)")
    upsert = (
        "INSERT INTO p(id, sketch) VALUES (1, ?) "
        "ON CONFLICT(id) DO UPDATE SET sketch = dd_merge(sketch, excluded.sketch)"
    )
    chunks = [lognormal(100, seed=s) for s in (21, 22, 23)]
    for c in chunks:
        db.execute(upsert, (sk.encode(sk.bin_values(c)),))
    (blob,) = db.execute("SELECT sketch FROM p WHERE id = 1").fetchone()
    assert sk.decode(blob) == sk.bin_values(np.concatenate(chunks))


# ----------------------------------------------------------------------------------------------
# HyperLogLog sets


def test_hll_estimate_within_three_percent() -> None:
    members = [f"user-{i}" for i in range(10_000)]
    blob = sk.hll_from_members(members + members[:5_000])  # duplicates don't count
    assert isinstance(blob, bytes)
    assert sk.hll_estimate(blob) == pytest.approx(10_000, rel=0.03)


def test_hll_merge_of_overlapping_sets() -> None:
    a = sk.hll_from_members(f"m{i}" for i in range(0, 8_000))
    b = sk.hll_from_members(f"m{i}" for i in range(4_000, 12_000))
    merged = sk.hll_merge([a, b])
    assert sk.hll_estimate(merged) == pytest.approx(12_000, rel=0.03)
    pair = sk.hll_merge_pair(a, b)
    assert pair is not None
    assert sk.hll_estimate(pair) == pytest.approx(12_000, rel=0.03)
    assert sk.hll_estimate(sk.hll_merge([merged, a, b])) == pytest.approx(12_000, rel=0.03)


def test_hll_empty_and_none() -> None:
    empty = sk.hll_from_members([])
    assert sk.hll_estimate(empty) == 0.0
    assert sk.hll_estimate(sk.hll_merge([])) == 0.0
    small = sk.hll_from_members(["a", "b", "c"])
    assert sk.hll_estimate(small) == pytest.approx(3, abs=0.01)
    assert sk.hll_merge_pair(None, None) is None
    assert sk.hll_merge_pair(small, None) == small
    assert sk.hll_merge_pair(None, small) == small
    both = sk.hll_merge_pair(empty, small)
    assert both is not None and sk.hll_estimate(both) == pytest.approx(3, abs=0.01)
    with pytest.raises(ValueError):
        sk.hll_estimate(b"not an hll")
    with pytest.raises(ValueError):
        sk.hll_merge([small, small[: len(small) // 2]])


# ----------------------------------------------------------------------------------------------
# DDSketch protobuf export


def parse_proto(data: bytes) -> dict[int, list[object]]:
    """Minimal independent protobuf wire-format reader (varint, fixed64, length-delimited)."""
    fields: dict[int, list[object]] = {}
    i = 0

    def varint() -> int:
        nonlocal i
        x = shift = 0
        while True:
            byte = data[i]
            i += 1
            x |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return x

    while i < len(data):
        tag = varint()
        field, wire = tag >> 3, tag & 7
        value: object
        if wire == 0:
            value = varint()
        elif wire == 1:
            (value,) = struct.unpack_from("<d", data, i)
            i += 8
        elif wire == 2:
            n = varint()
            value = data[i : i + n]
            i += n
        else:
            raise AssertionError(f"unexpected wire type {wire}")
        fields.setdefault(field, []).append(value)
    assert i == len(data)
    return fields


def proto_store_bins(msg: bytes) -> dict[int, float]:
    f = parse_proto(msg)
    if not f:
        return {}
    assert 1 not in f  # no sparse binCounts: ddsketch's from_proto ignores them
    (packed,) = f[2]
    assert isinstance(packed, bytes)
    counts = struct.unpack(f"<{len(packed) // 8}d", packed)
    zz = f.get(3, [0])[0]
    assert isinstance(zz, int)
    offset = (zz >> 1) ^ -(zz & 1)
    return {offset + i: c for i, c in enumerate(counts) if c != 0.0}


@pytest.mark.parametrize("name", sorted(roundtrip_cases()))
def test_to_proto_carries_the_bins(name: str) -> None:
    b = roundtrip_cases()[name]
    if name == "wide_keys":
        b = sk.bin_values(DATASETS["mixed_sign"])
    top = parse_proto(sk.to_proto(b))
    (mapping,) = top[1]
    assert isinstance(mapping, bytes)
    m = parse_proto(mapping)
    assert m[1] == [DDSketch(0.01)._mapping.gamma]
    assert m.get(2, [0.0]) == [0.0] and m.get(3, [0]) == [0]
    pos, neg, zero = our_bins(b)
    (pos_msg,), (neg_msg,) = top[2], top[3]
    assert isinstance(pos_msg, bytes) and isinstance(neg_msg, bytes)
    assert proto_store_bins(pos_msg) == pos
    assert proto_store_bins(neg_msg) == neg
    assert top.get(4, [0.0]) == [zero]


def test_to_proto_parses_with_ddsketch_from_proto() -> None:
    from ddsketch.pb import ddsketch_pb2
    from ddsketch.pb.proto import DDSketchProto

    b = sk.bin_values(np.concatenate([DATASETS["mixed_sign"], np.zeros(3)]))
    msg = ddsketch_pb2.DDSketch()
    msg.ParseFromString(sk.to_proto(b))
    d = DDSketchProto.from_proto(msg)  # type: ignore[no-untyped-call]
    assert_same_bins(b, d)
    # from_proto rebuilds the mapping from gamma (α = (γ−1)/(γ+1)), which moves the multiplier
    # by an ulp or so, so the bucket centres agree only to ~1e-15.
    for q in QS:
        assert d.get_quantile_value(q) == pytest.approx(sk.quantile(b, q), rel=1e-12)


# ----------------------------------------------------------------------------------------------
# batch paths: encode_flat / decode_many / merge_flat / cell_quantiles


def random_batch(n: int, seed: int) -> list[sk.Bins]:
    """Varied sketches: empty, negatives-only, zero-only, float counts, large keys, single bin."""
    rng = np.random.default_rng(seed)
    kinds = [
        lambda: sk.Bins.empty(),
        lambda: sk.bin_values(
            lognormal(int(rng.integers(1, 300)), seed=int(rng.integers(1 << 30)))
        ),
        lambda: sk.bin_values(-bimodal(int(rng.integers(1, 100)), seed=int(rng.integers(1 << 30)))),
        lambda: sk.bin_values(np.zeros(int(rng.integers(1, 5)))),
        lambda: sk.bin_values([0.0], [1 / 0.3]),
        lambda: sk.bin_values(rng.normal(0, 50, 60), np.full(60, 1 / 0.3)),  # float mode
        lambda: sk.bin_values(rng.normal(0, 50, 40), rng.choice([1.0, 1 / 0.3], 40)),
        lambda: sk.bin_values(np.exp(rng.uniform(-700, 700, 30)) * rng.choice([-1.0, 1.0], 30)),
        lambda: sk.bin_values([float(rng.lognormal(3, 2))]),  # single bin
        lambda: sk.bin_values([1e300, -1e-300, 1.0], [3e20, 2.0**53, 1.0]),  # huge counts
        lambda: sk.bin_values(np.repeat(lognormal(20, seed=3), 500)),  # multi-byte counts
        lambda: sk.bin_values(np.concatenate([pareto(50), np.zeros(3), -pareto(7)])),
    ]
    return [kinds[int(k)]() for k in rng.integers(0, len(kinds), n)]


def encode_batch(items: list[sk.Bins]) -> list[bytes]:
    return sk.encode_flat(sk.flat_from_bins(items))


def test_encode_flat_is_bit_identical_to_encode() -> None:
    items = random_batch(600, seed=31)
    assert encode_batch(items) == [sk.encode(b) for b in items]
    assert encode_batch([]) == []
    assert encode_batch([sk.Bins.empty()]) == [sk.encode(sk.Bins.empty())]
    for b in items[:50]:  # one at a time, including each kind on its own
        assert encode_batch([b]) == [sk.encode(b)]


def test_encode_flat_on_unusual_bins_matches_encode() -> None:
    ok = sk.bin_values([1.0, 2.0, 3.0])
    k, c = np.array([5, 10**12]), np.array([1.0, 2.0])
    unusual = [
        sk.Bins(k, c, k[:0], c[:0], 0.0),  # huge key delta: multi-byte zigzag
        sk.Bins(np.array([1, 2], dtype=np.int32), np.array([1, 2]), k[:0], c[:0], 2),  # dtypes
    ]
    items = [ok, *unusual, ok]
    assert encode_batch(items) == [sk.encode(b) for b in items]


def test_flat_bins_round_trip_take_concat_and_encode() -> None:
    items = random_batch(400, seed=41)
    flat = sk.flat_from_bins(items)
    assert [flat.bins(i) for i in range(len(items))] == items
    assert sk.encode_flat(flat) == [sk.encode(b) for b in items]
    pick = np.random.default_rng(41).permutation(len(items))[:150]
    taken = sk.flat_take(flat, pick)
    assert [taken.bins(j) for j in range(pick.size)] == [items[i] for i in pick]
    both = sk.flat_concat([taken, flat])
    assert [both.bins(j) for j in range(len(both))] == [items[i] for i in pick] + items
    # integral: every count and the zero count are integers (float-mode blobs are not).
    assert flat.integral.tolist() == [sk.decode_flat([sk.encode(b)]).integral[0] for b in items]


def test_merge_flat_equals_merge_per_group() -> None:
    items = random_batch(500, seed=42)
    groups = np.random.default_rng(42).integers(0, 37, len(items))
    merged = sk.merge_flat(sk.flat_from_bins(items), groups, 40)
    for g in range(40):
        want = sk.merge(b for b, gg in zip(items, groups.tolist(), strict=True) if gg == g)
        assert_bit_identical(merged.bins(g), want)
    with pytest.raises(ValueError):
        sk.merge_flat(sk.flat_from_bins(items), groups, 10)


@pytest.mark.parametrize("spread", [0.8, 40.0])  # dense counting, and the sort fallback
@pytest.mark.parametrize("weighted", [False, True])
def test_bin_flat_matches_ddsketch_per_series(spread: float, weighted: bool) -> None:
    rng = np.random.default_rng(43)
    sizes = rng.integers(0, 30, 300)
    n = int(sizes.sum())
    values = np.clip(rng.lognormal(3, spread, n), 0, 1e300) * rng.choice([-1.0, 1.0, 0.0], n)
    weights = rng.choice([1.0, 1 / 0.3, 4.0], n) if weighted else None
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    flat = sk.bin_flat(values, weights, offsets)
    assert len(flat) == sizes.size
    for i in range(sizes.size):
        a, b = offsets[i], offsets[i + 1]
        w = None if weights is None else weights[a:b].tolist()
        assert_same_bins(flat.bins(i), dd_of(values[a:b].tolist(), w))
        got = flat.bins(i)
        counts = [*got.pos_counts.tolist(), *got.neg_counts.tolist(), got.zero]
        assert flat.integral[i] == all(c.is_integer() for c in counts)


def test_decode_many_equals_decode() -> None:
    items = random_batch(600, seed=32)
    blobs = [sk.encode(b) for b in items]
    got = sk.decode_many(blobs)
    assert got == [sk.decode(b) for b in blobs] == items
    for b in got:
        assert_well_formed(b)
        assert not b.pos_keys.flags.writeable and not b.pos_counts.flags.writeable
    assert sk.decode_many([]) == []
    assert sk.decode_many([bytearray(blobs[1]), memoryview(blobs[2])]) == items[1:3]
    assert [sk.encode(b) for b in got] == blobs


def test_decode_many_accepts_non_canonical_but_valid_blobs() -> None:
    # Over-long (but <= 9 byte) varints decode like decode() does.
    blob = bytes([1, 0, 1, 0x80, 0x00, 0x81, 0x00, 0x84, 0x80, 0x00, 0x83, 0x00, 0x00])
    assert sk.decode_many([blob, blob]) == [sk.decode(blob)] * 2


def test_decode_many_names_the_bad_blob() -> None:
    good = [sk.encode(b) for b in random_batch(40, seed=33)]
    good_i = sk.encode(roundtrip_cases()["integral"])
    bad_cases = [
        b"",
        b"\x02" + good_i[1:],
        good_i + b"\x00",
        good_i[:-1],
        bytes([1, 0, 1, 0, 2, 2, 1, 0, 1, 0]),  # non-increasing keys
        bytes([1, 0, 1, 0, 1, 2, 0, 0]),  # zero count
        bytes([1, 0, 1, 0, 1] + [0xFF] * 12 + [1, 1, 0]),  # overlong varint
        bytes([1, 0, 1, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F, 1, 0]),  # key out of range
    ]
    for bad in bad_cases:
        with pytest.raises(ValueError) as ref:
            sk.decode(bad)
        blobs = [*good[:17], bad, *good[17:]]
        with pytest.raises(ValueError, match=r"^blob 17: ") as err:
            sk.decode_many(blobs)
        assert str(err.value) == f"blob 17: {ref.value}"
    # the first bad blob is the one named
    with pytest.raises(ValueError, match=r"^blob 2: "):
        sk.decode_many([good[0], good[1], b"\x01", b""])


def test_decode_many_on_every_truncation() -> None:
    cases = roundtrip_cases()
    for blob in (sk.encode(cases["integral"]), sk.encode(cases["huge_counts"])):
        for i in range(len(blob)):
            with pytest.raises(ValueError, match=r"^blob 1: "):
                sk.decode_many([blob, blob[:i], blob])


def merge_reference(items: list[sk.Bins], groups: np.ndarray, n: int) -> list[sk.Bins]:
    return [sk.merge(items[i] for i in range(len(items)) if groups[i] == g) for g in range(n)]


def assert_bit_identical(a: sk.Bins, b: sk.Bins) -> None:
    assert a == b
    for x, y in ((a.pos_counts, b.pos_counts), (a.neg_counts, b.neg_counts)):
        assert x.tobytes() == y.tobytes()
    assert struct.pack("<d", a.zero) == struct.pack("<d", b.zero)


def merge_flat_bins(items: list[sk.Bins], groups: np.ndarray, n: int) -> list[sk.Bins]:
    merged = sk.merge_flat(sk.flat_from_bins(items), groups, n)
    assert len(merged) == n
    return [merged.bins(g) for g in range(n)]


def test_merge_flat_equals_per_group_merge_for_many_group_counts() -> None:
    items = random_batch(500, seed=34)
    rng = np.random.default_rng(35)
    for n_groups in (1, 3, 12, 200, 700):  # 700 groups: many empty, some single-item
        groups = rng.integers(0, n_groups, len(items))
        got = merge_flat_bins(items, groups, n_groups)
        for a, b in zip(got, merge_reference(items, groups, n_groups), strict=True):
            assert_bit_identical(a, b)


def test_merge_flat_empty_and_out_of_order_groups() -> None:
    a, b, c = (sk.bin_values(lognormal(50, seed=s)) for s in (40, 41, 42))
    items = [a, sk.Bins.empty(), b, c, a]
    groups = np.array([4, 0, 1, 4, 1])
    got = merge_flat_bins(items, groups, 5)
    assert got[0] == sk.Bins.empty() and got[2] == sk.Bins.empty() and got[3] == sk.Bins.empty()
    assert got[1] == sk.merge([b, a]) and got[4] == sk.merge([a, c])
    assert got[4] == sk.bin_values(np.concatenate([lognormal(50, seed=40), lognormal(50, seed=42)]))
    assert merge_flat_bins([], np.array([], dtype=np.int64), 2) == [sk.Bins.empty()] * 2
    flat = sk.flat_from_bins(items)
    with pytest.raises(ValueError):
        sk.merge_flat(flat, groups[:3], 5)
    with pytest.raises(ValueError):
        sk.merge_flat(flat, -groups, 5)


def test_merge_flat_float_counts_add_in_item_order() -> None:
    rng = np.random.default_rng(36)
    vals = [rng.lognormal(3, 0.3, 20) for _ in range(80)]
    items = [sk.bin_values(v, rng.choice([1 / 0.3, 1 / 0.7, 0.1], v.size)) for v in vals]
    groups = rng.integers(0, 5, len(items))
    got = merge_flat_bins(items, groups, 5)
    for a, b in zip(got, merge_reference(items, groups, 5), strict=True):
        assert_bit_identical(a, b)


def test_merge_flat_wide_and_sparse_key_ranges() -> None:
    # Keys spanning the whole range in many groups force the sorted (sparse) path.
    rng = np.random.default_rng(37)
    items = [
        sk.bin_values(np.exp(rng.uniform(-700, 700, 5)) * rng.choice([-1.0, 1.0], 5))
        for _ in range(300)
    ]
    groups = rng.integers(0, 150, len(items))
    got = merge_flat_bins(items, groups, 150)
    for a, b in zip(got, merge_reference(items, groups, 150), strict=True):
        assert_bit_identical(a, b)


def test_merge_of_many_uses_identical_vectorised_path() -> None:
    items = random_batch(300, seed=38)
    parts = [b for b in items if not b.is_empty]
    assert len(parts) >= 64
    assert_bit_identical(sk.merge(items), _merge_parts(parts))
    assert sk.merge(iter(items)) == _merge_parts(parts)
    assert sk.merge([sk.Bins.empty()] * 100) == sk.Bins.empty()


# ----------------------------------------------------------------------------------------------
# cell_quantiles / decode_flat


CELL_QS = (0.0, 0.5, 0.99, 0.999, 1.0)


def cell_reference(blobs: list[bytes], cells: np.ndarray, n_cells: int, q: float) -> np.ndarray:
    """One quantile per cell the slow way: decode every blob, merge per cell, quantile()."""
    out = np.full(n_cells, np.nan)
    for c in range(n_cells):
        v = sk.quantile(
            sk.merge(sk.decode(b) for b, g in zip(blobs, cells, strict=True) if g == c), q
        )
        if v is not None:
            out[c] = v
    return out


def assert_same_floats(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == np.float64 and got.shape == want.shape
    both_nan = np.isnan(got) & np.isnan(want)
    assert ((got == want) | both_nan).all(), [
        (i, g, w)
        for i, (g, w) in enumerate(zip(got, want, strict=True))
        if not (g == w or both_nan[i])
    ][:5]


def cell_blobs(n: int, seed: int, weighted: bool) -> list[bytes]:
    """Blobs of varied series: lognormal, bimodal, negatives, zeros; weights 1 / 0.3 if weighted."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(0, 6))
        size = int(rng.integers(1, 120))
        if k == 0:
            v = rng.lognormal(3, 1, size)
        elif k == 1:
            v = bimodal(size, seed=int(rng.integers(1 << 30)))
        elif k == 2:
            v = rng.normal(0, 50, size)  # negatives and positives
        elif k == 3:
            v = np.where(rng.random(size) < 0.5, 0.0, -rng.lognormal(1, 1, size))
        elif k == 4:
            v = np.zeros(size)
        else:
            v = rng.lognormal(8, 3, size)  # wide key range, multi-byte deltas
        w = rng.choice([1.0, 1 / 0.3], size) if weighted and rng.random() < 0.5 else None
        out.append(sk.encode(sk.bin_values(v, w)))
    out[::17] = [sk.encode(sk.Bins.empty())] * len(out[::17])
    return out


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("n_cells", [1, 3, 12, 90])
def test_cell_quantiles_equal_per_blob_reference(weighted: bool, n_cells: int) -> None:
    blobs = cell_blobs(400, seed=50 + n_cells, weighted=weighted)
    rng = np.random.default_rng(51)
    cells = rng.integers(0, n_cells, len(blobs))
    if n_cells >= 12:
        cells[cells == 5] = 6  # an empty cell
        cells[7] = 5  # ... then a single-blob cell
    for q in CELL_QS:
        got = sk.cell_quantiles(blobs, cells, n_cells, q)
        assert_same_floats(got, cell_reference(blobs, cells, n_cells, q))


def test_cell_quantiles_float_counts_bit_identical() -> None:
    # Every cell with fractional counts: the float path must reproduce quantile()'s sums.
    rng = np.random.default_rng(52)
    blobs = [
        sk.encode(sk.bin_values(rng.lognormal(3, 0.5, 60), np.full(60, 1 / 0.3)))
        for _ in range(200)
    ]
    cells = rng.integers(0, 4, len(blobs))
    for q in (*CELL_QS, 0.25, 0.9):
        assert_same_floats(
            sk.cell_quantiles(blobs, cells, 4, q), cell_reference(blobs, cells, 4, q)
        )


def test_cell_quantiles_edge_cases() -> None:
    lo = sk.encode(sk.bin_values(lognormal(50, seed=53)))
    zeros = sk.encode(sk.bin_values(np.zeros(3)))
    neg = sk.encode(sk.bin_values(-lognormal(30, seed=54)))
    empty = sk.encode(sk.Bins.empty())
    huge = sk.encode(sk.bin_values([1.0, 2.0], [2.0**52, 2.0**52]))  # integral, sums >= 2**53
    wide = sk.encode(sk.bin_values([1e-300, 1e300, -1e-300, -1e300]))
    blobs = [lo, zeros, neg, empty, huge, huge, huge, wide, lo, neg, zeros]
    cells = np.array([0, 0, 1, 2, 3, 3, 3, 4, 4, 4, 5])
    for q in (*CELL_QS, 0.1, 0.75):
        got = sk.cell_quantiles(blobs, cells, 7, q)
        assert_same_floats(got, cell_reference(blobs, cells, 7, q))
        assert np.isnan(got[2]) and np.isnan(got[6])  # only an empty blob / no blob
    assert np.isnan(sk.cell_quantiles(blobs, cells, 7, 1.5)).all()
    assert np.isnan(sk.cell_quantiles(blobs, cells, 7, math.nan)).all()
    only_zero = sk.cell_quantiles([empty, zeros, empty], np.array([0, 1, 1]), 2, 0.5)
    assert np.isnan(only_zero[0]) and only_zero[1] == 0.0
    assert sk.cell_quantiles([], np.array([], dtype=np.int64), 3, 0.5).shape == (3,)
    assert sk.cell_quantiles([], np.array([], dtype=np.int64), 0, 0.5).shape == (0,)
    # bytearray / memoryview blobs
    got = sk.cell_quantiles([bytearray(lo), memoryview(neg)], np.array([0, 0]), 1, 0.5)
    assert_same_floats(got, cell_reference([lo, neg], np.array([0, 0]), 1, 0.5))
    with pytest.raises(ValueError):
        sk.cell_quantiles(blobs, cells, 5, 0.5)  # cell id 5 out of range
    with pytest.raises(ValueError):
        sk.cell_quantiles(blobs, cells[:3], 7, 0.5)
    with pytest.raises(ValueError):
        sk.cell_quantiles(blobs, -cells, 7, 0.5)


def test_cell_quantiles_on_non_canonical_blob() -> None:
    blob = bytes([1, 0, 1, 0x80, 0x00, 0x81, 0x00, 0x84, 0x80, 0x00, 0x83, 0x00, 0x00])
    good = sk.encode(sk.bin_values(lognormal(40, seed=55)))
    blobs, cells = [good, blob, good, blob], np.array([0, 0, 1, 0])
    for q in CELL_QS:
        assert_same_floats(
            sk.cell_quantiles(blobs, cells, 2, q), cell_reference(blobs, cells, 2, q)
        )


def test_cell_quantiles_names_the_bad_blob() -> None:
    good = [sk.encode(b) for b in random_batch(40, seed=56)]
    good_i = sk.encode(roundtrip_cases()["integral"])
    for bad in (b"", good_i[:-1], good_i + b"\x00", bytes([1, 0, 1, 0, 1, 2, 0, 0])):
        with pytest.raises(ValueError) as ref:
            sk.decode(bad)
        blobs = [*good[:17], bad, *good[17:]]
        with pytest.raises(ValueError, match=r"^blob 17: ") as err:
            sk.cell_quantiles(blobs, np.zeros(len(blobs), dtype=np.int64), 1, 0.5)
        assert str(err.value) == f"blob 17: {ref.value}"


def test_cell_quantiles_random_batch_and_many_cells() -> None:
    items = random_batch(500, seed=57)
    blobs = [sk.encode(b) for b in items]
    rng = np.random.default_rng(58)
    for n_cells in (1, 5, 300):
        cells = rng.integers(0, n_cells, len(blobs))
        merged = merge_reference(items, cells, n_cells)
        for q in CELL_QS:
            want = np.array([math.nan if (v := sk.quantile(m, q)) is None else v for m in merged])
            assert_same_floats(sk.cell_quantiles(blobs, cells, n_cells, q), want)


def test_decode_flat_matches_decode() -> None:
    items = random_batch(300, seed=59)
    blobs = [sk.encode(b) for b in items]
    flat = sk.decode_flat(blobs)
    assert len(flat) == len(blobs)
    assert flat.bounds.size == 2 * len(blobs) + 1
    for i, b in enumerate(items):
        assert flat.bins(i) == b
        counts = np.concatenate([b.pos_counts, b.neg_counts, [b.zero]])
        assert flat.integral[i] == bool(((counts == np.floor(counts)) & (counts < 2**53)).all())
    assert not flat.keys.flags.writeable and not flat.counts.flags.writeable
    assert len(sk.decode_flat([])) == 0
    with pytest.raises(ValueError, match=r"^blob 1: "):
        sk.decode_flat([blobs[0], b"\x01"])
