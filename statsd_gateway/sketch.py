"""Quantile sketches (DDSketch bins) and distinct-count sketches (HyperLogLog) for the gateway.

Contract:
- This is the only module that imports ``ddsketch`` (lazily, in :func:`to_ddsketch`, for tests
  and reference) and ``datasketches``.
- A quantile sketch is a :class:`Bins`: the sparse bins of a DDSketch with the
  LogarithmicMapping at relative accuracy 0.01 and index offset 0 (``MAPPING_ID`` 1). Binning
  is bit-identical to ``ddsketch.DDSketch(0.01)`` fed the same values and weights in the same
  order: same keys, same per-bin float counts, same ``zero`` weight. Values with
  ``|v| <= MIN_POSSIBLE`` count as zero; negative values go to a separate store keyed by ``|v|``.
- Values must be finite and weights finite and > 0; anything else raises ``ValueError`` (ddsketch
  silently counts NaN as zero and raises ``OverflowError`` on infinities). Reject them earlier.
- :func:`merge` is exact: bin counts add, so the merge of the sketches of parts equals the
  sketch of the union (bit-identical for integral counts).
- :func:`quantile` uses ddsketch's rank rule and returns a bucket centre; it is *not* clamped to
  the exact [min, max], which the caller keeps and clamps with.
- Storage format "DDV1" (:func:`encode` / :func:`decode`); every field an unsigned LEB128 varint,
  signed values zigzag-encoded::

      version(=1) flags mapping_id(=1) zero_count
      n_pos { zz(key - prev_key) count } * n_pos     # prev_key starts at 0, keys increasing
      n_neg { zz(key - prev_key) count } * n_neg     # prev_key restarts at 0; keys of |v|

  flags bit0: zero_count and every count are IEEE-754 float64 little-endian (8 bytes) instead of
  varints; set when any of them is non-integral or >= 2**53. Other flag bits are reserved and
  rejected by :func:`decode`.
- :class:`Bins` arrays are shared views (read-only when produced here); treat them as immutable.
- :func:`to_proto` gives the DDSketch protobuf (sketches-proto schema) for API export.
- Sets: HyperLogLog sketches from Apache DataSketches, lg_k=12, HLL_4, stored as the compact
  serialisation.
"""

from __future__ import annotations

import itertools
import math
import operator
import struct
import sys
from collections.abc import Callable, Iterable, Sequence, Sized
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import datasketches
import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import ddsketch

__all__ = [
    "FORMAT",
    "GAMMA",
    "HLL_LG_K",
    "MAPPING_ID",
    "MIN_POSSIBLE",
    "RELATIVE_ACCURACY",
    "Bins",
    "FlatBins",
    "bin_flat",
    "bin_groups",
    "bin_values",
    "cell_quantiles",
    "decode",
    "decode_flat",
    "decode_many",
    "encode",
    "encode_flat",
    "flat_concat",
    "flat_from_bins",
    "flat_take",
    "hll_estimate",
    "hll_from_members",
    "hll_merge",
    "hll_merge_pair",
    "key_of",
    "merge",
    "merge_blobs",
    "merge_flat",
    "merge_groups",
    "quantile",
    "to_ddsketch",
    "to_proto",
    "value_of",
]

RELATIVE_ACCURACY: float = 0.01
MAPPING_ID: int = 1  # LogarithmicMapping α=0.01, index offset 0 (ddsketch's LogarithmicMapping)
FORMAT: str = "DDV1"
HLL_LG_K: int = 12

# Computed with exactly the operations of ddsketch.mapping.LogarithmicMapping (bit-identical).
_GAMMA_MANTISSA = 2 * RELATIVE_ACCURACY / (1 - RELATIVE_ACCURACY)
GAMMA: float = 1 + _GAMMA_MANTISSA
_MULT: float = (1 / math.log1p(_GAMMA_MANTISSA)) * math.log(2)
_LN2: float = math.log(2)
_CENTRE: float = 2.0 / (1 + GAMMA)
MIN_POSSIBLE: float = sys.float_info.min * GAMMA

_VERSION = 1
_FLAG_FLOAT = 0x01
_INT_LIMIT = 2.0**53  # counts at or above this are stored as float64
_KEY_LIMIT = 1 << 31  # sanity bound for decoded keys (real keys lie within about ±35,500)
_EDGE_EPS = 1e-7  # |log_gamma(v) - nearest integer| below which keys are recomputed with math.log

_I64 = npt.NDArray[np.int64]
_F64 = npt.NDArray[np.float64]
FloatArrayLike = Sequence[float] | npt.NDArray[Any]


def _readonly_i64(a: npt.NDArray[Any]) -> _I64:
    out: _I64 = np.asarray(a, dtype=np.int64)
    out.flags.writeable = False
    return out


def _readonly_f64(a: npt.NDArray[Any]) -> _F64:
    out: _F64 = np.asarray(a, dtype=np.float64)
    out.flags.writeable = False
    return out


@dataclass(slots=True, eq=False)
class Bins:
    """A DDSketch as sparse bins: the bins of ddsketch.DDSketch(0.01) fed the same values/weights.

    pos_keys/neg_keys are int64 and strictly increasing, pos_counts/neg_counts float64 and > 0;
    neg_keys are the keys of |v| for v < 0; zero is the weight of values with |v| <= MIN_POSSIBLE.
    Equality compares bins exactly. Treat a Bins as immutable (its arrays are read-only); the
    class is not frozen only because a frozen dataclass costs 3x to build, and a flush builds one
    per series.
    """

    pos_keys: _I64
    pos_counts: _F64
    neg_keys: _I64
    neg_counts: _F64
    zero: float

    @property
    def count(self) -> float:
        """Total weight (negative store + zero + positive store)."""
        return float(self.neg_counts.sum()) + self.zero + float(self.pos_counts.sum())

    @property
    def is_empty(self) -> bool:
        return self.zero == 0 and self.pos_keys.size == 0 and self.neg_keys.size == 0

    @staticmethod
    def empty() -> Bins:
        return _EMPTY

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Bins):
            return NotImplemented
        return (
            self.zero == other.zero
            and np.array_equal(self.pos_keys, other.pos_keys)
            and np.array_equal(self.pos_counts, other.pos_counts)
            and np.array_equal(self.neg_keys, other.neg_keys)
            and np.array_equal(self.neg_counts, other.neg_counts)
        )

    def __repr__(self) -> str:
        pos = dict(zip(self.pos_keys.tolist(), self.pos_counts.tolist(), strict=True))
        neg = dict(zip(self.neg_keys.tolist(), self.neg_counts.tolist(), strict=True))
        return f"Bins(pos={pos}, neg={neg}, zero={self.zero})"


_EMPTY = Bins(
    _readonly_i64(np.empty(0)), _readonly_f64(np.empty(0)), _readonly_i64(np.empty(0)),
    _readonly_f64(np.empty(0)), 0.0,
)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Mapping


def key_of(value: float) -> int:
    """ddsketch's key for a value > MIN_POSSIBLE (for |v| of a negative value, pass |v|)."""
    return math.ceil(math.log(value, 2) * _MULT)


def value_of(key: int) -> float:
    """ddsketch's value for a key: the bucket centre 2·γ^key/(γ+1). Overflow gives inf."""
    try:
        return math.pow(2.0, float(key) / _MULT) * _CENTRE
    except OverflowError:
        return math.inf


def _keys(a: _F64) -> _I64:
    """Keys of finite values > MIN_POSSIBLE, identical to ddsketch's ``mapping.key``.

    np.log may differ from libm's log by an ulp; that can only move a key when log_gamma(v) lies
    within a few 1e-12 of an integer, so such values are recomputed with math.log exactly as
    ddsketch does.
    """
    x = np.log(a) / _LN2 * _MULT  # same operation order as math.log(v, 2) * multiplier
    k = np.ceil(x)
    near = np.abs(x - np.rint(x)) <= _EDGE_EPS
    if near.any():
        idx = np.flatnonzero(near)
        k[idx] = [math.ceil(math.log(t, 2) * _MULT) for t in a[idx].tolist()]
    return k.astype(np.int64)


# --------------------------------------------------------------------------------------------
# Binning


