"""History and queries beside VictoriaMetrics (not a test): the figures of issue 17, item 5.

In one run, on the same data, statsd-gateway (the real daemon, its SQLite store) and
VictoriaMetrics (`victoria-metrics`), each in turn pinned to CPU 0 (`taskset -c 0`) while this
process (load generator and queries) runs on CPU 1:

  1. load `--series` series × `--hours` of back-dated points, one per series per 10 s, oldest
     first, in `--batch`-point bodies from `--clients` aiohttp clients (ours: POST
     /v1/metrics/batch; VictoriaMetrics: /write, InfluxDB line protocol); points/s from the
     first send to the last ack and until a count over the span sees every point; peak RSS
     (VmHWM) after the load;
  2. straight after: the time until the first sum over the span answers, and that query's
     latency; then (ours) the time until no point waits in memory any more, its store holding
     them all (queries read memory's buckets too, more slowly), and on a chunk store until
     sealing has gone quiet: the figures below are after it;
  3. after a warm-up, `--runs` runs each (median): the sum of every series at 1 m steps over
     the span; one series at 1 m steps; the p99 across every series over the last hour (one
     value, and at 5 m steps) — ours from its sketches, VictoriaMetrics' closest,
     histogram_quantile over histogram_over_time (its log-spaced vmrange buckets);
  4. bytes on disk once stopped (ours: the SQLite file, -wal checkpointed, per stored bucket
     row and per 10 s bucket, each tier's rows from dbstat; VictoriaMetrics: -storageDataPath
     after /internal/force_flush and after its stop, per sample).
Every answer is checked against the points sent; the table gives ours, VictoriaMetrics', the
issue's target and whether ours meets it.

    .venv/bin/python bench/history.py [--series 1000] [--hours 24] [--kind timer|counter]
        [--clients 4] [--runs 5] [--json FILE] [--only gateway|victoria] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from history_data import Answer, History
from history_targets import GatewayTarget, HistoryTarget, VictoriaTarget

MIB = 1024 * 1024
TARGETS = {  # issue 17, item 5
    "load_rate": 500_000.0,  # points/s, at least
    "peak_rss": 500e6,  # bytes, under
    "sum_all": 0.150,  # seconds, at most
    "sum_one": 0.002,
    "p99_hour": 0.060,
    "disk_timer": 40.0,  # bytes per stored bucket, at most
    "disk_counter": 12.0,
}
Query = Callable[[aiohttp.ClientSession], Awaitable[tuple[float, Answer]]]


def queries(t: HistoryTarget, h: History) -> dict[str, tuple[Query, Answer]]:
    """Each repeated query, with the answer the points sent give."""
    mid = h.series // 2
    out: dict[str, tuple[Query, Answer]] = {
        "sum_all": (lambda s: t.minute_sums(s, None), h.minute_sums(None)),
        "sum_one": (lambda s: t.minute_sums(s, h.host(mid)), h.minute_sums(mid)),
    }
    if h.kind == "timer":  # a counter has no quantiles
        hour = h.end - 3600
        out["p99_hour"] = (
            lambda s: t.quantile(s, hour, h.end, None),
            h.quantile(0.99, hour, h.end, None),
        )
        out["p99_hour_5m"] = (
            lambda s: t.quantile(s, hour, h.end, 300),
            h.quantile(0.99, hour, h.end, 300),
        )
    return out


def compare(got: Answer, want: Answer) -> dict[str, Any]:
    """Whether an answer has every bucket sent and their values, and its largest relative error."""
    worst = max((abs(got.get(b, 0.0) - w) / abs(w) for b, w in want.items()), default=0.0)
    return {"buckets": len(got), "exact": got == want, "max_rel_err": worst}


def generation_rate(t: HistoryTarget, batch: int) -> float:
    """Points/s this process builds the target's bodies at, sending none."""
    started = time.perf_counter()
    n = sum(points for points, _ in t.bodies(batch))
    return n / (time.perf_counter() - started)


