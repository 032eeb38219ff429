"""The PostgreSQL store beside SQLite, in one run (issue 13's figures).

What it measures
    - flush: one `write_flush` of 10,000 timer series (one 10 s bucket each, 20 lognormal
      values binned into its sketch), as the flusher writes it: median of `--runs` flushes,
      each a new bucket, SQLite and PostgreSQL alternating. Target (PostgreSQL): < 150 ms.
    - p99: a Gateway on each store holding an hour of 1,000 timer series as the flusher writes
      it (10 s buckets, the minute and hour rollups, sealed into chunks); the /v1 queries
      `agg=p99&window=1h` (the hourly tier) and `window=10s` (360,000 bucket sketches, the
      finest tier's chunks) over that hour, all series merged, over HTTP, timed from
      request to parsed JSON: median of `--runs`. Target (PostgreSQL): < 300 ms. Both stores'
      answers must be equal.
    PostgreSQL is a throwaway server this script starts (tests/postgres.py: initdb in a
    temporary directory, fsync on), or `--dsn` for one of yours (an empty database).

How to run (from the repository root; about a minute)
    .venv/bin/python bench/pg_store.py
    .venv/bin/python bench/pg_store.py --runs 11 --json /tmp/pg.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from msgspec.structs import replace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from statsd_gateway import sketch
from statsd_gateway.config import ApiKey, config_from_dict, hash_key
from statsd_gateway.gateway import Gateway
from statsd_gateway.model import BucketRow, MetricType, RowBatch
from statsd_gateway.store import SqliteStore
from statsd_gateway.store.base import FlushWrite, Store
from statsd_gateway.store.postgresql import PostgresStore
from statsd_gateway.store.rollup import merge_rows
from tests.postgres import PostgresCluster, server_bindir

T0 = 1_764_172_800.0
KEY = "bench-key"


def timer_rows(n: int, ts: float, rng: np.random.Generator, values: int) -> RowBatch:
    rows = []
    for i in range(n):
        v = rng.lognormal(3.0, 0.5, values)
        rows.append(
            BucketRow(
                ts,
                ("default", "bench.lat", (("host", f"h{i:05d}"),)),
                MetricType.TIMING,
                float(values),
                float(v.sum()),
                float(v.min()),
                float(v.max()),
                sketch=sketch.bin_values(v),
            )
        )
    return RowBatch.from_rows(rows)


@contextlib.contextmanager
def postgres(dsn: str | None) -> Iterator[PostgresCluster | None]:
    if dsn is not None:
        yield None
        return
    bindir = server_bindir()
    if bindir is None:
        sys.exit("PostgreSQL's server is not installed (apt-get install postgresql), or pass --dsn")
    cluster = PostgresCluster(bindir, durable=True)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.remove()


async def bench_flush(stores: dict[str, Store], runs: int) -> dict[str, list[float]]:
    rng = np.random.default_rng(7)
    times: dict[str, list[float]] = {k: [] for k in stores}
    for run in range(runs + 1):  # the first, creating the series, is not counted
        rows = timer_rows(10_000, T0 + 10 * run, rng, 20)
        for name, store in stores.items():
            began = time.perf_counter()
            assert await store.write_flush(FlushWrite(run + 1, rows))
            if run:
                times[name].append((time.perf_counter() - began) * 1000)
    return times


async def fill_hour(store: Store) -> None:
    """An hour of 1,000 timer series as the flusher writes it: 10 s buckets, each minute's
    rollups once complete, the hour's at its end; then sealed into chunks."""
    rng = np.random.default_rng(11)
    minute: list[RowBatch] = []
    hour: list[RowBatch] = []
    start = T0 + 3600
    for b in range(360):
        ts = start + 10 * b
        rows = timer_rows(1_000, ts, rng, 10)
        minute.append(rows)
        rollups: dict[float, RowBatch] = {}
        until: dict[float, float] = {}
        if (b + 1) % 6 == 0:
            done = merge_rows(RowBatch.concat(minute), 60.0)
            rollups[60.0], until[60.0] = done, ts + 10
            hour.append(done)
            minute = []
        if b == 359:
            rollups[3600.0], until[3600.0] = merge_rows(RowBatch.concat(hour), 3600.0), ts + 10
        await store.write_flush(FlushWrite(1000 + b, rows, rollups=rollups, complete_until=until))
    await store.seal_chunks()


