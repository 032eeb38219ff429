"""sketch.window_quantiles in process: the numpy reference against the C kernel (sg_windows.c).

What it measures
    `--groups` (default 1,000) groups × 66 cells, one sketch per (group, cell) binned from
    `--values` (default 60) lognormal values (median 20, sigma 0.8, seeded), as PromQL's
    histogram_quantile(0.99, rate(m[5m])) reads them: 61 windows of 5 cells, q = 0.99. Each
    `--runs` times (default 7), alternating the two paths, the median kept. The numpy figure is
    _windows._window_quantiles_numpy, the native one window_quantiles with the native module
    (checked to be there, and to give the same floats, bit for bit).

How to run (from the repository root, after `pip install -e .`; under a minute)
    .venv/bin/python bench/window_quantiles.py
    .venv/bin/python bench/window_quantiles.py --runs 9 --json /tmp/window-quantiles.json
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from statsd_gateway import native, sketch
from statsd_gateway.sketch import _windows

CELLS, WINDOWS, SPAN, Q = 66, 61, 5, 0.99


def inputs(groups: int, per_cell: int, seed: int = 1) -> tuple[Any, ...]:
    """The sketches and windows: one sketch per (group, cell), windows of SPAN cells."""
    rng = np.random.default_rng(seed)
    n = groups * CELLS
    values = rng.lognormal(np.log(20.0), 0.8, n * per_cell)
    flat = sketch.bin_flat(values, None, np.arange(0, n * per_cell + 1, per_cell))
    group = np.repeat(np.arange(groups, dtype=np.int64), CELLS)
    cell = np.tile(np.arange(CELLS, dtype=np.int64), groups)
    hi = np.arange(CELLS - WINDOWS + 1, CELLS + 1, dtype=np.int64)
    return flat, group, cell, groups, CELLS, hi - SPAN, hi, Q


def timed(fn: Callable[[], Any], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        gc.collect()
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--groups", type=int, default=1000)
    ap.add_argument("--values", type=int, default=60)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    if native.native_module() is None:
        raise SystemExit(f"the native module is needed: {native.implementation()}")
    args_in = inputs(args.groups, args.values)
    flat = args_in[0]
    ref = _windows._window_quantiles_numpy(*args_in)
    got = sketch.window_quantiles(*args_in)
    assert ref is not None and got is not None
    assert got.tobytes() == ref.tobytes(), "the two paths disagree"
    numpy_s: list[float] = []
    native_s: list[float] = []
    for _ in range(args.runs):
        numpy_s += timed(lambda: _windows._window_quantiles_numpy(*args_in), 1)
        native_s += timed(lambda: sketch.window_quantiles(*args_in), 1)
    figures = {
        "groups": args.groups,
        "cells": CELLS,
        "windows": WINDOWS,
        "bins": int(flat.keys.size),
        "numpy_ms": 1e3 * statistics.median(numpy_s),
        "native_ms": 1e3 * statistics.median(native_s),
    }
    figures["speedup"] = figures["numpy_ms"] / figures["native_ms"]
    print(
        f"{args.groups} groups × {CELLS} cells ({figures['bins']:,} bins), {WINDOWS} windows"
        f" of {SPAN}, q={Q}: numpy {figures['numpy_ms']:.1f} ms, native"
        f" {figures['native_ms']:.1f} ms ({figures['speedup']:.1f}×), median of {args.runs}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
