"""Scrape benchmark for the statsd_exporter-compatible exporter (issue 12: a scrape of 10,000
series under 200 ms).

What it measures
    A real Gateway with `exporter.enabled` (its HTTP listener and the exporter's on 127.0.0.1)
    receives, over 12 minutes of its injected clock, one flush every 10 s of 10,000 series
    through POST /v1/metrics/batch: `--kind timing` (the costly case: summaries with three
    quantiles from the sketches of the last 10 minutes; 5 values a series a flush) or
    `--kind counter`. Then GET /metrics on the exporter is timed `--runs` times, request to
    last byte (aiohttp client), and the answer checked: every series present, counts exact.

    `--protobuf`: the scrape asks for the protobuf format, as a Prometheus with native
    histograms does (the answer checked by its size only).

How to run (from the repository root; about a minute each)
    .venv/bin/python bench/scrape.py --kind timing
    .venv/bin/python bench/scrape.py --kind counter --runs 11
    .venv/bin/python bench/scrape.py --kind timing --protobuf
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.query import ManualClock
from statsd_gateway.api.auth import hash_key
from statsd_gateway.config import config_from_dict
from statsd_gateway.exporter.protobuf import PROTOBUF
from statsd_gateway.gateway import Gateway, tune_gc

KEY = "bench-key"
T0 = 1_800_000_000.0
SERIES = 10_000
TARGET = 0.200


async def run(kind: str, runs: int, flushes: int, protobuf: bool) -> None:
    tune_gc()
    with tempfile.TemporaryDirectory(prefix="scrape-bench-") as tmp:
        raw = {
            "udp": {"enabled": False},
            "http": {
                "listen": "127.0.0.1:0",
                "max_batch_points": 100_000,
                "max_body_bytes": 64 << 20,
            },
            "storage": {"path": str(Path(tmp) / "metrics.db"), "wal": False},
            "exporter": {"enabled": True, "listen": "127.0.0.1:0"},
            "log": {"level": "warning"},
            "auth": {"keys": [{"name": "bench", "sha256": hash_key(KEY)}]},
        }
        clock = ManualClock(T0)
        gw = Gateway(config_from_dict(raw), clock=clock, flush_on_ticks=False)
        await gw.start()
        assert gw.http_address is not None and gw.exporter_address is not None
        base = "http://{}:{}".format(*gw.http_address)
        scrape_url = "http://{}:{}/metrics".format(*gw.exporter_address)
        per = 5 if kind == "timing" else 1
        try:
            async with aiohttp.ClientSession() as s:
                for f in range(flushes):
                    points = [
                        {"name": "bench.m", "type": kind, "value": 1 + (i * 7 + f * 13 + j) % 400,
                         "tags": {"host": f"h{i:05d}"}}
                        for i in range(SERIES) for j in range(per)
                    ]  # fmt: skip
                    headers = {"Authorization": f"Bearer {KEY}"}
                    url = base + "/v1/metrics/batch"
                    async with s.post(url, json={"points": points}, headers=headers) as r:
                        assert r.status == 200, await r.text()
                    clock.advance(10)
                    await gw.flusher.flush()
                times = []
                accept = {"Accept": PROTOBUF} if protobuf else {}
                for _ in range(runs):
                    began = time.perf_counter()
                    async with s.get(scrape_url, headers=accept) as r:
                        raw = await r.read()
                    times.append(time.perf_counter() - began)
        finally:
            await gw.stop()
    med = statistics.median(times)
    if protobuf:
        print(
            f"{kind}, protobuf: {SERIES:,} series, scrape median {med * 1000:.1f} ms "
            f"({min(times) * 1000:.1f}–{max(times) * 1000:.1f}, {runs} runs), "
            f"{len(raw) / 1e6:.1f} MB"
        )
        return
    body = raw.decode()
    lines = [x for x in body.splitlines() if x.startswith("bench_m")]
    want = SERIES * (5 if kind == "timing" else 1)  # 3 quantiles + _sum + _count a summary
    assert len(lines) == want, (len(lines), want)
    print(
        f"{kind}: {SERIES:,} series, scrape median {med * 1000:.1f} ms "
        f"({min(times) * 1000:.1f}–{max(times) * 1000:.1f}, {runs} runs), "
        f"{len(body) / 1e6:.1f} MB; target {TARGET * 1000:.0f} ms: "
        + ("met" if med <= TARGET else "not met")
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kind", choices=("timing", "counter", "gauge"), default="timing")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--flushes", type=int, default=72)
    parser.add_argument("--protobuf", action="store_true", help="ask for the protobuf format")
    args = parser.parse_args()
    asyncio.run(run(args.kind, args.runs, args.flushes, args.protobuf))


if __name__ == "__main__":
    main()
