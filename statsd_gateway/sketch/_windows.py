"""Quantiles of sliding windows of cells (:func:`window_quantiles`): for each group and each
window of consecutive cells, the quantile of the merge of every sketch of the group in those
cells, as :func:`quantile` of that merge gives it, without repeating a sketch once per window
holding it.

The bins of each group are laid out densely over one key range per store, cells along one axis;
a prefix sum over the cells gives every window's merged counts as one difference, and the rank
search of :func:`cell_quantiles` runs on those dense counts (a key no sketch of the window
holds has a zero count, which the searches step over). Exact only for integral counts whose sum
stays below 2**53: otherwise (a sample rate < 1 somewhere) the caller takes the slower exact
path, ``None`` says so.

Where the native module is built and not turned off (``native.native_module()``), the same
answers come from C (native/sg_windows.c): per group, the window slides along the group's items
sorted by cell, the bins of the cells entering added to one dense count per key over the
group's key range and those of the cells leaving subtracted (exact: integral counts, sums below
2**53), and the same rank search runs on each window; C answers each window's kind (no count,
negative key, zero, positive key) and key, and the values are ``value_of`` of the distinct keys
here, as the numpy path computes them. The numpy path stays the reference (tests/
test_windows_native.py holds the two to the same floats, bit for bit) and answers where C
does not apply: q outside [0, 1] or NaN, index arrays that are not integers.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np
import numpy.typing as npt

from statsd_gateway.sketch._bins import _F64, _SAFE_INT, FlatBins
from statsd_gateway.sketch._mapping import value_of

_I64 = npt.NDArray[np.int64]
# Elements of one block's dense arrays (groups × cells × keys), about 32 MB of float64.
_BLOCK = 4_000_000


# sg_windows.h's kinds of answer besides 0 (no count: NaN): -value_of(key), 0.0, value_of(key).
_NEG, _ZERO, _POS = 1, 2, 3


def window_quantiles(
    flat: FlatBins,
    item_group: _I64,
    item_cell: _I64,
    n_groups: int,
    n_cells: int,
    lo: _I64,
    hi: _I64,
    q: float,
) -> _F64 | None:
    """Per group g and window w, quantile q of the merged sketches of the items of group g in
    cells [lo[w], hi[w]), as a (n_groups, windows) array, NaN where a window holds no count;
    exactly ``quantile(merge(…), q)``. None where the caller must take another path: counts
    that are not integral (see the module), or keys spread too wide for a dense layout.
    `q` lies in [0, 1]; lo and hi never decrease from one window to the next (the C path
    raises ValueError where they do, or where a group, cell or window is out of range)."""
    module = _native_module()
    if (
        module is not None
        and 0.0 <= q <= 1.0
        and all(a.dtype.kind in "iu" for a in (item_group, item_cell, lo, hi))
    ):
        return _window_quantiles_native(
            module, flat, item_group, item_cell, n_groups, n_cells, lo, hi, q
        )
    return _window_quantiles_numpy(flat, item_group, item_cell, n_groups, n_cells, lo, hi, q)


def _native_module() -> ModuleType | None:
    # Imported here: statsd_gateway.native imports the sketch package.
    from statsd_gateway import native

    return native.native_module()


def _window_quantiles_native(
    module: ModuleType,
    flat: FlatBins,
    item_group: _I64,
    item_cell: _I64,
    n_groups: int,
    n_cells: int,
    lo: _I64,
    hi: _I64,
    q: float,
) -> _F64 | None:
    """window_quantiles by sg_windows.c (see the module); None where the numpy path says it."""
    n_windows = lo.size
    out = np.full((n_groups, n_windows), np.nan)
    if len(flat) == 0 or n_windows == 0:
        return out
    if not flat.integral.all():
        return None
    kind = np.empty(n_groups * n_windows, dtype=np.uint8)
    key = np.empty(n_groups * n_windows, dtype=np.int64)
    keys, bounds, group, cell, lo_, hi_ = (
        np.ascontiguousarray(a, dtype=np.int64)
        for a in (flat.keys, flat.bounds, item_group, item_cell, lo, hi)
    )
    counts, zero = (np.ascontiguousarray(a, dtype=np.float64) for a in (flat.counts, flat.zero))
    done = module.window_quantiles(
        keys, counts, bounds, zero, group, cell, n_groups, n_cells, lo_, hi_, float(q),
        64 * int(flat.bounds[-1]) + _BLOCK, kind, key,
    )  # fmt: skip
    if done is None:  # counts not integral or summing to 2**53, keys too wide: as numpy's
        return None
    res = out.reshape(-1)
    neg, pos = kind == _NEG, kind == _POS
    held = neg | pos
    values = _values(key[held])
    res[held] = np.where(neg[held], -values, values)
    res[kind == _ZERO] = 0.0
    return out


def _window_quantiles_numpy(
    flat: FlatBins,
    item_group: _I64,
    item_cell: _I64,
    n_groups: int,
    n_cells: int,
    lo: _I64,
    hi: _I64,
    q: float,
) -> _F64 | None:
    """window_quantiles with numpy: the reference (see the module)."""
    n_windows = lo.size
    out = np.full((n_groups, n_windows), np.nan)
    if len(flat) == 0 or n_windows == 0:
        return out
    if not flat.integral.all() or float(flat.counts.sum()) + float(flat.zero.sum()) >= _SAFE_INT:
        return None
    seg_len = np.diff(flat.bounds)
    seg = np.repeat(np.arange(seg_len.size, dtype=np.int64), seg_len)
    bin_item, bin_neg = seg // 2, (seg % 2).astype(np.bool_)
    stores = []  # per store: its bins, each bin's key less the store's least, that key, width
    for neg in (False, True):
        sel = np.flatnonzero(bin_neg == neg)
        keys = flat.keys[sel]
        kmin = int(keys.min()) if keys.size else 0
        width = int(keys.max()) - kmin + 1 if keys.size else 0
        offset = np.zeros(seg.size, dtype=np.int64)
        offset[sel] = keys - kmin
        stores.append((sel, offset, kmin, width))
    width_all = max(stores[0][3] + stores[1][3], 1)
    if n_groups * (n_cells + n_windows) * width_all > 64 * seg.size + _BLOCK:
        return None  # keys too far apart to lay out densely (1e-300 beside 1e300)
    per_group = (n_cells + 1 + n_windows) * width_all
    block = max(1, _BLOCK // per_group)
    order_items = np.argsort(item_group, kind="stable")
    item_bounds = np.searchsorted(item_group[order_items], np.arange(0, n_groups + block, block))
    for b, g0 in enumerate(range(0, n_groups, block)):
        nb = min(block, n_groups - g0)
        items = order_items[item_bounds[b] : item_bounds[b + 1]]
        if items.size == 0:
            continue
        in_block = np.zeros(len(flat), dtype=np.bool_)
        in_block[items] = True
        slot = (item_group - g0) * n_cells + item_cell  # per item, its (group, cell) in the block
        windows = []
        for sel, offset, _, width in stores:
            pick = sel[in_block[bin_item[sel]]]
            code = slot[bin_item[pick]] * width + offset[pick]
            dense = (
                np.bincount(code, flat.counts[pick], nb * n_cells * width).astype(
                    np.float64, copy=False
                )
                if width
                else None
            )
            windows.append(_windowed(dense, nb, n_cells, width, lo, hi))
        zero = np.bincount(slot[items], flat.zero[items], nb * n_cells).astype(
            np.float64, copy=False
        )
        zeros = _windowed(zero, nb, n_cells, 1, lo, hi)[..., 0]
        out[g0 : g0 + nb] = _ranks(windows[0], windows[1], zeros, stores[0][2], stores[1][2], q)
    return out


def _windowed(dense: _F64 | None, nb: int, n_cells: int, width: int, lo: _I64, hi: _I64) -> _F64:
    """(nb, windows, width): each window's counts, from the (nb, cells, width) counts."""
    if dense is None or width == 0:
        return np.zeros((nb, lo.size, 0))
    cells = dense.reshape(nb, n_cells, width)
    prefix = np.zeros((nb, n_cells + 1, width))
    np.cumsum(cells, axis=1, out=prefix[:, 1:])
    got: _F64 = prefix[:, hi] - prefix[:, lo]
    return got