async def load(
    t: HistoryTarget, s: aiohttp.ClientSession, args: argparse.Namespace
) -> dict[str, Any]:
    """Figures 1 and 6: the load, the wait until it counts whole, the first 24 h sum after it."""
    h = t.history
    todo = t.bodies(args.batch)
    started, client = time.perf_counter(), time.process_time()
    sent = sum(await asyncio.gather(*(t.post_all(s, todo) for _ in range(args.clients))))
    acked, client = time.perf_counter(), time.process_time() - client
    peak_at_ack = t.peak_rss_bytes()  # the load's own peak, before any query reads memory
    polls, counted = 0, 0.0
    while counted != h.total:
        _, counted = await t.count(s)
        polls += 1
        if counted > h.total or time.perf_counter() - acked > 900:
            raise SystemExit(f"{t.label}: counts {counted:,.0f} of {h.total:,} points")
        if counted != h.total:
            await asyncio.sleep(0.05)
    queryable = time.perf_counter()
    first_seconds, first = await t.minute_sums(s, None)
    answered = time.perf_counter()
    phases = await t.settle(s)
    return {
        "points": sent,
        "seconds_to_ack": acked - started,
        "rate_to_ack": sent / (acked - started),
        "client_busy": client / (acked - started),  # of its core: near 1 and it is the limit
        "seconds_to_queryable": queryable - started,
        "rate_to_queryable": sent / (queryable - started),
        "count_polls": polls,
        "first_sum_after_load_s": answered - acked,
        "first_sum_latency_s": first_seconds,
        "first_sum_check": compare(first, h.minute_sums(None)),
        **{f"{phase}_after_load_s": answered - acked + sec for phase, sec in phases.items()},
        "peak_rss_ack": peak_at_ack,
        "peak_rss_load": t.peak_rss_bytes(),
    }


async def measure(t: HistoryTarget, args: argparse.Namespace) -> dict[str, Any]:
    """Every figure of one daemon: start, load, queries, stop, disk."""
    h = t.history
    out: dict[str, Any] = {"client_generation_rate": generation_rate(t, args.batch)}
    t.start()
    print(f"{t.label}: pid {t.pid}, {' '.join(t.prefix) or 'not pinned'}", flush=True)
    try:
        timeout = aiohttp.ClientTimeout(total=None)
        async with aiohttp.ClientSession(headers=t.headers, timeout=timeout) as s:
            out["load"] = await load(t, s, args)
            print(
                f"  loaded {h.total:,} points at {out['load']['rate_to_ack']:,.0f} points/s",
                flush=True,
            )
            out["queries"] = {}
            for name, (ask, want) in queries(t, h).items():
                await ask(s)  # warm-up
                runs = [await ask(s) for _ in range(args.runs)]
                times = [seconds for seconds, _ in runs]
                out["queries"][name] = {
                    "median_s": statistics.median(times),
                    "runs_s": times,
                    "check": compare(runs[-1][1], want),
                    "answer": {str(b): v for b, v in runs[-1][1].items()},
                }
            out["peak_rss"] = t.peak_rss_bytes()
            if isinstance(t, VictoriaTarget):
                await t.force_flush(s)
    except BaseException:
        t.terminate()
        raise
    out["disk"] = t.stop()
    return out


def relative_differences(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float]:
    """Per query, the largest relative difference between the two daemons' answers."""
    out = {}
    for name, q in ours["queries"].items():
        a, b = q["answer"], theirs["queries"][name]["answer"]
        out[name] = max((abs(a[k] - b.get(k, 0.0)) / abs(a[k]) for k in a), default=0.0)
    return out


