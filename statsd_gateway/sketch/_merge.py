"""Merging sketches: one list (:func:`merge`), groups of flat bins (:func:`merge_flat`), and two
DDV1 blobs (:func:`merge_blobs`, the SQLite upsert function).

Contract:
- Merging is exact: bin counts add, so the merge of the sketches of parts equals the sketch of
  the union (bit-identical for integral counts). Counts of a key add in item order, like
  repeated ddsketch merges, on every path, so the vectorised paths are bit-identical to
  :func:`merge` even for float counts.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from statsd_gateway.sketch._bins import (
    _EMPTY,
    _F64,
    _I64,
    _SAFE_INT,
    Bins,
    FlatBins,
    _readonly_f64,
    _readonly_i64,
    _seg_any,
    flat_from_bins,
)
from statsd_gateway.sketch._codec import decode, encode
from statsd_gateway.sketch._codec_flat import _Flat, _seg_values

_MERGE_VECTOR_MIN = 32  # merge() switches to the vectorised path from this many non-empty parts


def merge(items: Iterable[Bins]) -> Bins:
    """Exact merge: counts of equal keys add (in item order, like repeated ddsketch merges)."""
    parts = [b for b in items if not b.is_empty]
    if len(parts) >= _MERGE_VECTOR_MIN:
        return merge_flat(flat_from_bins(parts), np.zeros(len(parts), dtype=np.int64), 1).bins(0)
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
