"""In-process figures of the native ingest core beside the pure-Python path, in one run.

What it measures
    parse     CPU ns per line to parse and aggregate packed datagrams (~1400 bytes, as the peer
              harness sends) fed to one core on this thread, per mode: `counter` (100 keys,
              identical lines), `timeru` (1,000 keys, values that never repeat), `tagged`
              (DogStatsD tags), `counteru` (values 1-9 over 10,000 keys); the pure-Python
              parser + aggregator on the same datagrams (a tenth of them) for the ratio.
              No socket: the reader thread's recvmmsg and wake-ups are not in it (the peer
              harness, bench/peers.py, measures the whole daemon).
    memory    bytes of resident memory per buffered timer value: 20 M values over 1,000 series
              held in the native table, at the swap's peak (VmHWM, reset just before it) and
              after it (array('d') per series).
    flush     seconds to finish a snapshot of 10,000 timer series x 100 values into rows
              (`snapshot_rows`: sketch binning included), native path against pure Python.

How to run (from the repository root, the extension built by `pip install -e .`)
    .venv/bin/python bench/native_core.py [--runs 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from typing import Any

from statsd_gateway import native
from statsd_gateway.aggregator import IntervalAggregator
from statsd_gateway.ingest import Ingest
from statsd_gateway.protocol import StatsdParser
from statsd_gateway.series_registry import SeriesRegistry
from statsd_gateway.telemetry import Telemetry

MODES = {"counter": 100, "timeru": 1000, "tagged": 100, "counteru": 10_000}


def line(mode: str, i: int, keys: int) -> bytes:
    k = i % keys
    if mode == "timeru":
        return b"bench.t%d:%.3f|ms" % (k, ((i * 2654435761) % 10**6) / 1000)
    if mode == "counteru":
        return b"bench.c%d:%d|c" % (k, 1 + (i * 7) % 9)
    if mode == "tagged":
        return b"bench.c%d:1|c|#env:bench,host:h%d" % (k, k % 4)
    return b"bench.c%d:1|c" % k


def datagrams(mode: str, count: int, start: int = 0) -> tuple[list[bytes], int]:
    keys = MODES[mode]
    out, i = [], start
    for _ in range(count):
        lines, size = [], 0
        while True:
            text = line(mode, i, keys)
            if size + len(text) + 1 > 1400:
                break
            lines.append(text)
            size += len(text) + 1
            i += 1
        out.append(b"\n".join(lines))
    return out, i - start


def pipeline(use_native: bool) -> tuple[IntervalAggregator, Ingest]:
    registry = SeriesRegistry()
    now = time.time()
    agg = IntervalAggregator(
        interval=10.0,
        clock=lambda: now,  # one bucket, however long a run takes
        registry=registry,
        max_series_per_tenant=1_000_000,
        max_backdate=3600.0,
    )
    parser = StatsdParser()
    ingest = Ingest(agg, Telemetry(), parser)
    if use_native:
        module = native.native_module()
        assert module is not None, "the native core is not built (pip install -e .)"
        ingest.native = native.NativeLive(
            module, agg, parser, ingest.telemetry, gauge_delta=True, clock=None
        )
    return agg, ingest


def parse_ns(mode: str, use_native: bool, n_datagrams: int) -> float:
    """CPU ns per line. Native: the core's own entry point, as a reader thread calls it (no
    telemetry sync per datagram); Python: Ingest.statsd_lines, as its UDP listener calls it."""
    _, ingest = pipeline(use_native)
    feed = ingest.statsd_lines
    if ingest.native is not None:
        core = ingest.native.new_core("default")

        def feed(tenant: str, data: bytes, transport: str) -> None:
            core.feed(data, 0, time.time())

    warm, _ = datagrams(mode, 200)
    for d in warm:
        feed("default", d, "udp")
    data, lines = datagrams(mode, n_datagrams, 10**6)
    t0 = time.process_time()
    for d in data:
        feed("default", d, "udp")
    return (time.process_time() - t0) / lines * 1e9


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def memory_per_value() -> dict[str, float]:
    agg, ingest = pipeline(True)
    base = rss_bytes()
    values = 0
    i = 0
    while values < 20_000_000:
        data, n = datagrams("timeru", 1000, i)
        i += n
        values += n
        for d in data:
            ingest.statsd_lines("default", d, "udp")
    held = rss_bytes() - base
    reset_peak_rss()
    snap = agg.swap()
    swapped = rss_bytes() - base
    peak = peak_rss_bytes() - base
    agg.release(snap)
    return {
        "values": values,
        "native_table": held / values,
        "swap_peak": peak / values,
        "after_swap": swapped / values,
    }


def reset_peak_rss() -> None:
    """Linux: VmHWM starts again from the current RSS (proc(5), clear_refs 5)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def flush_seconds(use_native: bool) -> float:
    agg, ingest = pipeline(use_native)
    for rep in range(100):
        lines = [b"flush.t%d:%d.%d|ms" % (k, rep, k % 7) for k in range(10_000)]
        for j in range(0, len(lines), 80):
            ingest.statsd_lines("default", b"\n".join(lines[j : j + 80]), "udp")
    snap = agg.swap()
    t0 = time.perf_counter()
    rows = agg.snapshot_rows(snap)
    took = time.perf_counter() - t0
    assert len(rows) == 10_000
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    out: dict[str, Any] = {"parse_ns_per_line": {}, "flush_s": {}}
    for mode in MODES:
        nat = [parse_ns(mode, True, 20_000) for _ in range(args.runs)]
        ref = [parse_ns(mode, False, 2_000) for _ in range(args.runs)]
        out["parse_ns_per_line"][mode] = {
            "native": statistics.median(nat),
            "python": statistics.median(ref),
            "ratio": statistics.median(r / n for r, n in zip(ref, nat, strict=True)),
        }
        print(mode, json.dumps(out["parse_ns_per_line"][mode]), flush=True)
    nat_f, ref_f = [], []
    for _ in range(args.runs):
        nat_f.append(flush_seconds(True))
        ref_f.append(flush_seconds(False))
    out["flush_s"] = {"native": statistics.median(nat_f), "python": statistics.median(ref_f)}
    print("flush of 10,000 timer series x 100 values", json.dumps(out["flush_s"]), flush=True)
    out["memory"] = memory_per_value()
    print("memory per buffered timer value", json.dumps(out["memory"]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
