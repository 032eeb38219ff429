"""The two daemons bench/history.py measures, behind one interface: statsd-gateway (the real
daemon, bench/daemon_process.py) and VictoriaMetrics (`victoria-metrics`), each started as a
subprocess, pinned to a core, loaded with the same History through its own write endpoint and
asked the same questions through its own query API."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from daemon_process import start_http_daemon, start_victoria_metrics
from history_data import MINUTE, Answer, Body, History, gateway_bodies, influx_bodies, influx_metric

KEY = "bench-history-key"
TIERS = (10, 60, 3600)
# The finest tier keeps the whole span, so a day back is accepted and stays in 10 s buckets.
STORAGE_TIERS = (
    "tiers: [{resolution: 10s, retention: 2d}, {resolution: 1m, retention: 7d},\n"
    "          {resolution: 1h, retention: 400d}]"
)
# A query straight after a back-fill took ~9 s in the issue: measure it instead of a 503.
QUERY_CONFIG = "query: {timeout: 300s}\n"
# Sealing is done once no bucket was sealed for this long (its task runs every flush, 10 s).
SEAL_QUIET = 25.0


class HistoryTarget(abc.ABC):
    """One daemon under the benchmark. `start` runs it with `prefix` (taskset) before its
    command; `post_all` sends bodies until the shared iterator is empty; every query returns
    (seconds, answer) with the seconds timed on the client around the HTTP exchange and the
    answer keyed by bucket start, so that both daemons' answers compare; `stop` ends it with
    SIGTERM, waits, and returns what it left on disk."""

    label = ""
    write_path = ""
    content_type = ""

    def __init__(self, history: History, workdir: Path, prefix: Sequence[str]) -> None:
        self.history = history
        self.workdir = workdir
        self.prefix = list(prefix)
        self.proc: subprocess.Popen[str] | None = None
        self.base = ""
        self.headers: dict[str, str] = {}

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def bodies(self, batch: int) -> Iterator[Body]: ...

    @abc.abstractmethod
    def acked(self, status: int, answer: bytes, points: int) -> bool: ...

    @abc.abstractmethod
    async def count(self, s: aiohttp.ClientSession) -> tuple[float, float]:
        """The points stored over the whole span."""

    @abc.abstractmethod
    async def minute_sums(self, s: aiohttp.ClientSession, host: str | None) -> tuple[float, Answer]:
        """The sum of every series (or of the one tagged host) per minute over the span."""

    @abc.abstractmethod
    async def quantile(
        self, s: aiohttp.ClientSession, since: int, until: int, window: int | None
    ) -> tuple[float, Answer]:
        """The p99 of every series' points per window of [since, until), or over all of it."""

    @abc.abstractmethod
    def stop(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def settle(self, s: aiohttp.ClientSession) -> dict[str, float]:
        """Returns once what was loaded is in the daemon's store, not only answered from memory,
        with the seconds each phase of that took (`stored`: out of memory)."""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def peak_rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise SystemExit(f"{self.label}: no VmHWM")

    async def post_all(self, s: aiohttp.ClientSession, todo: Iterator[Body]) -> int:
        sent = 0
        for n, body in todo:  # shared by every client: each takes the next batch
            headers = {"Content-Type": self.content_type}
            async with s.post(self.base + self.write_path, data=body, headers=headers) as r:
                answer = await r.read()
                if not self.acked(r.status, answer, n):
                    raise SystemExit(f"{self.label}: batch refused: {r.status} {answer[:300]!r}")
            sent += n
        return sent

    async def get(self, s: aiohttp.ClientSession, path: str, params: dict[str, Any]) -> Any:
        """(seconds, decoded JSON): the seconds from sending the request to the answer's last
        byte, on the client's clock."""
        t = time.perf_counter()
        async with s.get(self.base + path, params=params, headers=self.headers) as r:
            raw = await r.read()
            seconds = time.perf_counter() - t
            if r.status != 200:
                raise SystemExit(f"{self.label}: {path} {params}: {r.status} {raw[:300]!r}")
        return seconds, json.loads(raw)

    def terminate(self) -> None:
        """SIGTERM, then waits for the daemon to exit (ours writes what it holds first)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(600)


class GatewayTarget(HistoryTarget):
    """statsd-gateway: the daemon of this checkout, the SQLite store in the work directory."""

    label = "statsd-gateway"
    write_path = "/v1/metrics/batch"
    content_type = "application/json"

    @property
    def db(self) -> Path:
        return self.workdir / "metrics.db"

    def start(self) -> None:
        storage = f"path: '{self.db}',\n  {STORAGE_TIERS}"
        self.proc, port = start_http_daemon(
            self.workdir, KEY, storage, extra=QUERY_CONFIG, prefix=self.prefix
        )
        self.base = f"http://127.0.0.1:{port}"
        self.headers = {"Authorization": f"Bearer {KEY}"}

    def bodies(self, batch: int) -> Iterator[Body]:
        return gateway_bodies(self.history, batch)

    def acked(self, status: int, answer: bytes, points: int) -> bool:
        return status == 200 and json.loads(answer)["accepted"] == points

    async def _query(self, s: aiohttp.ClientSession, **params: Any) -> tuple[float, Answer]:
        h = self.history
        seconds, answer = await self.get(
            s, "/v1/metrics/query", {"name": h.name, "since": h.start, "until": h.end, **params}
        )
        return seconds, {int(p["timestamp"]): float(p["value"]) for p in answer["points"]}

    async def count(self, s: aiohttp.ClientSession) -> tuple[float, float]:
        seconds, answer = await self._query(s, agg="count")
        return seconds, sum(answer.values())

    async def minute_sums(self, s: aiohttp.ClientSession, host: str | None) -> tuple[float, Answer]:
        tags = {} if host is None else {"tags": f"host:{host}"}
        return await self._query(s, agg="sum", window="1m", **tags)

    async def quantile(
        self, s: aiohttp.ClientSession, since: int, until: int, window: int | None
    ) -> tuple[float, Answer]:
        shape = {} if window is None else {"window": f"{window}s"}
        return await self._query(s, agg="p99", since=since, until=until, **shape)

    async def settle(self, s: aiohttp.ClientSession) -> dict[str, float]:
        """Until no point waits in memory (the tick after the load writes what the pressure
        flushes left; queries read memory's buckets too, and more slowly), then, where the
        store seals buckets into chunks (`sealed_buckets_total` exists), until it has sealed
        none for SEAL_QUIET seconds: the queries after it read what a steady state holds."""
        started = time.monotonic()
        phases: dict[str, float] = {}
        sealed, since = -1.0, started
        while time.monotonic() < started + 900:
            m = await self.metrics(s)
            if "stored" not in phases:
                if m["statsd_gateway_memory_held_bytes"] or m["statsd_gateway_pending_flushes"]:
                    await asyncio.sleep(0.1)
                    continue
                phases["stored"] = time.monotonic() - started
            now = time.monotonic()
            if m.get("statsd_gateway_sealed_buckets_total", sealed) != sealed:
                sealed, since = m["statsd_gateway_sealed_buckets_total"], now
            elif sealed < 0 or now - since >= SEAL_QUIET:
                if sealed >= 0:
                    phases["sealed"] = since - started
                return phases
            await asyncio.sleep(1.0)
        raise SystemExit(f"{self.label}: still writing 900 s after the load: {phases}")

    async def metrics(self, s: aiohttp.ClientSession) -> dict[str, float]:
        """The daemon's own metrics without labels, by name."""
        async with s.get(self.base + "/metrics") as r:
            text = await r.text()
        lines = (line.split(" ", 1) for line in text.splitlines() if line.startswith("statsd_"))
        return {name: float(value) for name, value in lines if "{" not in name}

    def stop(self) -> dict[str, Any]:
        self.terminate()
        return sqlite_disk(self.db, self.history)


def sqlite_disk(path: Path, h: History) -> dict[str, Any]:
    """The file and the -wal the daemon left; then, the -wal checkpointed into the file and
    truncated here, the file again (the figure the issue's target is about) and each tier's
    buckets and bytes (dbstat: all pages of its tables' B-trees and their indexes): the rows of
    `points_<tier>`, and where the store seals them into chunks, the buckets of `chunks_<tier>`."""
    wal = path.with_name(path.name + "-wal")
    left = path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        table_of = dict(conn.execute("SELECT name, tbl_name FROM sqlite_master"))
        pages: dict[str, int] = {}
        for name, size in conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"):
            pages[table_of.get(name, name)] = pages.get(table_of.get(name, name), 0) + size
        tiers = {f"{res}s": tier_usage(conn, res, pages) for res in TIERS}
        (free,) = conn.execute("PRAGMA freelist_count").fetchone()
        (page,) = conn.execute("PRAGMA page_size").fetchone()
    finally:
        conn.close()
    size = path.stat().st_size
    buckets = sum(t["buckets"] for t in tiers.values())
    return {
        "bytes_left_with_wal": left,
        "bytes": size,
        "buckets": buckets,
        "per_stored_row": size / buckets,
        "per_stored_row_with_wal": left / buckets,
        "free_bytes": free * page,  # pages the file holds but no table uses (yet)
        "free_per_stored_row": free * page / buckets,
        "per_10s_bucket": size / h.total,
        "tiers": tiers,
    }


def tier_usage(conn: sqlite3.Connection, res: int, pages: dict[str, int]) -> dict[str, Any]:
    (head,) = conn.execute(f"SELECT count(*) FROM points_{res}s").fetchone()
    sealed, size = 0, pages.get(f"points_{res}s", 0)
    if f"chunks_{res}s" in pages:
        (sealed,) = conn.execute(f"SELECT coalesce(sum(rows), 0) FROM chunks_{res}s").fetchone()
        size += pages[f"chunks_{res}s"]
    buckets = head + sealed
    return {"buckets": buckets, "head_rows": head, "sealed_buckets": sealed, "bytes": size,
            "per_row": size / buckets if buckets else 0.0}  # fmt: skip


class VictoriaTarget(HistoryTarget):
    """VictoriaMetrics single-node, loaded through `/write` (InfluxDB line protocol): one line a
    point, so the same 1,000-point batches from the same clients as ours (`/api/v1/import`'s one
    line per series with many samples would change the load's shape, not only the daemon). Its
    rollup result cache is off (`-search.disableCache`), so that each repeated query reads its
    samples as ours does. A window [b, b + w) of ours is VictoriaMetrics' (t - w, t] at
    t = b + w with `offset 1s`: the same points, the one at b included and b + w left out."""

    label = "VictoriaMetrics"
    write_path = "/write"
    content_type = "text/plain"

    def start(self) -> None:
        self.proc, self.base = start_victoria_metrics(
            self.workdir, prefix=self.prefix, flags=["-search.disableCache"]
        )

    @property
    def data(self) -> Path:
        return self.workdir / "victoria-metrics-data"

    def bodies(self, batch: int) -> Iterator[Body]:
        return influx_bodies(self.history, batch)

    def acked(self, status: int, answer: bytes, points: int) -> bool:
        return status == 204

    def _selector(self, host: str | None) -> str:
        return influx_metric(self.history) + ("" if host is None else f'{{host="{host}"}}')

    async def _instant(self, s: aiohttp.ClientSession, query: str, at: int) -> tuple[float, float]:
        seconds, answer = await self.get(s, "/api/v1/query", {"query": query, "time": at})
        result = answer["data"]["result"]  # empty until the points are searchable
        return seconds, float(result[0]["value"][1]) if result else 0.0

    async def _range(
        self, s: aiohttp.ClientSession, query: str, since: int, until: int, step: int
    ) -> tuple[float, Answer]:
        params = {"query": query, "start": since + step, "end": until, "step": step}
        seconds, answer = await self.get(s, "/api/v1/query_range", params)
        values = [v for series in answer["data"]["result"] for v in series["values"]]
        return seconds, {int(t) - step: float(v) for t, v in values}

    async def count(self, s: aiohttp.ClientSession) -> tuple[float, float]:
        h = self.history
        span = h.end - h.start
        return await self._instant(
            s, f"sum(count_over_time({self._selector(None)}[{span}s] offset 1s))", h.end
        )

    async def minute_sums(self, s: aiohttp.ClientSession, host: str | None) -> tuple[float, Answer]:
        h = self.history
        query = f"sum(sum_over_time({self._selector(host)}[{MINUTE}s] offset 1s))"
        return await self._range(s, query, h.start, h.end, MINUTE)

    async def quantile(
        self, s: aiohttp.ClientSession, since: int, until: int, window: int | None
    ) -> tuple[float, Answer]:
        width = window or until - since
        query = (
            f"histogram_quantile(0.99, sum(histogram_over_time("
            f"{self._selector(None)}[{width}s] offset 1s)) by (vmrange))"
        )
        if window is not None:
            return await self._range(s, query, since, until, window)
        seconds, value = await self._instant(s, query, until)
        return seconds, {since: value}

    async def settle(self, s: aiohttp.ClientSession) -> dict[str, float]:
        """At once: it searches only samples already in its storage's parts (hence its delay
        before a count sees them)."""
        return {"stored": 0.0}

    async def force_flush(self, s: aiohttp.ClientSession) -> None:
        async with s.get(self.base + "/internal/force_flush") as r:
            if r.status != 200:
                raise SystemExit(f"force_flush: {r.status}")

    def stop(self) -> dict[str, Any]:
        """Its samples and index (data/, indexdb/) after force_flush and after its stop; not
        cache/, the caches it saves at stop (deleting them loses no data)."""
        flushed = tree_bytes(self.data, skip="cache")
        self.terminate()
        stopped = tree_bytes(self.data, skip="cache")
        return {
            "bytes_after_force_flush": flushed,
            "bytes": stopped,
            "bytes_with_caches": tree_bytes(self.data),
            "per_sample_after_force_flush": flushed / self.history.total,
            "per_sample": stopped / self.history.total,
        }


def tree_bytes(root: Path, skip: str = "") -> int:
    """Apparent size of every file under root but its folder `skip`, as ours is the SQLite
    file's size."""
    total = 0
    for folder, subfolders, files in os.walk(root):
        if Path(folder) == root and skip in subfolders:
            subfolders.remove(skip)
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # a part merged away as we walked
                total += (Path(folder) / name).stat().st_size
    return total
