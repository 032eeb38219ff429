"""The C window quantiles (sg_windows.c, through sketch._windows) against the numpy reference
(_windows._window_quantiles_numpy): for any sketches, groups, cells and windows, both decline
(None) or both give the same floats, bit for bit (NaN where a window holds no count, -0.0
never, the same bucket centres).

- Sketches binned from values of every kind (positive, negative, both, zeros, empty, one value,
  keys far apart, counts in the thousands, counts near 2**52, fractional weights), encoded and
  decoded as the store reads them (decode_flat), put into random groups (some without an item)
  and cells, read over windows that are empty, single cells, clipped at either end, or
  anything else that never moves backwards; q anywhere in [0, 1].
- Keys too wide to lay out densely, at the limit and past it; inputs the C code refuses
  (ValueError, never a crash); several threads at once; and that the native path runs at all.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statsd_gateway import native
from statsd_gateway import sketch as sk
from statsd_gateway.sketch import _windows
from tests.conftest import PARITY, require_native_core

MODULE = require_native_core(module=True)


def _pool(seed: int = 5) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """Blobs of real sketches: (integral counts, fractional counts, keys far apart)."""
    rng = np.random.default_rng(seed)

    def some(n: int) -> int:
        return int(rng.integers(1, n))

    def zeros_and_negatives() -> np.ndarray:
        v = -rng.lognormal(1, 1, some(30))
        v[rng.random(v.size) < 0.5] = 0.0
        return v

    kinds = [
        lambda: rng.lognormal(np.log(20), 0.8, some(80)),
        lambda: -rng.lognormal(np.log(5), 1.0, some(40)),
        lambda: rng.normal(0, 50, some(60)),  # negatives and positives
        zeros_and_negatives,
        lambda: np.zeros(some(4)),
        lambda: np.array([float(rng.lognormal(3, 2)) * rng.choice([-1.0, 1.0])]),  # one bin
        lambda: rng.lognormal(8, 3, some(50)),  # a wide key range
        lambda: np.repeat(rng.lognormal(2, 1, 5), 700),  # counts in the hundreds
    ]
    integral = [sk.encode(sk.Bins.empty()) for _ in range(8)]
    for _ in range(240):
        integral.append(sk.encode(sk.bin_values(kinds[int(rng.integers(len(kinds)))]())))
    # Integral counts whose sum reaches 2**53 once a few meet (both paths then decline).
    integral += [sk.encode(sk.bin_values([3.0, -1.0, 0.0], [2.0**51, 2.0**50, 2.0**50]))]
    fractional = [
        sk.encode(sk.bin_values(rng.normal(0, 50, 30), rng.choice([1.0, 1 / 0.3], 30))),
        sk.encode(sk.bin_values([0.0], [1 / 0.3])),
    ]
    wide = [
        sk.encode(sk.bin_values([1e-300, 1e300])),
        sk.encode(sk.bin_values(-np.exp(rng.uniform(-700, 700, 20)))),
    ]
    return integral, fractional, wide


INTEGRAL, FRACTIONAL, WIDE = _pool()
# Every blob decoded once (an item of a case is one of these, as decode_flat gave it): the
# integral ones first, then the fractional, then the wide; the odd ones are those and the empty.
POOL = sk.decode_flat(INTEGRAL + FRACTIONAL + WIDE)
ODD = np.concatenate([np.arange(len(INTEGRAL), len(POOL)), np.arange(8)])
QS = [0.0, 1.0, 0.5, 0.99, 0.01, 0.25, 0.9, 0.999, 1 / 3, 5e-324, 1.0 - 2.0**-53]


def both(*args: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(the native answer through window_quantiles, the numpy reference's)."""
    return sk.window_quantiles(*args), _windows._window_quantiles_numpy(*args)


def assert_same(got: np.ndarray | None, want: np.ndarray | None) -> None:
    assert (got is None) == (want is None), (got, want)
    if got is not None and want is not None:
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == want.tobytes(), np.flatnonzero(
            got.view(np.int64) != want.view(np.int64)
        )[:5]