def bin_values(values: FloatArrayLike, weights: FloatArrayLike | None = None) -> Bins:
    """Bins of one series (values in insertion order; weights default to 1)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    w = None if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    return bin_groups(v, w, np.array([0, v.size], dtype=np.int64))[0]


def bin_groups(
    values: npt.NDArray[Any], weights: npt.NDArray[Any] | None, offsets: npt.NDArray[Any]
) -> list[Bins]:
    """Bins of many series at once, in one vectorised pass (:func:`bin_flat`, sliced).

    Empty segments give ``Bins.empty()``. The returned arrays are read-only views into shared
    buffers.
    """
    flat = bin_flat(values, weights, offsets)
    bounds = flat.bounds.tolist()
    zeros = flat.zero.tolist()
    keys, counts = flat.keys, flat.counts
    return [
        _bins_from(keys, counts, bounds[2 * i], bounds[2 * i + 1], bounds[2 * i + 2], z)
        for i, z in enumerate(zeros)
    ]


def bin_flat(
    values: npt.NDArray[Any], weights: npt.NDArray[Any] | None, offsets: npt.NDArray[Any]
) -> FlatBins:
    """The bins of many series at once, in one vectorised pass, as flat arrays.

    ``values`` holds the values of all series concatenated; series i is
    ``values[offsets[i]:offsets[i + 1]]`` (``offsets[0] == 0``, ``offsets[-1] == len(values)``,
    non-decreasing). ``weights`` (same length, > 0) default to 1. ``.bins(i)`` equals
    :func:`bin_values` of series i; an empty segment gives empty bins.
    """
    v = np.asarray(values, dtype=np.float64)
    off = np.asarray(offsets)
    if v.ndim != 1:
        raise ValueError("values must be one-dimensional")
    if off.ndim != 1 or off.size < 1 or off.dtype.kind not in "iu":
        raise ValueError("offsets must be a one-dimensional integer array of length n+1")
    off = off.astype(np.int64, copy=False)
    n = off.size - 1
    lengths = np.diff(off)
    if off[0] != 0 or off[-1] != v.size or (lengths < 0).any():
        raise ValueError("offsets must start at 0, end at len(values) and be non-decreasing")
    if not np.isfinite(v).all():
        raise ValueError("values must be finite (NaN and ±inf are not sketchable)")
    w: _F64 | None = None
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != v.shape:
            raise ValueError("weights must have the same length as values")
        if not (np.isfinite(w) & (w > 0)).all():
            raise ValueError("weights must be finite and > 0")

    sid = np.repeat(np.arange(n, dtype=np.int64), lengths)
    a = np.abs(v)
    nz = a > MIN_POSSIBLE
    if nz.all():
        zeros: _F64 = np.zeros(n, dtype=np.float64)
    else:
        zmask = ~nz
        zw = None if w is None else w[zmask]
        zeros = np.bincount(sid[zmask], weights=zw, minlength=n).astype(np.float64)
        a, sid = a[nz], sid[nz]
        v = v[nz]
        if w is not None:
            w = w[nz]
    if a.size == 0:
        ukeys, counts = _EMPTY.pos_keys, _EMPTY.pos_counts
        bounds = np.zeros(2 * n + 1, dtype=np.int64)
    else:
        keys = _keys(a)
        # Group: series, then store (0 = positive, 1 = negative).
        group = sid * 2 + (v < 0)
        ukeys, counts, bounds = _bin_dense(keys, group, w, 2 * n)
    if w is None:
        integral = np.ones(n, dtype=np.bool_)
    else:
        nonint = ~((counts == np.floor(counts)) & (counts < _SAFE_INT))
        seg = _seg_any(nonint, np.diff(bounds)).reshape(-1, 2).any(axis=1)
        integral = ~seg & (zeros == np.floor(zeros)) & (zeros < _SAFE_INT)
    integral.flags.writeable = False
    return FlatBins(ukeys, counts, _readonly_i64(bounds), _readonly_f64(zeros), integral)


def _bin_dense(keys: _I64, group: _I64, w: _F64 | None, n_g: int) -> tuple[_I64, _F64, _I64]:
    """Bin counts per (group, key): keys sorted by (group, key), counts (weights added in input
    order, as ddsketch's per-bin ``+=``), and the n_g + 1 group bounds.

    Counted densely over each group's own key range (one bincount, no sort) unless those
    ranges are too wide; then through a sort of (group, key) codes."""
    members = np.bincount(group, minlength=n_g)
    lo = np.full(n_g, np.iinfo(np.int64).max, dtype=np.int64)
    hi = np.full(n_g, np.iinfo(np.int64).min, dtype=np.int64)
    np.minimum.at(lo, group, keys)
    np.maximum.at(hi, group, keys)
    empty = members == 0
    lo[empty], hi[empty] = 0, -1
    wid = hi - lo + 1
    dense_total = int(wid.sum())
    # A sparse dense range is still cheaper than the sort (a few ns per slot against ~50 ns per
    # value): up to 32 slots per value, but never more than 4M slots (32 MB of counts) unless
    # the values fill them densely, so that values spread on purpose cannot balloon a flush.
    if dense_total <= max(4 * keys.size + (1 << 16), min(32 * keys.size, 1 << 22)):
        base = np.cumsum(wid) - wid
        code = (base - lo)[group] + keys
        acc = np.bincount(code, weights=w, minlength=dense_total)
        at = np.flatnonzero(acc > 0)  # every weight is > 0, so every used bin is
        bounds = np.searchsorted(at, np.append(base, dense_total))
        ukeys = at + np.repeat(lo - base, np.diff(bounds))
        return _readonly_i64(ukeys), _readonly_f64(acc[at]), bounds
    kmin = int(keys.min())
    width = int(keys.max()) - kmin + 1
    uniq, inv = np.unique(group * width + (keys - kmin), return_inverse=True)
    counts = np.bincount(inv.reshape(-1), weights=w, minlength=uniq.size)
    ugroup = uniq // width
    ukeys = uniq - ugroup * width + kmin
    bounds = np.searchsorted(ugroup, np.arange(n_g + 1, dtype=np.int64))
    return _readonly_i64(ukeys), _readonly_f64(counts), bounds


# --------------------------------------------------------------------------------------------
# Merge and quantile


def merge(items: Iterable[Bins]) -> Bins:
    """Exact merge: counts of equal keys add (in item order, like repeated ddsketch merges)."""
    parts = [b for b in items if not b.is_empty]
    if len(parts) >= _MERGE_VECTOR_MIN:
        return merge_groups(parts, np.zeros(len(parts), dtype=np.int64), 1)[0]
    return _merge_parts(parts)


def _merge_parts(parts: list[Bins]) -> Bins:
    """merge() of non-empty parts, one np.unique per store."""
    if not parts:
        return _EMPTY
    if len(parts) == 1:
        return parts[0]
    zero = 0.0
    for b in parts:
        zero += b.zero
    pk, pc = _merge_store([b.pos_keys for b in parts], [b.pos_counts for b in parts])
    nk, nc = _merge_store([b.neg_keys for b in parts], [b.neg_counts for b in parts])
    return Bins(pk, pc, nk, nc, zero)


def _merge_store(keys: list[_I64], counts: list[_F64]) -> tuple[_I64, _F64]:
    k = np.concatenate(keys)
    if k.size == 0:
        return _EMPTY.pos_keys, _EMPTY.pos_counts
    uniq, inv = np.unique(k, return_inverse=True)
    c = np.bincount(inv.reshape(-1), weights=np.concatenate(counts), minlength=uniq.size)
    return _readonly_i64(uniq), _readonly_f64(c)


def quantile(b: Bins, q: float) -> float | None:
    """ddsketch's ``get_quantile_value``: a bucket centre, not clamped to [min, max].

    rank = q·(count−1); the negative store is scanned from the top, the zero bucket gives 0.0.
    None if the sketch is empty or q is outside [0, 1] (or NaN).
    """
    if not 0 <= q <= 1:
        return None
    neg_total = float(b.neg_counts.sum())
    pos_total = float(b.pos_counts.sum())
    total = neg_total + b.zero + pos_total
    if total == 0:
        return None
    rank = q * (total - 1)
    if rank < neg_total:
        reversed_rank = neg_total - rank - 1
        cum = np.cumsum(b.neg_counts)
        i = int(np.searchsorted(cum, reversed_rank + 1, side="left"))
        return -value_of(int(b.neg_keys[min(i, cum.size - 1)]))
    if rank < b.zero + neg_total:
        return 0.0
    if b.pos_keys.size == 0:  # only reachable through float rounding of fractional weights
        return 0.0 if b.zero > 0 else -value_of(int(b.neg_keys[0]))
    cum = np.cumsum(b.pos_counts)
    i = int(np.searchsorted(cum, rank - b.zero - neg_total, side="right"))
    return value_of(int(b.pos_keys[min(i, cum.size - 1)]))


# --------------------------------------------------------------------------------------------
# DDV1 encoding


def _put_varint(out: bytearray, x: int) -> None:
    while x >= 0x80:
        out.append((x & 0x7F) | 0x80)
        x >>= 7
    out.append(x)


def _zigzag_deltas(keys: _I64) -> _I64:
    d = np.diff(keys, prepend=np.int64(0))
    zz: _I64 = (d << 1) ^ (d >> 63)
    return zz


def _is_integral(c: _F64) -> bool:
    return bool(((c == np.floor(c)) & (c < _INT_LIMIT)).all())


def encode(b: Bins) -> bytes:
    """Serialise as DDV1 (see the module docstring)."""
    integral = (
        b.zero == math.floor(b.zero)
        and b.zero < _INT_LIMIT
        and _is_integral(b.pos_counts)
        and _is_integral(b.neg_counts)
    )
    out = bytearray((_VERSION, 0 if integral else _FLAG_FLOAT, MAPPING_ID))
    if integral:
        _put_varint(out, int(b.zero))
        for keys, counts in ((b.pos_keys, b.pos_counts), (b.neg_keys, b.neg_counts)):
            _put_varint(out, keys.size)
            if keys.size == 0:
                continue
            pairs = np.empty(2 * keys.size, dtype=np.int64)
            pairs[0::2] = _zigzag_deltas(keys)
            pairs[1::2] = counts
            if int(pairs.max()) < 0x80:  # typical: every varint is one byte
                out += pairs.astype(np.uint8).tobytes()
            else:
                for x in pairs.tolist():
                    if x < 0x80:
                        out.append(x)
                    else:
                        _put_varint(out, x)
    else:
        out += struct.pack("<d", b.zero)
        for keys, counts in ((b.pos_keys, b.pos_counts), (b.neg_keys, b.neg_counts)):
            _put_varint(out, keys.size)
            for zz, c in zip(_zigzag_deltas(keys).tolist(), counts.tolist(), strict=True):
                _put_varint(out, zz)
                out += struct.pack("<d", c)
    return bytes(out)


class _Reader:
    """Sequential varint/float64 reader that raises ValueError on truncation."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def varint(self) -> int:
        data, pos, x, shift = self.data, self.pos, 0, 0
        while True:
            if pos >= len(data):
                raise ValueError("DDV1 blob truncated (in a varint)")
            byte = data[pos]
            pos += 1
            x |= (byte & 0x7F) << shift
            if byte < 0x80:
                self.pos = pos
                return x
            shift += 7
            if shift > 56:
                raise ValueError("DDV1 blob has an overlong varint")

    def float64(self) -> float:
        if self.pos + 8 > len(self.data):
            raise ValueError("DDV1 blob truncated (in a float64)")
        (x,) = struct.unpack_from("<d", self.data, self.pos)
        self.pos += 8
        return float(x)


def _varint_stream(data: bytes, start: int) -> list[int]:
    """All varints of data[start:]; raises ValueError if the last one is cut short."""
    tail = data[start:]
    if tail.isascii():  # every byte < 0x80: one varint per byte
        return list(tail)
    out: list[int] = []
    x = shift = 0
    for byte in tail:
        if byte < 0x80:
            out.append(x | (byte << shift))
            x = shift = 0
        else:
            x |= (byte & 0x7F) << shift
            shift += 7
            if shift > 56:
                raise ValueError("DDV1 blob has an overlong varint")
    if shift:
        raise ValueError("DDV1 blob truncated (in a varint)")
    return out


def _store_from(zz: list[int], counts: list[float] | list[int]) -> tuple[_I64, _F64]:
    if not zz:
        return _EMPTY.pos_keys, _EMPTY.pos_counts
    z = np.array(zz, dtype=np.int64)
    d = (z >> 1) ^ -(z & 1)
    if (d[1:] <= 0).any():
        raise ValueError("DDV1 keys are not strictly increasing")
    if (np.abs(d) >= _KEY_LIMIT).any():
        raise ValueError("DDV1 key out of range")
    keys = np.cumsum(d)
    if np.abs(keys[-1]) >= _KEY_LIMIT:
        raise ValueError("DDV1 key out of range")
    c = np.array(counts, dtype=np.float64)
    if not (np.isfinite(c) & (c > 0)).all():
        raise ValueError("DDV1 counts must be finite and > 0")
    return _readonly_i64(keys), _readonly_f64(c)


def decode(blob: bytes) -> Bins:
    """Parse a DDV1 blob. ValueError on a wrong version, flags or mapping, or a malformed blob."""
    data = bytes(blob)
    if len(data) < 4:
        raise ValueError(f"DDV1 blob too short ({len(data)} bytes)")
    if data[0] != _VERSION:
        raise ValueError(f"unsupported sketch blob version {data[0]} (expected {_VERSION})")
    flags = data[1]
    if flags & ~_FLAG_FLOAT:
        raise ValueError(f"unsupported DDV1 flags 0x{flags:02x}")
    if data[2] != MAPPING_ID:
        raise ValueError(f"unsupported sketch mapping id {data[2]} (expected {MAPPING_ID})")
    r = _Reader(data)
    r.pos = 3
    if flags & _FLAG_FLOAT:
        zero = r.float64()
        stores: list[tuple[_I64, _F64]] = []
        for _ in range(2):
            n = r.varint()
            if n * 9 > len(data) - r.pos:
                raise ValueError("DDV1 blob truncated (bin count exceeds the data)")
            zz: list[int] = []
            fc: list[float] = []
            for _ in range(n):
                zz.append(r.varint())
                fc.append(r.float64())
            stores.append(_store_from(zz, fc))
        if r.pos != len(data):
            raise ValueError("DDV1 blob has trailing bytes")
    else:
        zero = float(r.varint())
        vals = _varint_stream(data, r.pos)
        stores = []
        p = 0
        for _ in range(2):
            if p >= len(vals):
                raise ValueError("DDV1 blob truncated (missing store)")
            n = vals[p]
            end = p + 1 + 2 * n
            if end > len(vals):
                raise ValueError("DDV1 blob truncated (bin count exceeds the data)")
            stores.append(_store_from(vals[p + 1 : end : 2], vals[p + 2 : end : 2]))
            p = end
        if p != len(vals):
            raise ValueError("DDV1 blob has trailing bytes")
    if not (math.isfinite(zero) and zero >= 0):
        raise ValueError("DDV1 zero count must be finite and >= 0")
    (pk, pc), (nk, nc) = stores
    if zero == 0 and pk.size == 0 and nk.size == 0:
        return _EMPTY
    return Bins(pk, pc, nk, nc, zero)


# --------------------------------------------------------------------------------------------
# Batch paths (vectorised over many sketches; results identical to the per-item functions)

_MERGE_VECTOR_MIN = 32  # merge() switches to the vectorised path from this many non-empty parts
_U8 = npt.NDArray[np.uint8]
_I8 = npt.NDArray[np.int8]
_U64 = npt.NDArray[np.uint64]
_BOOL = npt.NDArray[np.bool_]


def _seg_arange(lengths: _I64) -> _I64:
    """Concatenated ``arange(n)`` for every n in lengths."""
    total = int(lengths.sum())
    starts = np.cumsum(lengths) - lengths
    out: _I64 = np.arange(total, dtype=np.int64) - np.repeat(starts, lengths)
    return out


def _seg_any(mask: _BOOL, lengths: _I64) -> _BOOL:
    """Per segment (consecutive runs of the given lengths): whether any element of mask is set."""
    cs = np.zeros(mask.size + 1, dtype=np.int64)
    np.cumsum(mask, out=cs[1:])
    ends = np.cumsum(lengths)
    out: _BOOL = cs[ends] > cs[ends - lengths]
    return out


def _sizes(arrays: Sequence[Sized]) -> _I64:
    return np.fromiter(map(len, arrays), dtype=np.int64, count=len(arrays))


def encode_flat(flat: FlatBins) -> list[bytes]:
    """``[encode(flat.bins(i)) for i in range(len(flat))]`` (bit-identical), vectorised."""
    if len(flat) == 0:
        return []
    return _encode_segments(
        flat.keys, flat.counts, np.diff(flat.bounds), flat.zero, lambda i: encode(flat.bins(i))
    )


def _encode_segments(
    keys: _I64, cnt: _F64, seg_len: _I64, zero: _F64, fallback: Callable[[int], bytes]
) -> list[bytes]:
    """DDV1 blobs of flat bins: blob i has its positive store in segment 2i and its negative
    store in segment 2i+1 (``seg_len`` bins each, keys increasing). Blobs with unusual input
    are encoded by ``fallback(i)``."""
    n = zero.size
    # Zigzag key deltas; a segment's first delta is its key.
    d = np.empty_like(keys)
    if keys.size:
        d[0] = keys[0]
        np.subtract(keys[1:], keys[:-1], out=d[1:])
        first = (np.cumsum(seg_len) - seg_len)[seg_len > 0]
        d[first] = keys[first]
    zz: _I64 = (d << 1) ^ (d >> 63)
    # Per element: count not integral (or too large for a varint); unusual input.
    nonint = ~((cnt == np.floor(cnt)) & (cnt < _INT_LIMIT))
    odd_el = ~((cnt > 0) & (cnt < math.inf)) | (zz < 0)
    odd = _seg_any(odd_el, seg_len).reshape(-1, 2).any(axis=1) | ~((zero >= 0) & (zero < math.inf))
    if odd.any():
        out: list[bytes] = [b""] * n
        good = np.flatnonzero(~odd)
        keep = np.repeat(np.repeat(~odd, 2), seg_len)
        sub = _encode_segments(
            keys[keep],
            cnt[keep],
            seg_len.reshape(-1, 2)[good].reshape(-1),
            zero[good],
            lambda j: fallback(int(good[j])),
        )
        for i, blob in zip(good.tolist(), sub, strict=True):
            out[i] = blob
        for i in np.flatnonzero(odd).tolist():
            out[i] = fallback(i)
        return out
    is_float = _seg_any(nonint, seg_len).reshape(-1, 2).any(axis=1) | ~(
        (zero == np.floor(zero)) & (zero < _INT_LIMIT)
    )
    n_pos, n_neg = seg_len[0::2], seg_len[1::2]

    # Element stream per blob: 1 flags 1 zero n_pos (zz c)*n_pos n_neg (zz c)*n_neg.
    m = 6 + 2 * (n_pos + n_neg)
    start = np.cumsum(m) - m
    total = int(m.sum())
    vals = np.empty(total, dtype=np.uint64)  # varint value, or the float64 bits (isf)
    isf = np.zeros(total, dtype=np.bool_)
    vals[start] = 1
    vals[start + 1] = is_float
    vals[start + 2] = MAPPING_ID
    vals[start + 3] = np.where(
        is_float, zero.view(np.uint64), np.where(is_float, 0.0, zero).astype(np.uint64)
    )
    isf[start + 3] = is_float
    vals[start + 4] = n_pos
    neg_at = start + 5 + 2 * n_pos
    vals[neg_at] = n_neg
    if keys.size:
        # Segment 2i starts at element start+5, segment 2i+1 after n_pos pairs and n_neg.
        seg_base = np.stack([start + 5, neg_at + 1], axis=1).reshape(-1)
        at = np.repeat(seg_base, seg_len) + 2 * _seg_arange(seg_len)
        vals[at] = zz.view(np.uint64)
        fl = np.repeat(np.repeat(is_float, 2), seg_len)
        vals[at + 1] = np.where(fl, cnt.view(np.uint64), np.where(fl, 0.0, cnt).astype(np.uint64))
        isf[at + 1] = fl

    # Byte length of every element: LEB128 length, or 8 for a float64.
    length = np.ones(total, dtype=np.int64)
    big = np.flatnonzero(vals >= 0x80)
    v = vals[big]
    for k in range(2, 10):
        length[big] += v >= np.uint64(1 << (7 * (k - 1)))
    length[isf] = 8
    boff = np.zeros(total + 1, dtype=np.int64)
    np.cumsum(length, out=boff[1:])
    buf = np.empty(int(boff[-1]), dtype=np.uint8)
    cont = (length > 1).astype(np.uint8) << 7
    buf[boff[:-1]] = (vals & np.uint64(0x7F)).astype(np.uint8) | cont
    idx = np.flatnonzero(length > 1)
    j = 1
    while idx.size:
        more = (length[idx] > j + 1).astype(np.uint8) << 7
        shifted = (vals[idx] >> np.uint64(7 * j)) & np.uint64(0x7F)
        buf[boff[idx] + j] = shifted.astype(np.uint8) | more
        idx = idx[length[idx] > j + 1]
        j += 1
    fi = np.flatnonzero(isf)
    if fi.size:
        fbytes = vals[fi].astype("<u8").view(np.uint8).reshape(-1, 8)
        buf[boff[fi][:, None] + np.arange(8)] = fbytes
    data = buf.tobytes()
    bounds = boff[np.append(start, total)].tolist()
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


_SAFE_INT = 1 << 53  # integral counts below this add exactly in float64


@dataclass(frozen=True, slots=True, eq=False)
class FlatBins:
    """The bins of many DDV1 blobs as flat arrays (what :func:`decode_many` slices into Bins).

    Store s (0 positive, 1 negative) of blob i is ``keys[bounds[2*i+s]:bounds[2*i+s+1]]`` with
    ``counts`` alike; ``zero[i]`` is blob i's zero count. ``integral[i]`` tells whether every
    count of blob i and its zero count are integers below 2**53 (so that float64 sums of them
    are exact while they stay below 2**53). All arrays are read-only.
    """

    keys: _I64
    counts: _F64
    bounds: _I64
    zero: _F64
    integral: _BOOL

    def __len__(self) -> int:
        return int(self.zero.size)

    def bins(self, i: int) -> Bins:
        """Blob i as a :class:`Bins` (views into the flat arrays)."""
        b0, b1, b2 = (int(x) for x in self.bounds[2 * i : 2 * i + 3])
        return _bins_from(self.keys, self.counts, b0, b1, b2, float(self.zero[i]))


def _bins_from(keys: _I64, counts: _F64, b0: int, b1: int, b2: int, zero: float) -> Bins:
    if b0 == b2 and zero == 0:
        return _EMPTY
    ek, ec = _EMPTY.pos_keys, _EMPTY.pos_counts
    return Bins(
        keys[b0:b1] if b1 > b0 else ek,
        counts[b0:b1] if b1 > b0 else ec,
        keys[b1:b2] if b2 > b1 else ek,
        counts[b1:b2] if b2 > b1 else ec,
        zero,
    )


@dataclass(frozen=True, slots=True)
class _Scan:
    """Result of the vectorised DDV1 parse: what it accepted, and their bins as deltas."""

    fast: _BOOL  # per blob: parsed here (integral mode, counts and zero < 2**53, well formed)
    zero: _F64  # per blob; 0 where not fast
    seg_len: _I64  # per store (2 per blob: positive, negative); 0 where not fast
    d8: _I8  # per bin of the fast blobs: key - previous key (a store's first: the key), if
    c8: _U8  # one-byte; count, if one-byte. Multi-byte ones: at fd_el/fc_el, values fd/fc_val
    fd_el: _I64
    fd_val: _I64
    fc_el: _I64
    fc_val: _F64
    first: _I64  # per store: first and last key (0 if empty)
    last: _I64


def _scan(raw: list[bytes]) -> _Scan:
    """Parse the integral-mode blobs of a batch in one numpy pass.

    A blob is accepted ("fast") only if it is well formed and exactly what :func:`decode` would
    return with every count and the zero count integral and below 2**53; anything else (float
    mode, huge counts, malformed or merely unusual blobs) is left to :func:`decode`.
    Varints are located through the (rare) continuation bytes only: the one-byte varints are the
    bytes themselves, so the per-byte work stays in uint8.
    """
    nb = len(raw)
    lens = _sizes(raw)
    bend = np.cumsum(lens)
    bstart = bend - lens
    buf: _U8 = np.frombuffer(b"".join(raw), dtype=np.uint8)
    ok = lens >= 6
    hs = bstart[ok]
    ok[ok] = (buf[hs] == _VERSION) & (buf[hs + 1] == 0) & (buf[hs + 2] == MAPPING_ID)
    ok[ok] = buf[bend[ok] - 1] < 0x80  # last varint complete

    # Varints: every byte < 0x80 ends one; blob ends are forced ends so none crosses blobs.
    term = buf < 0x80
    term[bend[lens > 0] - 1] = True
    cont = np.flatnonzero(~term)  # continuation bytes, few in practice
    v8: _U8 = buf[term] if cont.size else buf  # the last byte of every varint
    vfirst = bstart - np.searchsorted(cont, bstart)  # index of a blob's first varint
    vcount = bend - np.searchsorted(cont, bend) - vfirst
    # Multi-byte varints: runs of continuation bytes plus their final byte.
    if cont.size:
        brk = np.flatnonzero(np.diff(cont) != 1)
        run_last = np.append(brk, cont.size - 1)
        run_first = np.append(0, brk + 1)
        first_byte = cont[run_first]
        nbytes = run_last - run_first + 2
        big_idx = cont[run_last] + 1 - (run_last + 1)  # index in v8
        big_blob = np.searchsorted(bend, first_byte, side="right")
        over = nbytes > 9
        ok[big_blob[over]] = False  # overlong varints
        big_val = np.zeros(big_idx.size, dtype=np.uint64)
        for j in range(9):
            sel = np.flatnonzero((nbytes > j) & ~over)
            if sel.size == 0:
                break
            byte = buf[first_byte[sel] + j].astype(np.uint64) & np.uint64(0x7F)
            big_val[sel] |= byte << np.uint64(7 * j)
    else:
        big_idx = big_blob = np.empty(0, dtype=np.int64)
        big_val = np.empty(0, dtype=np.uint64)

    def at(idx: _I64) -> _U64:
        """The varint values at the given varint indices."""
        out: _U64 = v8[idx].astype(np.uint64)
        if big_idx.size and idx.size:
            j = np.minimum(np.searchsorted(big_idx, idx), big_idx.size - 1)
            hit = big_idx[j] == idx
            out[hit] = big_val[j[hit]]
        return out

    # Structure: 1 0 1 zero n_pos (zz c)*n_pos n_neg (zz c)*n_neg, nothing after.
    ok &= vcount >= 6
    sel = np.flatnonzero(ok)
    room = (vcount[sel] - 6) // 2
    np_raw = at(vfirst[sel] + 4)
    good = np_raw <= room.astype(np.uint64)
    sel, room, np_sel = sel[good], room[good], np_raw[good].astype(np.int64)
    nn_raw = at(vfirst[sel] + 5 + 2 * np_sel)
    good = (nn_raw <= room.astype(np.uint64)) & ((vcount[sel] - 6) % 2 == 0)
    good &= nn_raw.astype(np.int64) == room - np_sel
    zero_raw = at(vfirst[sel] + 3)
    good &= zero_raw < np.uint64(_SAFE_INT)
    ok[:] = False
    sel = sel[good]
    ok[sel] = True
    n_pos = np.zeros(nb, dtype=np.int64)
    n_neg = np.zeros(nb, dtype=np.int64)
    zero = np.zeros(nb, dtype=np.float64)
    n_pos[sel] = np_sel[good]
    n_neg[sel] = nn_raw[good].astype(np.int64)
    zero[sel] = zero_raw[good].astype(np.float64)

    # Multi-byte varints inside the bins: which bin, and key delta or count.
    bo = big_idx - vfirst[big_blob] if big_idx.size else big_idx
    npb = n_pos[big_blob]
    in_pos = (bo >= 5) & (bo < 5 + 2 * npb)
    in_neg = bo >= 6 + 2 * npb
    p = np.where(in_pos, bo - 5, bo - 6)
    in_bins = in_pos | in_neg
    is_count = in_bins & (p % 2 == 1)
    is_delta = in_bins & (p % 2 == 0)
    with np.errstate(over="ignore"):
        zzs = big_val.astype(np.int64)  # < 2**63: nine bytes carry 63 bits
    big_delta = (zzs >> 1) ^ -(zzs & 1)
    bad_big = (is_count & ((big_val == 0) | (big_val >= np.uint64(_SAFE_INT)))) | (
        is_delta & (np.abs(big_delta) >= _KEY_LIMIT)
    )
    ok[big_blob[bad_big]] = False

    while True:
        n_pos[~ok] = 0
        n_neg[~ok] = 0
        zero[~ok] = 0.0
        seg_len = np.stack([n_pos, n_neg], axis=1).reshape(-1)
        n_el = n_pos + n_neg
        ebase = np.cumsum(n_el) - n_el
        total = int(n_el.sum())
        # Keep the varints of the bins of the accepted blobs (drop headers, sizes, rejected).
        if ok.all():
            keep = np.ones(v8.size, dtype=np.bool_)
            for k in range(5):
                keep[vfirst + k] = False
            keep[vfirst + 5 + 2 * n_pos] = False
        else:
            okb = np.flatnonzero(ok)
            f, npo = vfirst[okb], n_pos[okb]
            starts = np.concatenate([f + 5, f + 6 + 2 * npo])
            stops = np.concatenate([f + 5 + 2 * npo, f + vcount[okb]])
            ne = stops > starts
            edge = np.zeros(v8.size + 1, dtype=np.int8)
            edge[starts[ne]] = 1
            edge[stops[ne]] = -1
            keep = np.cumsum(edge[:-1], dtype=np.int8).view(np.bool_)
        pairs = v8[keep]
        zz8, c8 = pairs[0::2], pairs[1::2]
        d8: _I8 = (zz8 >> 1).view(np.int8)  # zigzag of the one-byte varints, in place
        sign = (zz8 & 1).view(np.int8)
        np.negative(sign, out=sign)
        np.bitwise_xor(d8, sign, out=d8)
        fix = np.flatnonzero(in_bins & ok[big_blob])
        el = ebase[big_blob[fix]] + p[fix] // 2  # negative bins follow the positive ones
        isd = is_delta[fix]
        fd_el, fd_val = el[isd], big_delta[fix[isd]]
        fc_el, fc_val = el[~isd], big_val[fix[~isd]].astype(np.float64)
        # Per bin: keys strictly increasing inside a store, counts > 0; keys within range.
        seg_end = np.cumsum(seg_len)
        seg_start = seg_end - seg_len
        nz = seg_len > 0
        first_at = seg_start[nz]
        bad_el = (d8 <= 0) | (c8 == 0)
        # Special bins: a store's first (its delta is the key) and those with a multi-byte
        # varint (d8/c8 hold only its last byte): judge them from their real values.
        bad_el[first_at] = False
        bad_el[fd_el] = False
        bad_el[fc_el] = False
        at_first_d, at_first_c = _member(fd_el, first_at), _member(fc_el, first_at)
        fixed_c_d, fixed_d_c = _member(fd_el, fc_el), _member(fc_el, fd_el)
        bad_el[fd_el[(fd_val <= 0) & ~at_first_d]] = True
        bad_el[fc_el[(d8[fc_el] <= 0) & ~at_first_c & ~fixed_d_c]] = True
        bad_el[fd_el[(c8[fd_el] == 0) & ~fixed_c_d]] = True
        bad_el[first_at[(c8[first_at] == 0) & ~_member(first_at, fc_el)]] = True
        first = np.zeros(seg_len.size, dtype=np.int64)
        last = np.zeros(seg_len.size, dtype=np.int64)
        bad_seg = np.zeros(seg_len.size, dtype=np.bool_)
        if first_at.size:
            if bad_el.any():
                bad_seg[nz] = np.logical_or.reduceat(bad_el, first_at)
            fk = d8[first_at].astype(np.int64)
            acc_t = np.int32 if int(seg_len.max()) < 1 << 24 else np.int64  # no overflow
            lk = np.add.reduceat(d8, first_at, dtype=acc_t).astype(np.int64)
            if fd_el.size:
                j = np.minimum(np.searchsorted(fd_el, first_at), fd_el.size - 1)
                hit = fd_el[j] == first_at
                fk[hit] = fd_val[j[hit]]
                seg_of = np.searchsorted(first_at, fd_el, side="right") - 1
                np.add.at(lk, seg_of, fd_val - d8[fd_el])
            first[nz], last[nz] = fk, lk
            bad_seg |= (np.abs(first) >= _KEY_LIMIT) | (np.abs(last) >= _KEY_LIMIT)
        bad = bad_seg.reshape(-1, 2).any(axis=1)
        if not bad.any():
            break
        ok &= ~bad  # rare: rescan without the blobs decode() must judge
    assert c8.size == total
    return _Scan(ok, zero, seg_len, d8, c8, fd_el, fd_val, fc_el, fc_val, first, last)


def _member(a: _I64, sorted_b: _I64) -> _BOOL:
    """Elementwise ``a in sorted_b`` for a sorted, duplicate-free sorted_b."""
    if sorted_b.size == 0 or a.size == 0:
        return np.zeros(a.size, dtype=np.bool_)
    j = np.minimum(np.searchsorted(sorted_b, a), sorted_b.size - 1)
    out: _BOOL = sorted_b[j] == a
    return out


def _seg_values(delta: _I64, seg_len: _I64, first: _I64, last: _I64, off: _I64 | int) -> _I64:
    """In place: per segment, off + the running sum of delta (keys from key deltas, offset).

    ``first``/``last`` are every segment's first and last key (the first delta is the key), so
    the first delta of each segment is replaced by the jump from the previous segment's last
    value, and a single cumulative sum yields every segment's values.
    """
    nz = seg_len > 0
    if delta.size:
        fa = (np.cumsum(seg_len) - seg_len)[nz]
        o = off[nz] if isinstance(off, np.ndarray) else off
        lo_v, hi_v = first[nz] + o, last[nz] + o
        delta[fa[0]] = lo_v[0]
        delta[fa[1:]] = lo_v[1:] - hi_v[:-1]
        np.cumsum(delta, out=delta)
    return delta


@dataclass(frozen=True, slots=True)
class _Flat:
    """All blobs of a batch, bins as key deltas (before :func:`_seg_values`)."""

    seg_len: _I64
    delta: _I64
    counts: _F64
    first: _I64
    last: _I64
    zero: _F64
    integral: _BOOL
    slow: dict[int, Bins]  # the blobs decode() parsed


def _gather(raw: list[bytes]) -> _Flat:
    """_scan, then decode() for the blobs it left, spliced in (errors name the first bad blob)."""
    s = _scan(raw)
    slow: dict[int, Bins] = {}
    for i in np.flatnonzero(~s.fast).tolist():
        try:
            slow[i] = decode(raw[i])
        except ValueError as e:
            raise ValueError(f"blob {i}: {e}") from e
    delta = s.d8.astype(np.int64)
    delta[s.fd_el] = s.fd_val
    counts = s.c8.astype(np.float64)
    counts[s.fc_el] = s.fc_val
    seg_len, zero, integral, first, last = s.seg_len, s.zero, s.fast.copy(), s.first, s.last
    if slow:
        seg_len, zero, first, last = seg_len.copy(), zero.copy(), first.copy(), last.copy()
        for i, b in slow.items():
            zero[i] = b.zero
            integral[i] = (
                b.zero == math.floor(b.zero)
                and b.zero < _SAFE_INT
                and _is_integral(b.pos_counts)
                and _is_integral(b.neg_counts)
            )
            for j, keys in ((2 * i, b.pos_keys), (2 * i + 1, b.neg_keys)):
                seg_len[j] = keys.size
                if keys.size:
                    first[j], last[j] = keys[0], keys[-1]
        new_start = np.cumsum(seg_len) - seg_len
        old_start = np.cumsum(s.seg_len) - s.seg_len
        dest = np.arange(delta.size, dtype=np.int64) + np.repeat(new_start - old_start, s.seg_len)
        n_all = int(seg_len.sum())
        d_all = np.empty(n_all, dtype=np.int64)
        c_all = np.empty(n_all, dtype=np.float64)
        d_all[dest] = delta
        c_all[dest] = counts
        for i, b in slow.items():
            for j, keys, cnts in (
                (2 * i, b.pos_keys, b.pos_counts),
                (2 * i + 1, b.neg_keys, b.neg_counts),
            ):
                a = int(new_start[j])
                d_all[a : a + keys.size] = np.diff(keys, prepend=np.int64(0))
                c_all[a : a + keys.size] = cnts
        delta, counts = d_all, c_all
    return _Flat(seg_len, delta, counts, first, last, zero, integral, slow)


def _decode_flat(raw: list[bytes]) -> tuple[FlatBins, dict[int, Bins]]:
    """decode_flat, plus the Bins that decode() produced for the blobs _scan left to it."""
    g = _gather(raw)
    keys = _seg_values(g.delta, g.seg_len, g.first, g.last, 0)
    bounds = np.zeros(g.seg_len.size + 1, dtype=np.int64)
    np.cumsum(g.seg_len, out=bounds[1:])
    g.integral.flags.writeable = False
    flat = FlatBins(
        _readonly_i64(keys), _readonly_f64(g.counts), _readonly_i64(bounds),
        _readonly_f64(g.zero), g.integral,
    )  # fmt: skip
    return flat, g.slow


def decode_flat(blobs: Sequence[bytes]) -> FlatBins:
    """The bins of many DDV1 blobs as flat arrays: ``.bins(i) == decode(blobs[i])``.

    Integral-count blobs (the common case) are parsed in one numpy pass; float-mode blobs and
    any blob that the fast checks do not accept are parsed by :func:`decode`. A malformed blob
    raises ``ValueError("blob <index>: <reason>")`` (the first such blob).
    """
    return _decode_flat([b if type(b) is bytes else bytes(b) for b in blobs])[0]


def decode_many(blobs: Sequence[bytes]) -> list[Bins]:
    """``[decode(b) for b in blobs]``, vectorised over the whole batch (see :func:`decode_flat`).

    A malformed blob raises ``ValueError("blob <index>: <reason>")``. The arrays of the returned
    Bins are read-only views into shared buffers.
    """
    if not blobs:
        return []
    flat, slow = _decode_flat([b if type(b) is bytes else bytes(b) for b in blobs])
    keys, counts = flat.keys, flat.counts
    bounds = flat.bounds.tolist()
    zero = flat.zero.tolist()
    out: list[Bins] = []
    append = out.append
    for i in range(len(zero)):
        if i in slow:
            append(slow[i])
        else:
            append(
                _bins_from(
                    keys, counts, bounds[2 * i], bounds[2 * i + 1], bounds[2 * i + 2], zero[i]
                )
            )
    return out


def flat_take(flat: FlatBins, idx: npt.ArrayLike) -> FlatBins:
    """The items ``idx`` of ``flat`` (in that order) as a new FlatBins."""
    sel = np.asarray(idx, dtype=np.int64)
    segs = (2 * sel[:, None] + np.array([0, 1], dtype=np.int64)).reshape(-1)
    seg_len = np.diff(flat.bounds)[segs]
    at = np.repeat(flat.bounds[segs], seg_len) + _seg_arange(seg_len)
    bounds = np.zeros(segs.size + 1, dtype=np.int64)
    np.cumsum(seg_len, out=bounds[1:])
    integral = flat.integral[sel]
    integral.flags.writeable = False
    return FlatBins(
        _readonly_i64(flat.keys[at]), _readonly_f64(flat.counts[at]), _readonly_i64(bounds),
        _readonly_f64(flat.zero[sel]), integral,
    )  # fmt: skip


def flat_concat(flats: Sequence[FlatBins]) -> FlatBins:
    """The items of every FlatBins, in order, as one."""
    if len(flats) == 1:
        return flats[0]
    seg_len = np.concatenate([np.diff(f.bounds) for f in flats])
    bounds = np.zeros(seg_len.size + 1, dtype=np.int64)
    np.cumsum(seg_len, out=bounds[1:])
    integral = np.concatenate([f.integral for f in flats])
    integral.flags.writeable = False
    return FlatBins(
        _readonly_i64(np.concatenate([f.keys for f in flats])),
        _readonly_f64(np.concatenate([f.counts for f in flats])),
        _readonly_i64(bounds),
        _readonly_f64(np.concatenate([f.zero for f in flats])),
        integral,
    )


def flat_from_bins(items: Sequence[Bins]) -> FlatBins:
    """Bins as one FlatBins (``.bins(i) == items[i]``)."""
    n = len(items)
    key_list = [a for b in items for a in (b.pos_keys, b.neg_keys)]
    cnt_list = [a for b in items for a in (b.pos_counts, b.neg_counts)]
    bounds = np.zeros(2 * n + 1, dtype=np.int64)
    np.cumsum(_sizes(key_list), out=bounds[1:])
    zero = np.array([b.zero for b in items], dtype=np.float64)
    keys = np.concatenate(key_list).astype(np.int64) if n else _EMPTY.pos_keys
    counts = np.concatenate(cnt_list).astype(np.float64) if n else _EMPTY.pos_counts
    nonint = ~((counts == np.floor(counts)) & (counts < _SAFE_INT))
    integral = ~_seg_any(nonint, np.diff(bounds)).reshape(-1, 2).any(axis=1)
    integral &= (zero == np.floor(zero)) & (zero < _SAFE_INT)
    integral.flags.writeable = False
    return FlatBins(
        _readonly_i64(keys), _readonly_f64(counts), _readonly_i64(bounds), _readonly_f64(zero),
        integral,
    )  # fmt: skip


def merge_flat(flat: FlatBins, groups: npt.ArrayLike, n_groups: int) -> FlatBins:
    """Merge the items of each group: item g of the result is ``merge(flat.bins(i) for i where
    groups[i] == g)``, bit-identical (counts add in item order), in one vectorised pass."""
    g = np.asarray(groups, dtype=np.int64)
    if g.size != len(flat) or (g.size and (int(g.min()) < 0 or int(g.max()) >= n_groups)):
        raise ValueError("groups must hold one id in 0..n_groups-1 per item")
    seg_len = np.diff(flat.bounds)
    seg_group = (2 * g[:, None] + np.array([0, 1], dtype=np.int64)).reshape(-1)
    merged = _merge_store_flat(flat.keys, flat.counts, seg_len, seg_group, 2 * n_groups)
    zero = np.bincount(g, weights=flat.zero, minlength=n_groups).astype(np.float64)
    if merged is None:  # key ranges too wide to code in int64: one np.unique per group
        parts: list[list[Bins]] = [[] for _ in range(n_groups)]
        for i, gid in enumerate(g.tolist()):
            b = flat.bins(i)
            if not b.is_empty:
                parts[gid].append(b)
        return flat_from_bins([_merge_parts(p) for p in parts])
    keys, counts, bounds = merged
    # Exact while every part is and the sums stay below 2**53.
    inexact = np.bincount(g[~flat.integral], minlength=n_groups) > 0
    big = counts >= _SAFE_INT
    if big.any():
        inexact |= _seg_any(big, np.diff(bounds)).reshape(-1, 2).any(axis=1)
    integral = ~inexact & (zero < _SAFE_INT)
    integral.flags.writeable = False
    return FlatBins(keys, counts, _readonly_i64(bounds), _readonly_f64(zero), integral)


def merge_groups(
    items: Sequence[Bins], groups: npt.ArrayLike, n_groups: int | None = None
) -> list[Bins]:
    """Merge the sketches of each group: ``[merge(items[i] for i where groups[i] == g) ...]``.

    ``groups`` holds a group id in ``0..G-1`` for every item, in any order; G is ``n_groups`` or
    ``max(groups) + 1``. Returns G sketches (an empty group gives ``Bins.empty()``),
    bit-identical to :func:`merge` per group (counts add in item order), in one vectorised pass.
    """
    g = np.asarray(groups)
    if g.ndim != 1 or g.size != len(items) or (g.size and g.dtype.kind not in "iu"):
        raise ValueError("groups must be a one-dimensional integer array with one id per item")
    g = g.astype(np.int64, copy=False)
    if g.size and int(g.min()) < 0:
        raise ValueError("group ids must be >= 0")
    n_g = (int(g.max()) + 1 if g.size else 0) if n_groups is None else int(n_groups)
    if g.size and int(g.max()) >= n_g:
        raise ValueError("group ids must be < n_groups")
    merged = merge_flat(flat_from_bins(items), g, n_g)
    return [merged.bins(i) for i in range(n_g)]


def _merge_store_flat(
    keys: _I64, cnts: _F64, lens: _I64, gs: _I64, n_g: int
) -> tuple[_I64, _F64, _I64] | None:
    """Merged (keys, counts) of flat segments, sorted by (group, key), and the group bounds.

    Segment j (``lens[j]`` consecutive bins, keys increasing) belongs to group ``gs[j]``.
    Counts of a (group, key) add in segment order through bincount. None if the key range is
    too wide to code in int64.
    """
    if keys.size == 0:
        return _EMPTY.pos_keys, _EMPTY.pos_counts, np.zeros(n_g + 1, dtype=np.int64)
    kmin, kmax = int(keys.min()), int(keys.max())
    width = kmax - kmin + 1
    budget = 4 * keys.size + (1 << 16)
    if n_g * width <= budget:  # dense over one global key range per group
        lo = np.full(n_g, kmin, dtype=np.int64)
        base = np.arange(n_g, dtype=np.int64) * width
        dense_total = n_g * width
    else:  # dense over each group's own key range (per-item min/max, then per group)
        nzs = lens > 0
        starts = (np.cumsum(lens) - lens)[nzs]
        lo = np.full(n_g, kmax, dtype=np.int64)
        hi = np.full(n_g, kmin, dtype=np.int64)
        np.minimum.at(lo, gs[nzs], np.minimum.reduceat(keys, starts))
        np.maximum.at(hi, gs[nzs], np.maximum.reduceat(keys, starts))
        wid = np.maximum(hi - lo + 1, 0)
        dense_total = int(wid.sum())
        base = np.cumsum(wid) - wid
        if dense_total > budget:
            if n_g * width >= 1 << 62:
                return None
            # Sparse: sort (group, key) codes; counts still add in input order via bincount.
            code = np.repeat(gs * width - kmin, lens) + keys
            uniq, inv = np.unique(code, return_inverse=True)
            merged = np.bincount(inv.reshape(-1), weights=cnts, minlength=uniq.size)
            ugroup = uniq // width
            ukeys = uniq - ugroup * width + kmin
            bounds = np.searchsorted(ugroup, np.arange(n_g + 1))
            return _readonly_i64(ukeys), _readonly_f64(merged), bounds
    code = np.repeat((base - lo)[gs], lens) + keys
    acc = np.bincount(code, weights=cnts, minlength=dense_total)
    present = np.zeros(dense_total, dtype=np.bool_)
    present[code] = True
    pos = np.flatnonzero(present)
    gb = np.searchsorted(pos, np.append(base, dense_total))
    ukeys = pos + np.repeat(lo - base, np.diff(gb))
    return _readonly_i64(ukeys), _readonly_f64(acc[pos]), gb


def cell_quantiles(
    blobs: Sequence[bytes], cells: npt.ArrayLike, n_cells: int, q: float
) -> npt.NDArray[np.float64]:
    """Quantile q of the merge of the blobs of every cell, without a Bins object per blob.

    ``cells[i]`` (integers in ``0..n_cells-1``) is the output cell of DDV1 blob ``blobs[i]``.
    Returns a float64 array of ``n_cells``: element c is exactly
    ``quantile(merge(decode(b) for the blobs b of cell c), q)``, NaN where that is None (no
    blobs, an empty merge, or q outside [0, 1]). Malformed blobs raise
    ``ValueError("blob <index>: <reason>")`` as in :func:`decode_many`.

    All blobs are parsed into flat arrays (:func:`decode_flat`), the bins of every (cell, store,
    key) are summed in one bincount in blob order (as :func:`merge` adds them), and the rank
    search runs for all cells at once on one cumulative sum. That search is exact only for
    integral counts, so cells holding a float-count blob (or counts summing to 2**53 or more)
    call :func:`quantile` on their merged bins instead, which reproduces its float arithmetic.
    """
    nb = len(blobs)
    cell = np.asarray(cells)
    if cell.ndim != 1 or cell.size != nb or (cell.size and cell.dtype.kind not in "iu"):
        raise ValueError("cells must be a one-dimensional integer array with one id per blob")
    n_c = operator.index(n_cells)
    if n_c < 0:
        raise ValueError("n_cells must be >= 0")
    cell = cell.astype(np.int64, copy=False)
    if nb and (int(cell.min()) < 0 or int(cell.max()) >= n_c):
        raise ValueError("cell ids must lie in 0..n_cells-1")
    out: _F64 = np.full(n_c, np.nan)
    if nb == 0:
        return out
    g = _gather([b if type(b) is bytes else bytes(b) for b in blobs])
    if not 0 <= q <= 1:
        return out
    q = float(q)
    # Groups: 2*c is the positive store of cell c, 2*c + 1 its negative store.
    n_g = 2 * n_c
    seg_group = (2 * cell[:, None] + np.array([0, 1], dtype=np.int64)).reshape(-1)
    merged = _merge_deltas(g, seg_group, n_g)
    if merged is None:  # (group, key) codes beyond int64: needs about 2**30 cells
        raise ValueError("too many cells")
    ukeys, counts, gb = merged
    g_zero, g_integral = g.zero, g.integral
    zc = np.bincount(cell, weights=g_zero, minlength=n_c)
    inexact: _BOOL = np.bincount(cell[~g_integral], minlength=n_c) > 0
    fast_cnt = counts
    if inexact.any():
        fast_cnt = counts.copy()
        fast_cnt[np.repeat(np.repeat(inexact, 2), np.diff(gb))] = 0.0
    cum = np.cumsum(fast_cnt)
    if cum.size and float(cum[-1]) + float(zc[~inexact].sum()) >= _SAFE_INT:
        inexact[:] = True  # sums may round: every cell by quantile()
    # Vectorised rank search over the exact-integer cells (quantile()'s arithmetic, elementwise).
    f = np.flatnonzero(~inexact)
    if f.size:
        cp = np.zeros(cum.size + 1, dtype=np.float64)
        cp[1:] = cum
        p0, n0, n1 = gb[2 * f], gb[2 * f + 1], gb[2 * f + 2]
        pos_total, neg_total, z = cp[n0] - cp[p0], cp[n1] - cp[n0], zc[f]
        total = neg_total + z + pos_total
        rank = q * (total - 1.0)
        nonempty = total != 0
        in_neg = nonempty & (rank < neg_total)
        in_pos = nonempty & ~in_neg & ~(rank < z + neg_total) & (n0 > p0)
        # Negative store, read from the top: first cumulative count >= reversed rank + 1.
        t = np.ceil((neg_total - rank - 1.0) + 1.0)  # integral cumulative counts: >= ceil(t)
        i = np.searchsorted(cum, cp[n0] + t, side="left") - n0
        neg_at = n0 + np.minimum(np.where(t <= 0, 0, i), n1 - n0 - 1)
        # Positive store: first cumulative count > rank - zero - neg_total.
        t = np.floor(rank - z - neg_total)  # integral cumulative counts: > floor(t)
        i = np.searchsorted(cum, cp[p0] + t, side="right") - p0
        pos_at = p0 + np.minimum(np.where(t < 0, 0, i), n0 - p0 - 1)
        # No positive bins (unreachable with exact sums): 0 with a zero bucket, else -value.
        odd = nonempty & ~in_neg & ~in_pos & ~(rank < z + neg_total)
        odd_neg = odd & (z <= 0)
        res = np.zeros(f.size, dtype=np.float64)
        key_at = np.concatenate([neg_at[in_neg], pos_at[in_pos], n0[odd_neg]])
        if key_at.size:
            uk, inv = np.unique(ukeys[key_at], return_inverse=True)
            vals = np.array([value_of(k) for k in uk.tolist()], dtype=np.float64)[inv]
            k_neg, k_pos = int(in_neg.sum()), int(in_pos.sum())
            res[in_neg] = -vals[:k_neg]
            res[in_pos] = vals[k_neg : k_neg + k_pos]
            res[odd_neg] = -vals[k_neg + k_pos :]
        res[~nonempty] = np.nan
        out[f] = res
    gbl = gb.tolist()
    ek, ec = _EMPTY.pos_keys, _EMPTY.pos_counts
    for c in np.flatnonzero(inexact).tolist():
        a, b, e = gbl[2 * c], gbl[2 * c + 1], gbl[2 * c + 2]
        merged_bins = Bins(
            ukeys[a:b] if b > a else ek,
            counts[a:b] if b > a else ec,
            ukeys[b:e] if e > b else ek,
            counts[b:e] if e > b else ec,
            float(zc[c]),
        )
        v = quantile(merged_bins, q)
        if v is not None:
            out[c] = v
    return out


def _merge_deltas(g: _Flat, gs: _I64, n_g: int) -> tuple[_I64, _F64, _I64] | None:
    """_merge_store_flat of the segments of g (consumes g.delta), grouped by gs per segment.

    Dense layouts code (group, key) straight from the key deltas with one cumulative sum.
    """
    lens = g.seg_len
    total = int(g.delta.size)
    if total == 0:
        return _EMPTY.pos_keys, _EMPTY.pos_counts, np.zeros(n_g + 1, dtype=np.int64)
    nz = lens > 0
    first, last = g.first[nz], g.last[nz]
    kmin, kmax = int(first.min()), int(last.max())
    width = kmax - kmin + 1
    budget = 4 * total + (1 << 16)
    if n_g * width <= budget:  # dense over one global key range per group
        lo = np.full(n_g, kmin, dtype=np.int64)
        base = np.arange(n_g, dtype=np.int64) * width
        dense_total = n_g * width
    else:  # dense over each group's own key range
        lo = np.full(n_g, kmax, dtype=np.int64)
        hi = np.full(n_g, kmin, dtype=np.int64)
        np.minimum.at(lo, gs[nz], first)
        np.maximum.at(hi, gs[nz], last)
        wid = np.maximum(hi - lo + 1, 0)
        dense_total = int(wid.sum())
        base = np.cumsum(wid) - wid
        if dense_total > budget:
            keys = _seg_values(g.delta, lens, g.first, g.last, 0)
            return _merge_store_flat(keys, g.counts, lens, gs, n_g)
    code = _seg_values(g.delta, lens, g.first, g.last, (base - lo)[gs])
    acc = np.bincount(code, weights=g.counts, minlength=dense_total)
    pos = np.flatnonzero(acc > 0)  # every count is > 0, so every used bin is
    gb = np.searchsorted(pos, np.append(base, dense_total))
    ukeys = pos + np.repeat(lo - base, np.diff(gb))
    return _readonly_i64(ukeys), _readonly_f64(acc[pos]), gb


def merge_blobs(a: bytes | None, b: bytes | None) -> bytes | None:
    """Merge two DDV1 blobs (a SQLite user function for upserts). None is the empty operand."""
    if a is None:
        return None if b is None else bytes(b)
    if b is None:
        return bytes(a)
    return encode(merge((decode(a), decode(b))))


def to_ddsketch(b: Bins) -> ddsketch.DDSketch:
    """A ``ddsketch.DDSketch`` with exactly these bins (sum/min/max unknown). Tests/reference."""
    from ddsketch import DDSketch

    s = DDSketch(RELATIVE_ACCURACY)
    for k, c in zip(b.pos_keys.tolist(), b.pos_counts.tolist(), strict=True):
        s._store.add(k, c)
    for k, c in zip(b.neg_keys.tolist(), b.neg_counts.tolist(), strict=True):
        s._negative_store.add(k, c)
    s._zero_count = b.zero
    s._count = s._negative_store.count + s._zero_count + s._store.count
    return s


def _proto_store(keys: _I64, counts: _F64) -> bytes:
    """DDSketch ``Store`` message: trimmed contiguousBinCounts (field 2) + index offset (3)."""
    if keys.size == 0:
        return b""
    lo = int(keys[0])
    dense = np.zeros(int(keys[-1]) - lo + 1, dtype="<f8")
    dense[keys - lo] = counts
    payload = dense.tobytes()
    out = bytearray(b"\x12")
    _put_varint(out, len(payload))
    out += payload
    out.append(0x18)
    _put_varint(out, (lo << 1) ^ (lo >> 63))
    return bytes(out)


def to_proto(b: Bins) -> bytes:
    """Serialise as a ``DDSketch`` protobuf message (DataDog sketches-proto schema).

    Hand-written (no protobuf dependency): mapping {gamma, indexOffset 0, interpolation NONE},
    positive/negative stores as trimmed ``contiguousBinCounts`` (the only store encoding that
    ``ddsketch``'s ``from_proto`` reads), zeroCount. The dense range covers min..max key, so a
    sketch spanning many orders of magnitude gives a large message.
    """
    out = bytearray()
    mapping = b"\x09" + struct.pack("<d", GAMMA) + b"\x11" + struct.pack("<d", 0.0)
    for field, msg in ((1, mapping), (2, _proto_store(b.pos_keys, b.pos_counts))):
        out.append((field << 3) | 2)
        _put_varint(out, len(msg))
        out += msg
    neg = _proto_store(b.neg_keys, b.neg_counts)
    out.append((3 << 3) | 2)
    _put_varint(out, len(neg))
    out += neg
    out.append((4 << 3) | 1)
    out += struct.pack("<d", b.zero)
    return bytes(out)


# --------------------------------------------------------------------------------------------
# Sets: HyperLogLog


def _hll_load(blob: bytes) -> Any:
    try:
        return datasketches.hll_sketch.deserialize(bytes(blob))
    except (ValueError, IndexError, RuntimeError) as e:
        raise ValueError(f"invalid HLL blob: {e}") from e


def hll_from_members(members: Iterable[str]) -> bytes:
    """A compact HLL_4 (lg_k=12) serialisation of the set of members."""
    sk = datasketches.hll_sketch(HLL_LG_K, datasketches.tgt_hll_type.HLL_4)
    update = sk.update
    for m in members:
        update(m)
    return bytes(sk.serialize_compact())


def hll_merge(blobs: Iterable[bytes]) -> bytes:
    """Union of HLL blobs, serialised compact as HLL_4 (lg_k=12). No blobs -> empty sketch."""
    union = datasketches.hll_union(HLL_LG_K)
    for blob in blobs:
        union.update(_hll_load(blob))
    return bytes(union.get_result(datasketches.tgt_hll_type.HLL_4).serialize_compact())


def hll_merge_pair(a: bytes | None, b: bytes | None) -> bytes | None:
    """Union of two HLL blobs (a SQLite user function for upserts). None is the empty operand."""
    if a is None:
        return None if b is None else bytes(b)
    if b is None:
        return bytes(a)
    return hll_merge((a, b))


def hll_estimate(blob: bytes) -> float:
    """Estimated number of distinct members."""
    return float(_hll_load(blob).get_estimate())
