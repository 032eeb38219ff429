"""Decoding SGC1 chunks in process: the numpy reference against the C decoder (sg_chunks.c).

What it measures
    4,000 chunks of 360 timer rows each, as the 1 min tier holds 1,000 series × 24 h (4 chunks
    of 6 h a series): every row `--per-row` values (default 60, bench/query.py's 1 min rows),
    integers 1..997 drawn pseudo-randomly (seeded), with their sketch; encoded by
    store/chunks.py. Then, each `--runs` times, alternating the two decoders (the median kept):
      - day sum: all 4,000 chunks, values=("sum",), no sketches (a sum over the day);
      - hour p99: the 1,000 chunks holding one hour (the second of a window), values=("min",
        "max") with the sketches of that hour's blocks (what a quantile query reads).
    The Python figure is chunks_decode._decode_chunks_python, the native one decode_chunks with
    the native module (checked to have run it, and to give the same arrays once).

How to run (from the repository root, after `pip install -e .`; about a minute)
    .venv/bin/python bench/chunk_decode.py
    .venv/bin/python bench/chunk_decode.py --runs 9 --json /tmp/chunk-decode.json
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
from statsd_gateway.model import MetricType, RowBatch
from statsd_gateway.store import chunks_decode
from statsd_gateway.store.chunks import chunk_span, encode_chunks

RES = 60.0
SPAN = chunk_span(RES)  # 6 h
T0 = 1_700_000_000 // SPAN * SPAN


def series_chunks(rng: np.random.Generator, per_day: int, per_row: int) -> list[bytes]:
    """One timer series' day of 1 min rows, as its chunks."""
    n = per_day
    values = rng.integers(1, 998, n * per_row).astype(np.float64)
    flat = sketch.bin_flat(values, None, np.arange(0, n * per_row + 1, per_row))
    v = values.reshape(n, per_row)
    nan = np.full(n, np.nan)
    rows = RowBatch(
        ts=T0 + RES * np.arange(n), keys=[("default", "t", ())] * n,
        types=[MetricType.TIMING] * n, count=np.full(n, float(per_row)), sum=v.sum(axis=1),
        min=v.min(axis=1), max=v.max(axis=1), last=nan, last_ts=nan, sketches=flat,
        has_sketch=np.ones(n, dtype=np.bool_), hll=[None] * n,
    )  # fmt: skip
    per_chunk = int(SPAN // RES)
    return encode_chunks(rows, list(range(0, n + 1, per_chunk)))


def timed(fn: Callable[[], Any], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def same(a: chunks_decode.DecodedChunks, b: chunks_decode.DecodedChunks) -> bool:
    arrays = [(a.ts, b.ts), (a.chunk, b.chunk), (a.sketch_rows, b.sketch_rows)]
    arrays += [(a.values[k], b.values[k]) for k in b.values]
    arrays += [(getattr(a.sketches, f), getattr(b.sketches, f)) for f in ("keys", "counts",
               "bounds", "zero", "integral")]  # fmt: skip
    return a.values.keys() == b.values.keys() and all(
        x.dtype == y.dtype and x.tobytes() == y.tobytes() for x, y in arrays
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--series", type=int, default=1000)
    ap.add_argument("--per-row", type=int, default=60, help="timer values a 1 min row")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    module = native.native_module()
    assert module is not None, "the native module is not built (pip install -e .), or turned off"

    t0 = time.perf_counter()
    rng = np.random.default_rng(20261203)
    by_series = [series_chunks(rng, int(86400 // RES), args.per_row) for _ in range(args.series)]
    day = [blob for blobs in by_series for blob in blobs]
    hour = [blobs[0] for blobs in by_series]  # the window [T0, T0 + 6 h) of every series
    since, until = T0 + 3600.0, T0 + 7200.0
    print(f"{len(day)} chunks, {sum(map(len, day)) / 1e6:.1f} MB, made in "
          f"{time.perf_counter() - t0:.0f} s")  # fmt: skip

    cases: dict[str, tuple[list[bytes], dict[str, Any]]] = {
        "day sum": (day, {"values": ("sum",)}),
        "hour p99": (
            hour, {"values": ("min", "max"), "sketches": True, "since": since, "until": until}
        ),
    }  # fmt: skip
    results: dict[str, dict[str, float]] = {}
    for name, (blobs, kw) in cases.items():
        full = {"values": (), "sketches": False, "hll": False, "since": -np.inf, "until": np.inf}
        full.update(kw)

        def python(blobs: list[bytes] = blobs, full: dict[str, Any] = full) -> Any:
            return chunks_decode._decode_chunks_python(blobs, **full)

        def compiled(blobs: list[bytes] = blobs, kw: dict[str, Any] = kw) -> Any:
            return chunks_decode.decode_chunks(blobs, **kw)

        got, want = compiled(), python()
        assert type(got.ts.base).__name__ == "Buffer", "the native decoder did not run"
        assert same(got, want), "the two decoders disagree"
        py: list[float] = []
        c: list[float] = []
        for _ in range(args.runs):  # alternating, so that both see the same machine
            py += timed(python, 1)
            c += timed(compiled, 1)
        results[name] = {
            "chunks": len(blobs),
            "rows": int(got.ts.size),
            "sketches": len(got.sketches),
            "python_ms": statistics.median(py) * 1e3,
            "native_ms": statistics.median(c) * 1e3,
            "python_runs_ms": [round(x * 1e3, 2) for x in py],
            "native_runs_ms": [round(x * 1e3, 2) for x in c],
        }
    print(f"{'case':10} {'chunks':>6} {'rows':>9} {'sketches':>8} {'python ms':>10} "
          f"{'native ms':>10} {'speed-up':>8}")  # fmt: skip
    for name, r in results.items():
        print(f"{name:10} {r['chunks']:>6} {r['rows']:>9} {r['sketches']:>8} "
              f"{r['python_ms']:>10.1f} {r['native_ms']:>10.1f} "
              f"{r['python_ms'] / r['native_ms']:>7.1f}×")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