def figures(r: dict[str, Any]) -> dict[str, float]:
    """One daemon's figures of the table, in its units."""
    d, q = r["disk"], r["queries"]
    out = {
        "rate_to_ack": r["load"]["rate_to_ack"],
        "rate_to_queryable": r["load"]["rate_to_queryable"],
        "rss_mib": r["load"]["peak_rss_load"] / MIB,
        **({"rss_ack_mib": r["load"]["peak_rss_ack"] / MIB} if "peak_rss_ack" in r["load"] else {}),
        **{name: q[name]["median_s"] * 1000 for name in q},
        # VictoriaMetrics stores samples, not buckets: its bytes per sample stand for both.
        "disk_row": d.get("per_stored_row", d.get("per_sample", 0.0)),
        "disk_bucket": d.get("per_10s_bucket", d.get("per_sample", 0.0)),
        **({"disk_free": d["free_per_stored_row"]} if "free_per_stored_row" in d else {}),
        "first_after_s": r["load"]["first_sum_after_load_s"],
        "first_latency_ms": r["load"]["first_sum_latency_s"] * 1000,
        **{
            k: v
            for k, v in (
                ("stored_s", r["load"]["stored_after_load_s"]),
                ("sealed_s", r["load"].get("sealed_after_load_s")),
            )
            if v is not None
        },
    }
    for tier, t in d.get("tiers", {}).items():
        out[f"tier_{tier}"] = t["per_row"]
    return out


Spec = tuple[str, str, str, str, float | None]  # key, label, format, target, at most (or -least)


def table_spec(kind: str, tiers: dict[str, Any]) -> list[Spec]:
    """The table's rows; a negative bound is a floor (the figure must be at least its size)."""
    disk = TARGETS[f"disk_{kind}"]
    rows: list[Spec] = [
        ("rate_to_ack", "load, first send to last ack (points/s)", "{:,.0f}", "≥ 500,000",
         -TARGETS["load_rate"]),
        ("rate_to_queryable", "load, until a count sees every point (points/s)", "{:,.0f}",
         "≥ 500,000", -TARGETS["load_rate"]),
        ("rss_mib", "peak RSS after the load (VmHWM, MiB)", "{:,.0f}", "< 500 MB",
         TARGETS["peak_rss"] / MIB),
        ("rss_ack_mib", "  … of the load alone, at its last ack (MiB)", "{:,.0f}", "—", None),
        ("sum_all", "sum of all series, span at 1 m steps (ms)", "{:,.1f}", "≤ 150 ms", 150.0),
        ("sum_one", "one series, span at 1 m steps (ms)", "{:,.2f}", "≤ 2 ms", 2.0),
        ("p99_hour", "p99 across all series, last hour, one value (ms)", "{:,.1f}", "≤ 60 ms",
         60.0),
        ("p99_hour_5m", "p99 across all series, last hour at 5 m (ms)", "{:,.1f}", "≤ 60 ms",
         60.0),
        ("disk_row", "disk per stored bucket row, all tiers / per sample (B)", "{:.1f}",
         f"≤ {disk:g} B", disk),
        ("disk_free", "  … of which the file's free pages (B a stored row)", "{:.1f}", "—", None),
        ("disk_bucket", "disk per 10 s bucket sent / per sample (B)", "{:.1f}", "—", None),
    ]  # fmt: skip
    rows += [(f"tier_{t}", f"  … {t} tier: {v['buckets']:,} buckets, B each (dbstat)", "{:.1f}",
              "—", None) for t, v in tiers.items()]  # fmt: skip
    rows += [
        ("first_after_s", "straight after the load: until the first span sum (s)", "{:.2f}", "—",
         None),
        ("first_latency_ms", "  … that first span sum's latency (ms)", "{:,.1f}", "—", None),
        ("stored_s", "  … until no point waits in memory (s)", "{:.2f}", "—", None),
        ("sealed_s", "  … until the last bucket sealed into a chunk (s)", "{:.2f}", "—", None),
    ]  # fmt: skip
    return rows


