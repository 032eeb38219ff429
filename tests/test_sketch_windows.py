"""window_quantiles (sliding windows of cells) against quantile(merge(…)) of each window, on
whichever path the pass runs: the C kernel in the native pass, the numpy one in the pure-Python
pass (tests/test_windows_native.py holds the two to each other, bit for bit)."""

from __future__ import annotations

import numpy as np
import pytest

from statsd_gateway import sketch as sk
from tests.test_sketch import assert_same_floats, cell_blobs


def window_reference(
    blobs: list[bytes], groups: np.ndarray, cells: np.ndarray, n_groups: int,
    lo: np.ndarray, hi: np.ndarray, q: float,
) -> np.ndarray:  # fmt: skip
    out = np.full((n_groups, lo.size), np.nan)
    for g in range(n_groups):
        for w, (a, b) in enumerate(zip(lo.tolist(), hi.tolist(), strict=True)):
            held = [
                sk.decode(x)
                for x, gg, c in zip(blobs, groups, cells, strict=True)
                if gg == g and a <= c < b
            ]
            v = sk.quantile(sk.merge(held), q)
            if v is not None:
                out[g, w] = v
    return out


@pytest.mark.parametrize("span", [1, 3, 7])
def test_window_quantiles_equal_the_merge_of_each_window(span: int) -> None:
    blobs = [b for b in cell_blobs(300, seed=60 + span, weighted=False)]
    flat = sk.decode_flat(blobs)
    rng = np.random.default_rng(61)
    n_groups, n_cells = 5, 20
    groups = rng.integers(0, n_groups, len(blobs))
    cells = rng.integers(0, n_cells, len(blobs))
    groups[groups == 3] = 2  # a group with no sketch at all
    steps = np.arange(-2, n_cells + 2)
    lo, hi = np.clip(steps - span + 1, 0, n_cells), np.clip(steps + 1, 0, n_cells)
    for q in (0.01, 0.25, 0.5, 0.9, 0.99, 0.999):
        got = sk.window_quantiles(flat, groups, cells, n_groups, n_cells, lo, hi, q)
        assert got is not None
        want = window_reference(blobs, groups, cells, n_groups, lo, hi, q)
        assert_same_floats(got.reshape(-1), want.reshape(-1))
        assert np.isnan(got[3]).all()


def test_window_quantiles_decline_what_they_cannot_do_exactly() -> None:
    weighted = sk.decode_flat([sk.encode(sk.bin_values([1.0, 2.0], [1 / 0.3, 1.0]))])
    one = np.zeros(1, dtype=np.int64)
    assert sk.window_quantiles(weighted, one, one, 1, 1, one, one + 1, 0.5) is None
    wide = sk.decode_flat([sk.encode(sk.bin_values([1e-300, 1e300]))] * 3)
    three = np.zeros(3, dtype=np.int64)
    # 200 groups × 2 cells × 69,000 keys (1e-300 to 1e300): too wide to lay out densely.
    assert sk.window_quantiles(wide, three, three, 200, 1, one, one + 1, 0.5) is None
    assert sk.window_quantiles(wide, three, three, 1, 1, one, one + 1, 0.5) is not None
