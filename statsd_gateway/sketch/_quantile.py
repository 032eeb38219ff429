"""Quantiles: of one sketch (:func:`quantile`) and of the merged blobs of many cells at once
(:func:`cell_quantiles`).

Contract:
- :func:`quantile` uses ddsketch's rank rule (``get_quantile_value``) and returns a bucket
  centre; it is *not* clamped to the exact [min, max], which the caller keeps and clamps with.
- :func:`cell_quantiles` is exactly ``quantile(merge(decode(b) for the blobs of cell c), q)``
  per cell, without building a Bins per blob; it falls back to :func:`quantile` for cells whose
  counts are not exact integers.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from statsd_gateway.sketch._bins import _BOOL, _EMPTY, _F64, _SAFE_INT, Bins, FlatBins
from statsd_gateway.sketch._codec_flat import _deltas_of, _gather
from statsd_gateway.sketch._mapping import value_of
from statsd_gateway.sketch._merge import _merge_deltas


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


def cell_quantiles(
    blobs: Sequence[bytes] | FlatBins, cells: npt.ArrayLike, n_cells: int, q: float
) -> npt.NDArray[np.float64]:
    """Quantile q of the merge of the blobs of every cell, without a Bins object per blob.

    ``cells[i]`` (integers in ``0..n_cells-1``) is the output cell of DDV1 blob ``blobs[i]``
    (or of item i, when ``blobs`` is a :class:`FlatBins` already parsed).
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
    if isinstance(blobs, FlatBins):
        g = _deltas_of(blobs)
    else:
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