def _ranks(pos: _F64, neg: _F64, zero: _F64, pos_min: int, neg_min: int, q: float) -> _F64:
    """cell_quantiles' rank search on dense window counts (the same arithmetic)."""
    pos_cum = np.cumsum(pos, axis=-1)
    neg_cum = np.cumsum(neg, axis=-1)
    pos_total = pos_cum[..., -1] if pos.shape[-1] else np.zeros(zero.shape)
    neg_total = neg_cum[..., -1] if neg.shape[-1] else np.zeros(zero.shape)
    total = neg_total + zero + pos_total
    rank = q * (total - 1.0)
    nonempty = total != 0
    in_neg = nonempty & (rank < neg_total)
    in_zero = nonempty & ~in_neg & (rank < zero + neg_total)
    in_pos = nonempty & ~in_neg & ~in_zero & (pos_total > 0)
    odd_neg = nonempty & ~in_neg & ~in_zero & ~in_pos & (zero <= 0)
    res = np.zeros(total.shape)
    if in_neg.any() or odd_neg.any():
        # First cumulative count >= reversed rank + 1 (at least the first key held).
        t = np.maximum(np.ceil((neg_total - rank - 1.0) + 1.0), 1.0)
        t[odd_neg] = 1.0
        i = np.minimum((neg_cum < t[..., None]).sum(axis=-1), max(neg.shape[-1] - 1, 0))
        res = np.where(in_neg | odd_neg, -_values(i + neg_min), res)
    if in_pos.any():
        # First cumulative count > rank - zero - neg_total (at least the first key held).
        t = np.maximum(np.floor(rank - zero - neg_total), 0.0)
        i = np.minimum((pos_cum <= t[..., None]).sum(axis=-1), pos.shape[-1] - 1)
        res = np.where(in_pos, _values(i + pos_min), res)
    res[~nonempty] = np.nan
    return res


def _values(keys: npt.NDArray[np.int64]) -> _F64:
    """value_of() of each key (computed once per distinct key, as cell_quantiles does)."""
    uniq, inv = np.unique(keys, return_inverse=True)
    vals = np.array([value_of(k) for k in uniq.tolist()], dtype=np.float64)
    return vals[inv.reshape(keys.shape)]