def table_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(figure, ours, VictoriaMetrics', target, met?) for every figure measured."""
    ours, theirs = (figures(report[k]) if k in report else {} for k in ("gateway", "victoria"))
    tiers = report["gateway"]["disk"]["tiers"] if "gateway" in report else {}
    out = []
    for key, label, fmt, target, bound in table_spec(report["args"]["kind"], tiers):
        if key not in ours and key not in theirs:
            continue
        met = ""
        if bound is not None and key in ours:
            ok = ours[key] >= -bound if bound < 0 else ours[key] <= bound
            met = "met" if ok else "NOT met"
        cells = [fmt.format(f[key]) if key in f else "—" for f in (ours, theirs)]
        out.append((label, cells[0], cells[1], target, met))
    return out


def print_report(report: dict[str, Any]) -> None:
    print(f"\n{'figure':<57} {'ours':>10} {'VM':>10} {'target':>10}  met?")
    for label, ours, theirs, target, met in table_rows(report):
        print(f"{label:<57} {ours:>10} {theirs:>10} {target:>10}  {met}")
    for key in ("gateway", "victoria"):
        if key in report:
            r = report[key]
            checks = {n: q["check"] for n, q in r["queries"].items()}
            checks["first_sum"] = r["load"]["first_sum_check"]
            rate, busy = r["client_generation_rate"], r["load"]["client_busy"]
            print(f"\n{key}: the client builds its bodies at {rate:,.0f} points/s; during the "
                  f"load it was busy {busy:.0%} of its core")  # fmt: skip
            for name, c in checks.items():
                print(
                    f"  {name:<12} {'exact' if c['exact'] else 'not exact'}, "
                    f"max relative error against the points sent {c['max_rel_err']:.2e}"
                )
    if "differences" in report:
        diffs = ", ".join(f"{n} {d:.2e}" for n, d in report["differences"].items())
        print(f"\nmax relative difference, ours against VictoriaMetrics: {diffs}")


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
        check=False,
    ).stdout.strip()
    vm = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "victoria-metrics"],
                        capture_output=True, text=True, check=False).stdout  # fmt: skip
    return {"nproc": os.cpu_count(), "cpu": cpu, "commit": commit, "victoria_metrics": vm,
            "load_avg": os.getloadavg()}  # fmt: skip


def pinning() -> list[str]:
    """The daemons go to CPU 0 and this process to CPU 1, where the machine has both."""
    if (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        return []
    os.sched_setaffinity(0, {1})
    return ["taskset", "-c", "0"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--series", type=int, default=1000)
    p.add_argument("--hours", type=int, default=24)
    p.add_argument("--kind", choices=("timer", "counter"), default="timer")
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--only", choices=("gateway", "victoria"), help="measure one daemon alone")
    p.add_argument("--quick", action="store_true", help="100 series, 2 h, 3 runs")
    p.add_argument("--json", type=Path, help="also write every figure as JSON")
    args = p.parse_args()
    if args.quick:
        args.series, args.hours, args.runs = 100, 2, 3
    prefix = pinning()
    history = History.ending_an_hour_ago(time.time(), args.series, args.hours, args.kind)
    report: dict[str, Any] = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": machine(),
        "pinned": bool(prefix),
    }
    print(
        f"{history.total:,} points: {args.series:,} {args.kind} series × {args.hours} h, "
        f"{history.start}..{history.end}"
    )
    with tempfile.TemporaryDirectory(prefix="sgw-bench-history-") as tmp:
        for key, kind in (("gateway", GatewayTarget), ("victoria", VictoriaTarget)):
            if args.only in (None, key):
                workdir = Path(tmp) / key
                workdir.mkdir()
                report[key] = asyncio.run(measure(kind(history, workdir, prefix), args))
    if "gateway" in report and "victoria" in report:
        report["differences"] = relative_differences(report["gateway"], report["victoria"])
    report["machine"]["load_avg_end"] = os.getloadavg()
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