async def bench_p99(configs: dict[str, dict[str, Any]], runs: int) -> dict[str, Any]:
    """Per store: each query of QUERIES over the hour, `runs` times (after one untimed)."""
    out: dict[str, Any] = {}
    for name, raw in configs.items():
        cfg = config_from_dict(raw)
        keys = (ApiKey(name="bench", sha256=hash_key(KEY), tenant="default"),)
        cfg = replace(cfg, auth=replace(cfg.auth, keys=keys))
        gw = Gateway(cfg, clock=lambda: T0 + 7205.0, flush_on_ticks=False)
        await gw.start()
        try:
            assert gw.http_address is not None
            url = "http://{}:{}/v1/metrics/query".format(*gw.http_address)
            out[name] = {}
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as s:
                for label, window in QUERIES.items():
                    params = {"name": "bench.lat", "agg": "p99", "window": window,
                              "since": str(int(T0 + 3600)),
                              "until": str(int(T0 + 7200))}  # fmt: skip
                    times, answer = [], None
                    for _ in range(runs + 1):
                        began = time.perf_counter()
                        async with s.get(url, params=params) as r:
                            answer = await r.json()
                            assert r.status == 200, answer
                        times.append((time.perf_counter() - began) * 1000)
                    out[name][label] = {"ms": times[1:], "answer": answer["points"]}
        finally:
            await gw.stop()
    return out


# The p99 of all 1,000 series over the hour: per hour (the hourly tier: 1,000 sketches), and
# per 10 s (the finest tier's chunks: 360,000 sketches, past query.max_sketches' default).
QUERIES = {"window_1h": "1h", "window_10s": "10s"}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--dsn", help="an empty PostgreSQL database (default: a throwaway server)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, postgres(args.dsn) as cluster:
        flush_dsn = args.dsn or cluster.fresh_database()  # type: ignore[union-attr]
        query_dsn = args.dsn or cluster.fresh_database()  # type: ignore[union-attr]
        now = lambda: T0 + 7205.0  # noqa: E731
        stores: dict[str, Store] = {
            "sqlite": SqliteStore(Path(tmp) / "flush.db", clock=now),
            "postgresql": PostgresStore(flush_dsn, source="bench", clock=now),
        }
        for s in stores.values():
            await s.open()
        flush = await bench_flush(stores, args.runs)
        for s in stores.values():
            await s.close()
        fill = {
            "sqlite": SqliteStore(Path(tmp) / "query.db", clock=now),
            "postgresql": PostgresStore(query_dsn, source="bench", clock=now),
        }
        for s in fill.values():
            await s.open()
            await fill_hour(s)
            await s.close()
        # The 10 s query merges 360,000 sketches, past the default query.max_sketches.
        storage = {"path": str(Path(tmp) / "query.db"), "wal": False}
        base = {
            "udp": {"enabled": False},
            "http": {"listen": "127.0.0.1:0"},
            "query": {"max_sketches": 1_000_000},
            "storage": storage,
        }
        pg_storage = {"backend": "postgresql", "postgresql": {"dsn": query_dsn, "source": "bench"}}
        pg = {**base, "storage": {**storage, **pg_storage}}
        p99 = await bench_p99({"sqlite": base, "postgresql": pg}, args.runs)
    for label in QUERIES:
        same = p99["sqlite"][label]["answer"] == p99["postgresql"][label]["answer"]
        assert same, f"the stores answer {label} differently"
    result = {
        "flush_10000_timers_ms": {k: statistics.median(v) for k, v in flush.items()},
        **{
            f"p99_{label}_1000_series_ms": {
                k: statistics.median(v[label]["ms"]) for k, v in p99.items()
            }
            for label in QUERIES
        },
        "runs": args.runs,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps({**result, "flush_all": flush}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