def windows(rng: np.random.Generator, n_cells: int, steps: bool) -> tuple[np.ndarray, np.ndarray]:
    """lo and hi never decreasing, within [0, n_cells]: PromQL's steps (a span, clipped at both
    ends, empty before the first cell and past the last), or any such pair."""
    if steps:
        span = int(rng.integers(1, n_cells + 3))
        first, extra = int(rng.integers(-3, 2)), int(rng.integers(0, 4))
        at = np.arange(first, n_cells + extra, dtype=np.int64)
        lo, hi = at - span + 1, at + 1
    else:
        n = int(rng.integers(0, 13))
        a, b = np.sort(rng.integers(0, n_cells + 1, n)), np.sort(rng.integers(0, n_cells + 1, n))
        lo, hi = np.minimum(a, b), np.maximum(a, b)
    return np.clip(lo, 0, n_cells), np.clip(hi, 0, n_cells)


@st.composite
def cases(draw: st.DrawFn) -> tuple[Any, ...]:
    """The arguments of a window_quantiles call (hypothesis draws the sizes and q, a generator
    seeded by it the rest: cheaper to draw)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_groups = draw(st.integers(0, 6))
    n_cells = draw(st.integers(1, 12))
    n = draw(st.integers(0, 40)) if n_groups else 0
    # how often an item is one of the odd ones (empty, fractional counts, keys far apart)
    odd = draw(st.sampled_from([0.0, 0.0, 0.05, 0.3]))
    pick = rng.integers(0, len(INTEGRAL), n)
    odd_ones = rng.random(n) < odd
    pick[odd_ones] = rng.choice(ODD, int(odd_ones.sum()))
    flat = sk.flat_take(POOL, pick)
    used = rng.integers(0, max(n_groups, 1), int(rng.integers(1, 4)))  # the others: no item
    groups = rng.choice(used, n).astype(np.int64)
    cells = rng.integers(0, n_cells, n)
    lo, hi = windows(rng, n_cells, draw(st.booleans()))
    q = draw(st.one_of(st.sampled_from(QS), st.floats(0.0, 1.0)))
    return flat, groups, cells, n_groups, n_cells, lo, hi, q


@settings(PARITY, max_examples=max(PARITY.max_examples // 5, 50))
@given(cases())
def test_native_window_quantiles_equal_the_numpy_reference(case: tuple[Any, ...]) -> None:
    assert_same(*both(*case))


def test_native_window_quantiles_equal_the_merge_of_each_window() -> None:
    """Against quantile(merge(…)) itself, on the C path (the numpy path's own test is
    tests/test_sketch_windows.py's, which runs on both paths)."""
    rng = np.random.default_rng(3)
    blobs = [INTEGRAL[int(i)] for i in rng.integers(0, len(INTEGRAL) - 1, 120)]
    flat = sk.decode_flat(blobs)
    n_groups, n_cells = 4, 9
    groups = rng.integers(0, n_groups - 1, len(blobs))
    cells = rng.integers(0, n_cells, len(blobs))
    steps = np.arange(-1, n_cells + 2)
    lo, hi = np.clip(steps - 2, 0, n_cells), np.clip(steps + 1, 0, n_cells)
    for q in (0.0, 0.01, 0.5, 0.99, 1.0):
        got = sk.window_quantiles(flat, groups, cells, n_groups, n_cells, lo, hi, q)
        assert got is not None
        for g in range(n_groups):
            for w, (a, b) in enumerate(zip(lo.tolist(), hi.tolist(), strict=True)):
                held = [sk.decode(x) for x, gg, c in zip(blobs, groups, cells, strict=True)
                        if gg == g and a <= c < b]  # fmt: skip
                v = sk.quantile(sk.merge(held), q)
                assert got[g, w].tobytes() == np.float64(np.nan if v is None else v).tobytes()


@pytest.mark.parametrize("extra", [-1, 0, 1])
def test_keys_too_wide_decline_at_the_same_limit(extra: int) -> None:
    """1e-300 beside 1e300 (about 69,000 keys): both paths decline from the same size on."""
    flat = sk.decode_flat([WIDE[0]] * 3)
    width = int(flat.keys.max() - flat.keys.min()) + 1
    limit = 64 * flat.keys.size + _windows._BLOCK
    n_groups = limit // (2 * width) + extra  # 1 cell, 1 window
    one, three = np.zeros(1, np.int64), np.zeros(3, np.int64)
    got, want = both(flat, three, three, n_groups, 1, one, one + 1, 0.5)
    assert_same(got, want)
    assert (got is None) == (n_groups * 2 * width > limit)


def test_counts_not_integral_or_too_large_decline() -> None:
    one = np.zeros(1, np.int64)
    for blob in FRACTIONAL:
        assert_same(*both(sk.decode_flat([blob]), one, one, 1, 1, one, one + 1, 0.5))
        assert (
            sk.window_quantiles(sk.decode_flat([blob]), one, one, 1, 1, one, one + 1, 0.5) is None
        )
    # 2**52 each: one answers, two reach 2**53 (in any of the groups).
    alone = sk.decode_flat([INTEGRAL[-1]])
    assert sk.window_quantiles(alone, one, one, 1, 1, one, one + 1, 0.5) is not None
    two = np.array([0, 1], np.int64)
    huge = sk.decode_flat([INTEGRAL[-1]] * 2)
    assert sk.window_quantiles(huge, two, two * 0, 2, 1, one, one + 1, 0.5) is None
    assert_same(*both(huge, two, two * 0, 2, 1, one, one + 1, 0.5))


def _call(
    flat: sk.FlatBins, group: Any, cell: Any, n_groups: int, n_cells: int, lo: Any, hi: Any,
    q: float = 0.5, kind: Any = None, key: Any = None, **arrays: Any,
) -> Any:  # fmt: skip
    """The module's function itself, with arrays (any of them replaced by `arrays`)."""
    n = n_groups * len(lo)
    a = {"keys": flat.keys, "counts": flat.counts, "bounds": flat.bounds, "zero": flat.zero}
    a.update(arrays)
    return MODULE.window_quantiles(
        a["keys"], a["counts"], a["bounds"], a["zero"], group, cell, n_groups, n_cells, lo, hi,
        q, 1 << 40, np.zeros(n, np.uint8) if kind is None else kind,
        np.zeros(n, np.int64) if key is None else key,
    )  # fmt: skip


def test_refused_inputs_raise_value_error() -> None:
    flat = sk.decode_flat(INTEGRAL[8:14])
    n = len(flat)
    g, c = np.zeros(n, np.int64), np.arange(n, dtype=np.int64)
    lo, hi = np.array([0, 1], np.int64), np.array([2, 3], np.int64)
    assert _call(flat, g, c, 1, n, lo, hi) is True
    bounds = flat.bounds.copy()
    bounds[3] = bounds[2] - 1
    refused: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((flat, g + 1, c, 1, n, lo, hi), {}),  # group out of range
        ((flat, g - 1, c, 1, n, lo, hi), {}),
        ((flat, g, c + n, 1, n, lo, hi), {}),  # cell out of range
        ((flat, g, c, 1, n, hi, lo), {}),  # lo > hi
        ((flat, g, c, 1, n, lo[::-1].copy(), hi[::-1].copy()), {}),  # backwards
        ((flat, g, c, 1, n, lo, hi + n), {}),  # past the cells
        ((flat, g, c, 1, n, lo, hi, 1.5), {}),
        ((flat, g, c, 1, n, lo, hi, float("nan")), {}),
        (
            (flat, g, c, -1, n, lo, hi),
            {"kind": np.zeros(0, np.uint8), "key": np.zeros(0, np.int64)},
        ),
        ((flat, g, c, 1, n, lo, hi), {"bounds": bounds}),  # decreasing
        ((flat, g, c, 1, n, lo, hi), {"bounds": flat.bounds + 1}),  # not from 0
        ((flat, g, c, 1, n, lo, hi), {"keys": flat.keys[:-1]}),  # lengths
        ((flat, g, c, 1, n, lo, hi), {"zero": flat.zero[:-1]}),
        ((flat, g[:-1], c, 1, n, lo, hi), {}),
        ((flat, g, c, 1, n, lo, hi[:-1]), {}),
        ((flat, g, c, 1, n, lo, hi), {"kind": np.zeros(1, np.uint8)}),
        ((flat, g, c, 1, n, lo, hi), {"key": np.zeros(3, np.int64)}),
        ((flat, g.astype(np.int32), c, 1, n, lo, hi), {}),  # dtypes
        ((flat, g, c, 1, n, lo, hi), {"counts": flat.counts.astype(np.float32)}),
        ((flat, g, c, 1, n, lo, hi), {"kind": np.zeros(2, np.int64)}),
        ((flat, g, c, 1, n, lo, hi), {"keys": np.stack([flat.keys, flat.keys])}),
        ((flat, g, c, 1, n, lo, hi), {"keys": flat.keys[::-1]}),  # not contiguous
    ]
    for args, kw in refused:
        with pytest.raises(ValueError):
            _call(*args, **kw)
    with pytest.raises(ValueError):  # a read-only output
        _call(flat, g, c, 1, n, lo, hi, key=flat.keys[:2])
    # Through window_quantiles: what the numpy path's preconditions exclude is ValueError.
    with pytest.raises(ValueError):
        sk.window_quantiles(flat, g + 1, c, 1, n, lo, hi, 0.5)


