"""Binning: values (and weights) of one or many series into DDSketch bins.

Contract:
- Binning is bit-identical to ``ddsketch.DDSketch(0.01)`` fed the same values and weights in the
  same order: same keys, same per-bin float counts, same ``zero`` weight. Values with
  ``|v| <= MIN_POSSIBLE`` count as zero; negative values go to a separate store keyed by ``|v|``.
- Values must be finite and weights finite and > 0; anything else raises ``ValueError`` (ddsketch
  silently counts NaN as zero and raises ``OverflowError`` on infinities). Reject them earlier.
- :func:`bin_flat` is the one implementation (a single vectorised pass over every series of a
  flush); :func:`bin_groups` slices its result into :class:`Bins`, and :func:`bin_values` is the
  one-series form the tests pin to ddsketch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from statsd_gateway.sketch._bins import (
    _EMPTY,
    _F64,
    _I64,
    _SAFE_INT,
    Bins,
    FlatBins,
    _bins_from,
    _readonly_f64,
    _readonly_i64,
    _seg_any,
)
from statsd_gateway.sketch._mapping import MIN_POSSIBLE, _keys

FloatArrayLike = Sequence[float] | npt.NDArray[Any]


def bin_values(values: FloatArrayLike, weights: FloatArrayLike | None = None) -> Bins:
    """Bins of one series (values in insertion order; weights default to 1).

    No runtime caller: this is the one-series form through which the tests pin binning to
    ddsketch and against which :func:`bin_groups` / :func:`bin_flat` are compared.
    """
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
