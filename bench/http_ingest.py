"""HTTP batch ingest with and without the write-ahead log, beside VictoriaMetrics (not a test).

Starts the real daemon as a subprocess, then for a few seconds several concurrent clients POST
/v1/metrics/batch bodies of `--batch` points (timings with varying values over 100 series), each
client sending its next batch as soon as the previous one is answered. Prints the acknowledged
points per second with `storage.wal: true` and `false` (measured in the same run, so their ratio
is meaningful on a noisy machine), the daemon's CPU per point, and checks through the query API
that every acknowledged point was counted. Then the same points from the same clients go to
VictoriaMetrics single-node (Debian's `victoria-metrics`, which must be on PATH) through its
`/write` endpoint (InfluxDB line protocol, one line a point): the store a user would otherwise
pick, in the same run (`--no-victoria` leaves it out). Its 204 means the points are in its
buffers, not on disk (it has no write-ahead log; a crash loses its last seconds), so our
figure to set beside it is the one without the log as much as the one with it.

    .venv/bin/python bench/http_ingest.py [--seconds 5] [--clients 4] [--batch 1000] [--runs 3]
        [--no-victoria]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp
from daemon_process import start_http_daemon, start_victoria_metrics

KEY = "bench-http-key"
JSON = {"Content-Type": "application/json"}


def start_daemon(state: Path, wal: bool) -> tuple[subprocess.Popen[str], int]:
    storage = f"path: '{state / 'metrics.db'}', wal: {str(wal).lower()}"
    return start_http_daemon(state, KEY, storage)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_batches(n_batches: int, size: int, seed: int) -> list[bytes]:
    """Bodies encoded once, before the clock starts: the clients share the daemon's 2 cores, and
    encoding 1,000 points per request would cost them more CPU than the daemon spends."""
    rng = random.Random(seed)
    return [
        json.dumps(
            {
                "points": [
                    {
                        "name": "bench.http.latency",
                        "type": "timing",
                        "value": round(rng.lognormvariate(3, 0.8), 3),
                        "tags": {"series": str(rng.randrange(100))},
                    }
                    for _ in range(size)
                ]
            }
        ).encode()
        for _ in range(n_batches)
    ]


def influx_batches(batches: list[bytes]) -> list[tuple[int, bytes]]:
    """The same points as InfluxDB line protocol (no timestamp: stored as received, as ours),
    with how many each body holds."""
    out = []
    for body in batches:
        points = json.loads(body)["points"]
        lines = [f"{p['name']},series={p['tags']['series']} value={p['value']!r}" for p in points]
        out.append((len(lines), "\n".join(lines).encode()))
    return out


async def client(
    session: aiohttp.ClientSession, url: str, batches: list[bytes], until: float
) -> int:
    sent = 0
    i = 0
    while time.monotonic() < until:
        body = batches[i % len(batches)]
        i += 1
        async with session.post(url, data=body, headers=JSON) as r:
            answer = await r.json()
            if r.status != 200 or answer["rejected"]:
                raise SystemExit(f"batch refused: {r.status} {answer}")
            sent += answer["accepted"]
    return sent


async def victoria_client(
    session: aiohttp.ClientSession, url: str, batches: list[tuple[int, bytes]], until: float
) -> int:
    sent = 0
    i = 0
    while time.monotonic() < until:
        n, body = batches[i % len(batches)]
        i += 1
        async with session.post(url, data=body) as r:
            await r.read()
            if r.status != 204:
                raise SystemExit(f"victoria-metrics refused a batch: {r.status}")
            sent += n
    return sent


async def drive_victoria(base: str, args: argparse.Namespace) -> int:
    batches = influx_batches(make_batches(20, args.batch, seed=1))
    until = time.monotonic() + args.seconds
    async with aiohttp.ClientSession() as session:
        counts = await asyncio.gather(
            *(
                victoria_client(session, base + "/write", batches, until)
                for _ in range(args.clients)
            )
        )
    return sum(counts)


def victoria_run(args: argparse.Namespace) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="sgw-http-bench-vm-") as tmp:
        proc, base = start_victoria_metrics(Path(tmp))
        try:
            cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
            points = asyncio.run(drive_victoria(base, args))
            elapsed, cpu = time.monotonic() - t0, cpu_seconds(proc.pid) - cpu0
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    return points / elapsed, cpu / points * 1e9


async def drive(port: int, pid: int, args: argparse.Namespace) -> tuple[int, float, float]:
    """(points acknowledged, seconds, daemon CPU seconds) of the load; the count checked after
    the clock stopped."""
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {KEY}"}
    batches = make_batches(20, args.batch, seed=1)
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    until = t0 + args.seconds
    async with aiohttp.ClientSession(headers=headers) as session:
        counts = await asyncio.gather(
            *(
                client(session, base + "/v1/metrics/batch", batches, until)
                for _ in range(args.clients)
            )
        )
        elapsed, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
        params = {"name": "bench.http.latency", "agg": "count", "since": "-1h"}
        async with session.get(base + "/v1/metrics/query", params=params) as r:
            counted = (await r.json())["points"][0]["value"]
    if counted != sum(counts):
        raise SystemExit(f"acknowledged {sum(counts)} points but the query counts {counted}")
    return sum(counts), elapsed, cpu


def one_run(wal: bool, args: argparse.Namespace) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="sgw-http-bench-") as tmp:
        proc, port = start_daemon(Path(tmp), wal)
        try:
            points, elapsed, cpu = asyncio.run(drive(port, proc.pid, args))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    return points / elapsed, cpu / points * 1e9  # points/s, CPU ns per point


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--no-victoria", action="store_true", help="ours only")
    args = p.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"on": [], "off": [], "vm": []}
    for run in range(args.runs):
        for kind in ("on", "off") if args.no_victoria else ("on", "off", "vm"):
            rate, ns = victoria_run(args) if kind == "vm" else one_run(kind == "on", args)
            results[kind].append((rate, ns))
            label = "VictoriaMetrics" if kind == "vm" else f"wal={kind:<3}"
            print(
                f"run {run + 1} {label:<15}: {rate:>10,.0f} points/s  CPU {ns / 1000:6.2f} us/point"
            )
    on = statistics.median(r for r, _ in results["on"])
    off = statistics.median(r for r, _ in results["off"])
    print(
        f"median over {args.runs} runs: wal on {on:,.0f} points/s, wal off {off:,.0f} points/s, "
        f"ratio on/off {on / off:.2f}"
    )
    if results["vm"]:
        vm = statistics.median(r for r, _ in results["vm"])
        print(f"VictoriaMetrics {vm:,.0f} points/s: ours with the log on / it {on / vm:.2f}")
    target = 1_000_000  # the native core's issue: >= 1 M points/s with the log on
    print(f"target >= {target:,} points/s with the log on: {'met' if on >= target else 'NOT met'}")


if __name__ == "__main__":
    main()
