"""The DDV1 codec vectorised over many blobs: :func:`encode_flat`, :func:`decode_flat`,
:func:`decode_many`.

Contract:
- Results are bit-identical to the per-blob functions of ``_codec``: ``encode_flat(flat)[i] ==
  encode(flat.bins(i))``, ``decode_flat(blobs).bins(i) == decode(blobs[i])``.
- A malformed blob raises ``ValueError("blob <index>: <reason>")`` naming the first bad blob,
  with ``decode``'s reason.
- ``_gather`` (the parse as key deltas, before the keys are summed up) and ``_seg_values`` are
  shared with the merge and quantile paths, which code (group, key) straight from the deltas.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from statsd_gateway.sketch._bins import (
    _BOOL,
    _F64,
    _I64,
    _SAFE_INT,
    Bins,
    FlatBins,
    _bins_from,
    _readonly_f64,
    _readonly_i64,
    _seg_any,
    _seg_arange,
    flat_from_arrays,
)
from statsd_gateway.sketch._codec import _INT_LIMIT, _is_integral, decode, encode
from statsd_gateway.sketch._mapping import MAPPING_ID
from statsd_gateway.sketch._scan import _scan


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


def _deltas_of(flat: FlatBins) -> _Flat:
    """A FlatBins as _gather would have parsed it: each store's keys as deltas, its first
    delta the key itself (what the merge and quantile paths code from)."""
    seg_len = np.diff(flat.bounds)
    keys = flat.keys
    delta = np.empty_like(keys)
    if keys.size:
        delta[0] = keys[0]
        np.subtract(keys[1:], keys[:-1], out=delta[1:])
    nz = seg_len > 0
    first = np.zeros(seg_len.size, dtype=np.int64)
    last = np.zeros(seg_len.size, dtype=np.int64)
    first[nz] = keys[flat.bounds[:-1][nz]]
    last[nz] = keys[flat.bounds[1:][nz] - 1]
    delta[flat.bounds[:-1][nz]] = first[nz]
    return _Flat(seg_len, delta, flat.counts, first, last, flat.zero, flat.integral, {})


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


# No blobs: no bins (FlatBins' arrays are read-only, so one instance serves every caller).
_NO_BINS = flat_from_arrays(
    np.empty(0, dtype=np.int64), np.empty(0), np.zeros(1, dtype=np.int64), np.empty(0)
)


def decode_flat(blobs: Sequence[bytes]) -> FlatBins:
    """The bins of many DDV1 blobs as flat arrays: ``.bins(i) == decode(blobs[i])``.

    Integral-count blobs (the common case) are parsed in one numpy pass; float-mode blobs and
    any blob that the fast checks do not accept are parsed by :func:`decode`. A malformed blob
    raises ``ValueError("blob <index>: <reason>")`` (the first such blob).
    """
    if not blobs:  # every read of a column without sketches: skip the pass's fixed cost
        return _NO_BINS
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
