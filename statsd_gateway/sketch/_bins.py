"""The sketch containers: :class:`Bins` (one sketch) and :class:`FlatBins` (many, as flat arrays).

Contract:
- A quantile sketch is a :class:`Bins`: the sparse bins of a DDSketch with the
  LogarithmicMapping at relative accuracy 0.01 and index offset 0 (see ``_mapping``). Keys are
  int64 and strictly increasing per store, counts float64 and > 0; negative values go to a
  separate store keyed by ``|v|``; ``zero`` is the weight of values with ``|v| <= MIN_POSSIBLE``.
- :class:`Bins` arrays are shared views (read-only when produced here); treat them as immutable.
- :class:`FlatBins` holds many sketches in five flat read-only arrays, which is what the
  vectorised paths (binning, the batch codec, the grouped merge) produce and consume.
  :func:`flat_from_bins`, :func:`flat_take`, :func:`flat_concat` and ``FlatBins.bins`` convert
  between the two without changing a bit.
- The segment helpers here (``_seg_any``, ``_seg_arange``, ``_sizes``) are shared by the modules
  above this one; this module imports nothing else of the package.
"""

from __future__ import annotations

from collections.abc import Sequence, Sized
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

_I64 = npt.NDArray[np.int64]
_F64 = npt.NDArray[np.float64]
_BOOL = npt.NDArray[np.bool_]

_SAFE_INT = 1 << 53  # integral counts below this add exactly in float64


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


def flat_from_checked(
    keys: _I64, counts: _F64, bounds: _I64, zero: _F64, integral: npt.NDArray[np.bool_]
) -> FlatBins:
    """A FlatBins of arrays that their decoder has checked as :func:`flat_from_arrays` checks
    them, `integral` computed as it computes it (sg_chunks.c): taken as they are, read-only."""
    integral = np.asarray(integral, dtype=np.bool_)
    integral.flags.writeable = False
    return FlatBins(
        _readonly_i64(keys), _readonly_f64(counts), _readonly_i64(bounds), _readonly_f64(zero),
        integral,
    )  # fmt: skip


def flat_from_arrays(keys: _I64, counts: _F64, bounds: _I64, zero: _F64) -> FlatBins:
    """A FlatBins of arrays decoded elsewhere (a chunk), checked as :class:`FlatBins` requires
    (``bounds`` one more than twice the items, from 0 to every bin, non-decreasing; counts > 0;
    keys increasing within each store), ``integral`` computed. Raises ValueError otherwise."""
    n = zero.size
    if bounds.size != 2 * n + 1 or bounds[0] != 0 or bounds[-1] != keys.size:
        raise ValueError("bounds do not cover the bins")
    lens = np.diff(bounds)
    if (lens < 0).any() or counts.size != keys.size:
        raise ValueError("bounds are not ordered, or counts and keys differ in length")
    if not (counts > 0).all() or not (zero >= 0).all():
        raise ValueError("a count is not positive")
    if keys.size > 1:
        step_ok = keys[1:] > keys[:-1]
        starts = bounds[1:-1][bounds[1:-1] < keys.size]
        step_ok[starts[starts > 0] - 1] = True  # a store's first key follows another store
        if not step_ok.all():
            raise ValueError("keys are not increasing within a store")
    bad = ~((np.floor(counts) == counts) & (counts < _SAFE_INT))
    integral = (np.floor(zero) == zero) & (zero < _SAFE_INT)
    if bad.any():
        integral &= ~_seg_any(bad, lens).reshape(-1, 2).any(axis=1)
    integral.flags.writeable = False
    return FlatBins(
        _readonly_i64(keys), _readonly_f64(counts), _readonly_i64(bounds), _readonly_f64(zero),
        integral,
    )  # fmt: skip
