"""Back-filling history over HTTP (not a test): throughput and the daemon's peak RSS.

Starts the real daemon as a subprocess (finest tier kept 2 days, so a day of history is
accepted), then posts `--hours` of back-dated timing points, one every 10 s for each of
`--series` series, in batches of `--batch` points (oldest first, as an importer sends them) from
`--clients` concurrent aiohttp clients. Prints the accepted points per second and the daemon's
peak RSS (VmHWM), then checks answers through the query API against the points sent: count, sum,
min and max exactly, p50 within the sketch's 1 % of the true median, whole range and per hour.

    .venv/bin/python bench/backfill.py [--series 1000] [--hours 24] [--runs 1]
        [--backfill-memory BYTES]   (left out: the daemon's default)
"""

from __future__ import annotations

import argparse
import asyncio
import math
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
from daemon_process import start_http_daemon

KEY = "bench-backfill-key"
NAME = "bench.backfill.latency"
STEP = 10


def value_of(k: int, s: int) -> int:
    """The value of series `s` at its k-th point: integers, so every sum is exact."""
    return (k * 31 + s * 17) % 997 + 1


def start_daemon(state: Path, backfill_memory: int | None) -> tuple[subprocess.Popen[str], int]:
    extra = "" if backfill_memory is None else f", backfill_memory: {backfill_memory}"
    storage = (
        f"path: '{state / 'metrics.db'}'{extra},\n"
        "  tiers: [{resolution: 10s, retention: 2d}, {resolution: 1m, retention: 7d},\n"
        "          {resolution: 1h, retention: 400d}]"
    )
    return start_http_daemon(state, KEY, storage)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("no VmHWM")


def bodies(start: int, points: int, series: int, batch: int) -> Iterator[tuple[int, bytes]]:
    """(points in it, JSON body) of each batch, oldest first, built as text (the client must not
    be the bottleneck on a 2-core machine)."""
    parts: list[str] = []
    for k in range(points):
        ts = start + k * STEP
        for s in range(series):
            parts.append(
                f'{{"name":"{NAME}","type":"timing","value":{value_of(k, s)},'
                f'"tags":{{"host":"h{s}"}},"timestamp":{ts}}}'
            )
            if len(parts) == batch:
                yield len(parts), ('{"points":[' + ",".join(parts) + "]}").encode()
                parts = []
    if parts:
        yield len(parts), ('{"points":[' + ",".join(parts) + "]}").encode()


async def post_all(
    session: aiohttp.ClientSession, url: str, todo: Iterator[tuple[int, bytes]]
) -> int:
    sent = 0
    for n, body in todo:  # shared by every client: each takes the next batch
        headers = {"Content-Type": "application/json"}
        async with session.post(url, data=body, headers=headers) as r:
            answer = await r.json()
            if r.status != 200 or answer["accepted"] != n:
                raise SystemExit(f"batch refused: {r.status} {str(answer)[:300]}")
            sent += n
    return sent


async def query(session: aiohttp.ClientSession, base: str, **params: object) -> list[float]:
    async with session.get(base + "/v1/metrics/query", params={"name": NAME, **params}) as r:
        answer = await r.json()
        if r.status != 200:
            raise SystemExit(f"query failed: {answer}")
        return [p["value"] for p in answer["points"]]


def median_ok(got: float, values: list[int]) -> bool:
    v = sorted(values)
    rank = 0.5 * (len(v) - 1)
    lo, hi = v[math.floor(rank)], v[math.ceil(rank)]
    return lo * 0.99 <= got <= hi * 1.01


async def verify(
    session: aiohttp.ClientSession, base: str, start: int, args: argparse.Namespace
) -> None:
    n = args.hours * 3600 // STEP
    end = start + n * STEP
    for s in sorted({0, args.series // 2, args.series - 1}):
        vals = [value_of(k, s) for k in range(n)]
        rng = {"since": start, "until": end, "tags": f"host:h{s}"}
        want = {"count": len(vals), "sum": sum(vals), "min": min(vals), "max": max(vals)}
        for agg, expected in want.items():
            got = await query(session, base, agg=agg, **rng)
            if got != [expected]:
                raise SystemExit(f"series h{s}: {agg} is {got}, sent {expected}")
        (p50,) = await query(session, base, agg="p50", **rng)
        if not median_ok(p50, vals):
            raise SystemExit(f"series h{s}: p50 {p50} is off the true median")
        per_hour = 3600 // STEP
        sums = await query(session, base, agg="sum", window="1h", **rng)
        want_sums = [sum(vals[i : i + per_hour]) for i in range(0, n, per_hour)]
        if sums != want_sums:
            raise SystemExit(f"series h{s}: hourly sums differ from those sent")
    total = await query(session, base, agg="count", since=start, until=end)
    if total != [n * args.series]:
        raise SystemExit(f"total count {total}, sent {n * args.series}")


async def drive(port: int, args: argparse.Namespace) -> tuple[int, float]:
    base = f"http://127.0.0.1:{port}"
    # Whole hours, ending an hour ago: every bucket is history.
    start = (int(time.time()) // 3600 - 1 - args.hours) * 3600
    todo = bodies(start, args.hours * 3600 // STEP, args.series, args.batch)
    headers = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        t0 = time.monotonic()
        counts = await asyncio.gather(
            *(post_all(session, base + "/v1/metrics/batch", todo) for _ in range(args.clients))
        )
        elapsed = time.monotonic() - t0
        await verify(session, base, start, args)
    return sum(counts), elapsed


def one_run(args: argparse.Namespace) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="sgw-backfill-bench-") as tmp:
        proc, port = start_daemon(Path(tmp), args.backfill_memory)
        try:
            points, elapsed = asyncio.run(drive(port, args))
            rss = peak_rss_mb(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(300)
    return points / elapsed, rss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--series", type=int, default=1000)
    p.add_argument("--hours", type=int, default=24)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--backfill-memory", type=int, default=None)
    args = p.parse_args()
    rates, peaks = [], []
    for run in range(args.runs):
        rate, rss = one_run(args)
        rates.append(rate)
        peaks.append(rss)
        print(
            f"run {run + 1}: {rate:>10,.0f} points/s, daemon peak RSS {rss:,.0f} MB (answers exact)"
        )
    print(
        f"median over {args.runs} runs: {statistics.median(rates):,.0f} points/s, "
        f"peak RSS {statistics.median(peaks):,.0f} MB"
    )


if __name__ == "__main__":
    main()
