"""PromQL benchmark for statsd-gateway (issue 12's figures): the Prometheus HTTP API of a real
Gateway over HTTP, on a store holding 1,000 counter and 1,000 timer series.

What it measures
    A store is written through its own write paths (write_rollups for the 1 h and 1 m tiers,
    write_flush for 10 s, then sealed into chunks as the daemon's sealing task does):
      - `bench.hits`, counters, 1,000 series `host=h0000…h0999`: 1 h tier 2 days, 1 m tier
        25 h, 10 s tier 1 h; an integer increment per bucket;
      - `bench.lat`, timings, the same hosts: 1 h tier 2 days, 1 m tier 2 h, 10 s tier 1 h;
        each 10 s bucket holds 10 lognormal values (median 20 ms), so a 1 m row 60.
    Then a Gateway (the composition root, default tiers, its HTTP listener on 127.0.0.1) opens
    the file, and each query runs `--runs` times over HTTP (aiohttp client, Bearer key),
    timed from request to parsed JSON:
      - `histogram_quantile(0.99, sum by (host) (rate(bench_lat[5m])))` over the last hour at a
        60 s step (61 steps × 1,000 series): target < 300 ms;
      - `sum(rate(bench_hits[1m]))` over 24 h at a 60 s step (1,441 steps): target < 200 ms.
    The answers are checked: the day's rates against the /v1 API's per-minute sums (exact), the
    quantiles against each host's merged sketch of the window (/v1 p99 over the same 5 min).

How to run (from the repository root; about two minutes)
    .venv/bin/python bench/promql.py
    .venv/bin/python bench/promql.py --runs 11 --json /tmp/promql.json
    .venv/bin/python bench/promql.py --store /tmp/promql.db   # write once, query again later
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.query import RESOLUTIONS, ManualClock, make_pool, write_tier
from statsd_gateway.api.auth import hash_key
from statsd_gateway.config import config_from_dict
from statsd_gateway.gateway import Gateway, tune_gc
from statsd_gateway.model import BucketRow, MetricType, RowBatch, SeriesKey
from statsd_gateway.store import SqliteStore
from statsd_gateway.store.base import FlushWrite

KEY = "bench-key"
NOW = 1_800_000_000 - 1_800_000_000 % 3600 + 1800.0  # mid-hour
HOURS = 3600.0
TARGETS = {"histogram_quantile_1h": 0.300, "sum_rate_24h": 0.200}


async def write_store(path: Path) -> None:
    hosts = [f"h{i:04d}" for i in range(1000)]
    hits: list[SeriesKey] = [("default", "bench.hits", (("host", h),)) for h in hosts]
    lat: list[SeriesKey] = [("default", "bench.lat", (("host", h),)) for h in hosts]
    store = SqliteStore(path, resolutions=RESOLUTIONS, clock=ManualClock(NOW))
    await store.open()
    rng = np.random.default_rng(12)
    try:
        ends = {r: math.floor(NOW / r) * r for r in RESOLUTIONS}
        spans = {
            3600.0: (48 * HOURS, 48 * HOURS),
            60.0: (25 * HOURS, 2 * HOURS),
            10.0: (HOURS, HOURS),
        }
        for res in sorted(RESOLUTIONS, reverse=True):
            hits_span, lat_span = spans[res]
            times = [ends[res] - (k + 1) * res for k in range(int(hits_span // res))][::-1]
            batch: list[BucketRow] = []
            for ts in times:
                n = int(res // 10)
                batch.extend(
                    BucketRow(ts, k, MetricType.COUNTER, n, float(n * (1 + i % 5)), None, None)
                    for i, k in enumerate(hits)
                )
                if len(batch) >= 50_000:
                    await _put(store, res, batch, ts + res)
                    batch = []
            if batch:
                await _put(store, res, batch, times[-1] + res)
            pool = make_pool(rng, 10 * int(res // 10), 256)
            timeline = [(ends[res] - (k + 1) * res, lat) for k in range(int(lat_span // res))][::-1]
            rows, _ = await write_tier(store, res, timeline, pool)
            print(f"  {res:g} s tier: {len(times) * 1000:,} counter rows, {rows:,} timer rows")
        began = time.perf_counter()
        sealed = await store.seal_chunks()
        print(f"  sealed {sealed:,} buckets in {time.perf_counter() - began:.1f} s")
    finally:
        await store.close()


async def _put(store: SqliteStore, res: float, rows: list[BucketRow], end: float) -> None:
    batch = RowBatch.from_rows(rows)
    if res == RESOLUTIONS[0]:
        await store.write_flush(FlushWrite(None, batch))
    else:
        await store.write_rollups({res: batch}, {res: end})


async def timed(
    session: aiohttp.ClientSession, url: str, params: dict[str, Any]
) -> tuple[float, Any]:
    began = time.perf_counter()
    async with session.get(url, params=params, headers={"Authorization": f"Bearer {KEY}"}) as r:
        body = await r.json()
        assert r.status == 200, body
    return time.perf_counter() - began, body


async def measure(path: Path, runs: int) -> dict[str, Any]:
    raw = {
        "udp": {"enabled": False},
        "http": {"listen": "127.0.0.1:0"},
        "storage": {"path": str(path)},
        "query": {"timeout": "60s"},
        "log": {"level": "warning"},
        "auth": {"keys": [{"name": "bench", "sha256": hash_key(KEY)}]},
    }
    gw = Gateway(config_from_dict(raw), clock=ManualClock(NOW), flush_on_ticks=False)
    await gw.start()
    assert gw.http_address is not None
    base = "http://{}:{}".format(*gw.http_address)
    end = math.floor(NOW / 60) * 60
    queries = {
        "histogram_quantile_1h": {
            "query": "histogram_quantile(0.99, sum by (host) (rate(bench_lat[5m])))",
            "start": end - HOURS, "end": end, "step": "60",
        },
        "sum_rate_24h": {
            "query": "sum(rate(bench_hits[1m]))",
            "start": end - 24 * HOURS, "end": end, "step": "60",
        },
    }  # fmt: skip
    out: dict[str, Any] = {}
    try:
        async with aiohttp.ClientSession() as session:
            answers = {}
            for name, params in queries.items():
                times = []
                for _ in range(runs):
                    seconds, body = await timed(session, base + "/api/v1/query_range", params)
                    times.append(seconds)
                answers[name] = body["data"]["result"]
                out[name] = {
                    "median_s": statistics.median(times),
                    "min_s": min(times),
                    "max_s": max(times),
                    "runs": runs,
                }
                med, least, most = (
                    1000 * x for x in (statistics.median(times), min(times), max(times))
                )
                print(
                    f"  {name}: median {med:.1f} ms ({least:.1f}–{most:.1f}), "
                    f"target {TARGETS[name] * 1000:.0f} ms"
                )
            out["checks"] = await check(session, base, answers, end)
    finally:
        await gw.stop()
    return out


async def check(
    session: aiohttp.ClientSession, base: str, answers: dict[str, Any], end: float
) -> dict[str, Any]:
    """The day's rates against /v1's per-minute sums; a few hosts' quantiles against /v1's p99."""
    [day] = answers["sum_rate_24h"]
    _, v1 = await timed(session, base + "/v1/metrics/query", {
        "name": "bench.hits", "agg": "sum", "window": "1m",
        "since": int(end - 24 * HOURS - 60), "until": int(end),
    })  # fmt: skip
    per_minute = {p["timestamp"]: p["value"] for p in v1["points"]}
    mismatched = sum(
        1
        for t, v in day["values"]
        if not math.isclose(float(v), per_minute[t - 60] / 60, rel_tol=1e-12)
    )
    quantile_diffs = []
    by_host = {s["metric"]["host"]: s["values"] for s in answers["histogram_quantile_1h"]}
    for host in ("h0000", "h0123", "h0999"):
        for t, v in by_host[host][::15]:
            _, one = await timed(session, base + "/v1/metrics/query", {
                "name": "bench.lat", "agg": "p99", "tags": f"host:{host}",
                "since": int(t - 300), "until": int(t),
            })  # fmt: skip
            want = one["points"][0]["value"]
            quantile_diffs.append(abs(float(v) - want) / want)
    result = {
        "rate_steps": len(day["values"]),
        "rate_mismatches": mismatched,
        "quantile_max_rel_diff": max(quantile_diffs),
    }
    print(f"  checks: {result}")
    return result


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    tune_gc()
    if args.store is not None and args.store.exists():
        print(f"querying the store written before at {args.store}…")
        return await measure(args.store, args.runs)
    with tempfile.TemporaryDirectory(prefix="promql-bench-") as tmp:
        path = args.store or Path(tmp) / "metrics.db"
        print("writing the store…")
        await write_store(path)
        print("querying…")
        return await measure(path, args.runs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--store", type=Path, help="keep the store written here, and query it if it exists"
    )
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
