"""Many gateways on one PostgreSQL (issue 13's third figure): do three gateways of 10,000 timer
series each keep up for ten minutes, and what does one server on this machine sustain?

What it measures
    `--gateways` processes (default 3), each a PostgresStore of its own source on one database,
    each writes ten minutes of its flushes as the flusher does: every 10 s bucket of its 10,000
    timer series (20 values in each sketch), each minute's rollups once complete, at the end
    the sealing of complete windows. The clock is the data's: the flushes follow one another as
    fast as the server takes them, so the run measures capacity, not a sleep. A gateway keeps
    up when every flush is written within its 10 s interval; the run reports each gateway's
    slowest and median flush, the wall time of its ten minutes (< 600 s: it keeps up), and the
    rows per second the server took from all of them together, and the CPU seconds the server
    spent on them (its processes' user + system time, from /proc: rows per server CPU-second
    is the figure that scales to more gateways, since the gateways share its 2 cores here).
    `--paced`: each gateway flushes on the wall clock instead, one bucket every 10 s for the
    whole `--minutes`, as a running daemon does; a flush keeps up when it is written before
    the next is due (the run reports each flush's lag behind its due time).
    PostgreSQL is a throwaway server this script starts (fsync on; tests/postgres.py), or
    `--dsn` for one of yours (an empty database).

How to run (from the repository root; about a minute per gateway on 2 cores)
    .venv/bin/python bench/pg_gateways.py
    .venv/bin/python bench/pg_gateways.py --gateways 3 --series 10000 --minutes 10
    .venv/bin/python bench/pg_gateways.py --paced          # ten minutes of wall time
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.pg_store import T0, postgres, timer_rows
from statsd_gateway.model import RowBatch
from statsd_gateway.store.base import FlushWrite
from statsd_gateway.store.postgresql import PostgresStore
from statsd_gateway.store.rollup import merge_rows


async def one_gateway(
    dsn: str, index: int, series: int, minutes: int, paced: bool
) -> dict[str, Any]:
    """Ten minutes of one gateway's flushes, back to back, or one every 10 s (`paced`)."""
    clock = [T0]
    store = PostgresStore(dsn, source=f"gw-{index}", clock=lambda: clock[0])
    await store.open()
    rng = np.random.default_rng(index)
    # The buckets are made before the clock starts: the run times the store, not numpy.
    buckets = [timer_rows(series, T0, rng, 20) for _ in range(6)]
    times: list[float] = []
    lags: list[float] = []
    rows = 0
    began = time.perf_counter()
    try:
        minute: list[RowBatch] = []
        for b in range(minutes * 6):
            ts = T0 + 10 * b
            clock[0] = ts + 10
            batch = buckets[b % 6]
            batch = replace(batch, ts=np.full(len(batch), ts))
            minute.append(batch)
            rollups, until = {}, {}
            if (b + 1) % 6 == 0:
                rollups = {60.0: merge_rows(RowBatch.concat(minute), 60.0)}
                until = {60.0: ts + 10}
                minute = []
            due = began + 10 * b
            if paced and time.perf_counter() < due:
                await asyncio.sleep(due - time.perf_counter())
            t = time.perf_counter()
            await store.write_flush(FlushWrite(b + 1, batch, rollups=rollups, complete_until=until))
            times.append(time.perf_counter() - t)
            lags.append(time.perf_counter() - due)
            rows += len(batch) + sum(len(r) for r in rollups.values())
        sealed_at = time.perf_counter()
        sealed = await store.seal_chunks()
        seal_s = time.perf_counter() - sealed_at
    finally:
        await store.close()
    return {
        "gateway": index,
        "wall_s": time.perf_counter() - began,
        "flush_median_ms": statistics.median(times) * 1000,
        "flush_max_ms": max(times) * 1000,
        # Paced: how long after its due time each flush was written (< 10 s: kept up).
        "lag_max_s": max(lags) if paced else None,
        "rows": rows,
        "sealed_buckets": sealed,
        "seal_s": seal_s,
    }


def run_gateway(args: tuple[str, int, int, int, bool]) -> dict[str, Any]:
    return asyncio.run(one_gateway(*args))


def server_cpu_s(cluster: Any) -> float | None:
    """User + system seconds of the server's processes so far: the postmaster's own and its
    reaped children's (backends that exited), and the children still running."""
    if cluster is None:
        return None
    pid = int((cluster.data / "postmaster.pid").read_text().split()[0])
    tick = os.sysconf("SC_CLK_TCK")

    def fields(p: int) -> list[str]:
        stat = Path(f"/proc/{p}/stat").read_text()
        return stat[stat.rindex(")") + 2 :].split()  # after the command's name

    own = fields(pid)
    total = sum(int(x) for x in own[11:15])  # utime, stime, cutime, cstime
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != pid:
            try:
                f = fields(int(entry.name))
            except OSError:
                continue  # gone meanwhile
            if int(f[1]) == pid:  # the parent's pid
                total += int(f[11]) + int(f[12])
    return total / tick


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gateways", type=int, default=3)
    ap.add_argument("--series", type=int, default=10_000)
    ap.add_argument("--minutes", type=int, default=10)
    ap.add_argument("--paced", action="store_true", help="flush every 10 s of wall time")
    ap.add_argument("--dsn", help="an empty PostgreSQL database (default: a throwaway server)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with postgres(args.dsn) as cluster:
        dsn = args.dsn or cluster.fresh_database()  # type: ignore[union-attr]
        # The schema first, so that the gateways' opens do not all wait on its migration.
        asyncio.run(_prepare(dsn))
        cpu_before = server_cpu_s(cluster)
        began = time.perf_counter()
        jobs = [(dsn, i, args.series, args.minutes, args.paced) for i in range(args.gateways)]
        with multiprocessing.get_context("spawn").Pool(args.gateways) as pool:
            results = pool.map(run_gateway, jobs)
        wall = time.perf_counter() - began
        cpu_after = server_cpu_s(cluster)
    rows = sum(r["rows"] for r in results)
    server_cpu = None if cpu_before is None else cpu_after - cpu_before  # type: ignore[operator]
    out = {
        "gateways": results,
        # While they all ran: the rows of every gateway over the slowest gateway's time.
        "all_rows_per_s": rows / max(r["wall_s"] for r in results),
        "wall_s": wall,
        "server_cpu_s": server_cpu,
        "rows_per_server_cpu_s": rows / server_cpu if server_cpu else None,
        "keeps_up": all(r["flush_max_ms"] < 10_000 for r in results)
        and all(r["wall_s"] < args.minutes * 60 + 10 for r in results)
        and all((r["lag_max_s"] or 0) < 10 for r in results),
        "paced": args.paced,
        "series_per_gateway": args.series,
        "minutes": args.minutes,
    }
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


async def _prepare(dsn: str) -> None:
    store = PostgresStore(dsn, source="bench-setup", clock=lambda: T0)
    await store.open()
    await store.close()


if __name__ == "__main__":
    main()
