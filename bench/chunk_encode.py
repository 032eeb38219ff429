"""Encoding SGC1 chunks in process: what a seal unit spends per bucket row in encode_chunks.

What it measures
    `--series` timer series × one chunk window of the 10 s tier (360 rows each, one value a
    row, integers 1..997 drawn pseudo-randomly, seeded) with their sketches, encoded by
    store/chunks.py's encode_chunks in one call (as a seal unit of that many series does), each
    `--runs` times; the median per row is reported, with the bytes a row takes. Run it against
    another commit by pointing PYTHONPATH at a checkout of it (the data is the same).

How to run (from the repository root; a few seconds)
    .venv/bin/python bench/chunk_encode.py
    PYTHONPATH=/path/to/other/checkout .venv/bin/python bench/chunk_encode.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from statsd_gateway import sketch
from statsd_gateway.model import MetricType, RowBatch
from statsd_gateway.store.chunks import buckets_per_chunk, encode_chunks

RES = 10.0
T0 = 1_700_000_000 // 3600 * 3600.0


def rows_of(series: int, seed: int = 20261203) -> tuple[RowBatch, list[int]]:
    """`series` series' rows of one window, series by series, and the cuts between them."""
    per = buckets_per_chunk(RES)
    n = series * per
    values = np.random.default_rng(seed).integers(1, 998, n).astype(np.float64)
    nan = np.full(n, np.nan)
    keys = [("default", "t", (("host", f"h{i:04d}"),)) for i in range(series) for _ in range(per)]
    rows = RowBatch(
        ts=np.tile(T0 + RES * np.arange(per), series), keys=keys,
        types=[MetricType.TIMING] * n, count=np.ones(n), sum=values, min=values, max=values,
        last=nan, last_ts=nan, sketches=sketch.bin_flat(values, None, np.arange(n + 1)),
        has_sketch=np.ones(n, dtype=np.bool_), hll=[None] * n,
    )  # fmt: skip
    return rows, list(range(0, n + 1, per))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--series", type=int, default=500, help="series a seal unit holds")
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    rows, cuts = rows_of(args.series)
    times, size = [], 0
    for _ in range(args.runs):
        t0 = time.perf_counter()
        blobs = encode_chunks(rows, cuts)
        times.append(time.perf_counter() - t0)
        size = sum(map(len, blobs))
    n = len(rows)
    per_row = [t / n * 1e6 for t in times]
    print(f"{len(cuts) - 1} chunks, {n:,} rows: {statistics.median(per_row):.2f} µs a row "
          f"(runs {min(per_row):.2f}–{max(per_row):.2f}), {size / n:.2f} B a row")  # fmt: skip


if __name__ == "__main__":
    main()