def test_outputs_aliasing_inputs_do_not_crash() -> None:
    """An output buffer that is also an input (written while read): an answer or ValueError."""
    flat = sk.decode_flat(INTEGRAL[8:40])
    n = len(flat)
    g, c = np.zeros(n, np.int64), np.arange(n, dtype=np.int64) % 5
    for name in ("bounds", "keys"):
        arr = getattr(flat, name).copy()
        lo = np.arange(arr.size, dtype=np.int64) * 0
        hi = lo + 5
        key = arr[: lo.size]
        try:
            _call(flat, g, c, 1, 5, lo, hi, key=key, **{name: arr})
        except ValueError as e:
            assert "changed" in str(e)


def test_threads_get_the_same_answers() -> None:
    """The GIL is let go: several threads at once answer as one does."""
    rng = np.random.default_rng(9)
    flat = sk.decode_flat([INTEGRAL[int(i)] for i in rng.integers(0, 240, 3000)])
    groups, cells = rng.integers(0, 50, 3000), rng.integers(0, 30, 3000)
    hi = np.arange(1, 31)
    args = (flat, groups, cells, 50, 30, np.maximum(hi - 5, 0), hi, 0.99)
    want = _windows._window_quantiles_numpy(*args)
    assert want is not None
    with ThreadPoolExecutor(4) as pool:
        for got in pool.map(lambda _: sk.window_quantiles(*args), range(16)):
            assert_same(got, want)


def test_window_quantiles_runs_the_native_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """window_quantiles calls the module's kernel, which answers; with the pure-Python path
    forced, or q outside [0, 1], it does not."""
    real = MODULE.window_quantiles
    answered: list[Any] = []

    def spy(*args: Any) -> Any:
        out = real(*args)
        answered.append(out)
        return out

    monkeypatch.setattr(MODULE, "window_quantiles", spy)
    flat = sk.decode_flat(INTEGRAL[:60])
    groups, cells = np.arange(60) % 3, np.arange(60) % 7
    lo, hi = np.array([0, 0, 2, 5]), np.array([1, 4, 6, 7])
    args = (flat, groups, cells, 3, 7, lo, hi)
    got = sk.window_quantiles(*args, 0.9)
    assert answered == [True]
    assert_same(got, _windows._window_quantiles_numpy(*args, 0.9))
    sk.window_quantiles(*args, 1.5)
    monkeypatch.setenv(native.PURE_PYTHON_ENV, "1")
    assert_same(sk.window_quantiles(*args, 0.9), got)
    assert answered == [True]
