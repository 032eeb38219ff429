"""Memory under a flood of unique series (not a test).

Starts the real daemon (`python -m statsd_gateway serve`) on 127.0.0.1 with ports 0, a temporary
store, default limits (100,000 series per tenant) and a 10 s flush interval, then sends ONE
MILLION counter lines over UDP, each with a name of its own (`soak.s0000001:1|c`, ...), packed
into ~1400-byte datagrams and paced at 50,000 lines/s by default, so that the kernel's socket
buffer is not what limits the run (unique names take the parser's slow path; at 100,000 lines/s
the daemon fell behind and the kernel dropped datagrams). Once a second it samples VmRSS from
/proc/<pid>/status, and VmHWM (its peak RSS) at the end. It prints:

- peak RSS, and RSS once the flood is over and a flush has run;
- series accepted vs rejected for the cardinality limit, from `GET /metrics`
  (statsd_gateway_series, statsd_gateway_rejects_total{reason="cardinality_limit"});
- RSS when 200k, 500k and 1M lines had been sent, and whether RSS stayed flat once the limit
  was reached and the admitted series had been flushed once (see report_flatness).

Run from the repository root (Linux only, loopback only; about 45 s with the defaults):

    .venv/bin/python bench/soak.py [--lines 1000000] [--rate 50000] [--flush 10]
"""

from __future__ import annotations

import argparse
import itertools
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

PACKET_BYTES = 1400
TICK = 0.01  # pacing tick, seconds
MAX_BURST = 0.05  # a late sender catches up at most this many seconds of lines per tick
MILESTONES = (200_000, 500_000, 1_000_000)
FLAT_TOLERANCE = 0.10  # "flat": at most 10 % above the RSS after the first flush
_LISTENING = re.compile(r"listening (udp|http) 127\.0\.0\.1:(\d+)")
MIB = 1024 * 1024


def start_daemon(state: Path, flush: float) -> tuple[subprocess.Popen[bytes], int, int, Path]:
    """Starts the daemon; returns it, its UDP and HTTP ports and its log file."""
    cfg = state / "config.yaml"
    cfg.write_text(
        "udp: {listen: '127.0.0.1:0'}\n"
        "http: {listen: '127.0.0.1:0'}\n"
        f"storage: {{path: '{state / 'metrics.db'}'}}\n"
        f"aggregation: {{flush_interval: {flush}}}\n"
        "log: {level: info}\n"
    )
    log_path = state / "daemon.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "statsd_gateway", "serve", "--config", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    ports: dict[str, int] = {}
    deadline = time.monotonic() + 30
    while len(ports) < 2 and time.monotonic() < deadline and proc.poll() is None:
        ports = {m[1]: int(m[2]) for m in _LISTENING.finditer(log_path.read_text())}
        time.sleep(0.05)
    if len(ports) < 2:
        proc.kill()
        raise SystemExit(f"the daemon did not start:\n{log_path.read_text()}")
    return proc, ports["udp"], ports["http"], log_path


def proc_status(pid: int, field: str) -> int:
    """A `kB` field of /proc/<pid>/status (VmRSS, VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def scrape(http_port: int) -> dict[str, float]:
    """The daemon's own metrics, keyed by the sample's text (name and labels)."""
    url = f"http://127.0.0.1:{http_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def udp_metric(m: dict[str, float], name: str, reason: str | None = None) -> int:
    labels = f'reason="{reason}",transport="udp"' if reason else 'transport="udp"'
    return int(m.get(f"statsd_gateway_{name}{{{labels}}}", 0))


class Sampler(threading.Thread):
    """Once a second: the daemon's VmRSS, and its flushes and UDP lines read so far."""

    def __init__(self, pid: int, http_port: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.http_port = http_port
        self.samples: list[tuple[float, int, int, int]] = []  # (s, RSS, flushes, lines read)
        self.stopped = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        while not self.stopped.is_set():
            m = scrape(self.http_port)
            flushes = int(m["statsd_gateway_flushes_total"])
            read = udp_metric(m, "lines_received_total")
            rss = proc_status(self.pid, "VmRSS")
            self.samples.append((time.monotonic() - self.t0, rss, flushes, read))
            self.stopped.wait(1.0)


def datagrams(lines: range) -> list[bytes]:
    """Counter lines with unique names, packed into datagrams of at most PACKET_BYTES."""
    out: list[bytes] = []
    buf: list[str] = []
    size = 0
    for i in lines:
        line = f"soak.s{i:07d}:1|c"
        if size + len(line) + 1 > PACKET_BYTES and buf:
            out.append("\n".join(buf).encode())
            buf, size = [], 0
        buf.append(line)
        size += len(line) + 1
    if buf:
        out.append("\n".join(buf).encode())
    return out


def flood(
    args: argparse.Namespace, udp_port: int, on_milestone: Callable[[int], None]
) -> tuple[int, float]:
    """Sends args.lines unique lines at args.rate; returns (lines sent, seconds taken)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    addr = ("127.0.0.1", udp_port)
    marks = [m for m in MILESTONES if m <= args.lines] or [args.lines]
    sent, t0 = 0, time.monotonic()
    while sent < args.lines and time.monotonic() - t0 < args.max_seconds:
        due = min(args.lines, int((time.monotonic() - t0) * args.rate))
        upto = min(due, sent + int(args.rate * MAX_BURST))
        for d in datagrams(range(sent, upto)):
            sock.sendto(d, addr)
        sent = max(sent, upto)
        while marks and sent >= marks[0]:
            on_milestone(marks.pop(0))
        time.sleep(TICK)
    sock.close()
    return sent, time.monotonic() - t0


def wait_drained(http_port: int, sent: int, timeout: float = 60.0) -> dict[str, float]:
    """Waits until the daemon has read every line sent, or lines_received stops moving."""
    deadline = time.monotonic() + timeout
    last = -1
    while True:
        m = scrape(http_port)
        got = udp_metric(m, "lines_received_total")
        if got >= sent or got == last or time.monotonic() > deadline:
            return m
        last = got
        time.sleep(1.0)


def run(args: argparse.Namespace) -> dict[str, object]:
    """The whole soak; returns what report() prints."""
    with tempfile.TemporaryDirectory(prefix="sgw-soak-") as tmp:
        proc, udp_port, http_port, log_path = start_daemon(Path(tmp), args.flush)
        try:
            rss_idle = proc_status(proc.pid, "VmRSS")
            sampler = Sampler(proc.pid, http_port)
            sampler.start()
            at: dict[int, tuple[int, int, int]] = {}

            def milestone(n: int) -> None:
                m = scrape(http_port)
                got = udp_metric(m, "lines_received_total")
                flushes = int(m["statsd_gateway_flushes_total"])
                at[n] = (proc_status(proc.pid, "VmRSS"), got, flushes)

            sent, took = flood(args, udp_port, milestone)
            metrics = wait_drained(http_port, sent)
            time.sleep(args.flush + 2)  # let at least one flush write what the flood left
            metrics = scrape(http_port)
            after = proc_status(proc.pid, "VmRSS")
            hwm = proc_status(proc.pid, "VmHWM")
            sampler.stopped.set()
            sampler.join()
        finally:
            proc.terminate()
            proc.wait(60)
        problems = [ln for ln in log_path.read_text().splitlines() if " ERROR " in ln]
    return {
        "sent": sent,
        "took": took,
        "idle": rss_idle,
        "after": after,
        "hwm": hwm,
        "at": at,
        "samples": sampler.samples,
        "metrics": metrics,
        "exit": proc.returncode,
        "problems": problems,
    }


def report(args: argparse.Namespace, r: dict[str, object]) -> None:
    m: dict[str, float] = r["metrics"]  # type: ignore[assignment]
    received = udp_metric(m, "lines_received_total")
    print(
        f"sent {r['sent']:,} unique counter lines in {r['took']:.1f} s "
        f"(target {args.rate:,}/s); daemon received {received:,}"
    )
    print(f"series accepted (statsd_gateway_series): {int(m['statsd_gateway_series']):,}")
    print(f"rejected, cardinality_limit: {udp_metric(m, 'rejects_total', 'cardinality_limit'):,}")
    print(
        f"kernel drops: {udp_metric(m, 'kernel_drops_total'):,}  "
        f"queue drops: {int(m.get('statsd_gateway_queue_dropped_total', 0)):,}  "
        f"flushes: {int(m['statsd_gateway_flushes_total'])}  "
        f"flush errors: {int(m['statsd_gateway_flush_errors_total'])}"
    )
    report_rss(r)
    print(f"daemon exit status after SIGTERM: {r['exit']}")
    for line in r["problems"][:10]:  # type: ignore[index]
        print("daemon log:", line)


def report_rss(r: dict[str, object]) -> None:
    samples: list[tuple[float, int, int, int]] = r["samples"]  # type: ignore[assignment]
    at: dict[int, tuple[int, int, int]] = r["at"]  # type: ignore[assignment]
    print(f"RSS idle before the flood: {r['idle'] / MIB:7.1f} MiB")  # type: ignore[operator]
    for n, (rss, got, flushes) in sorted(at.items()):
        print(f"RSS at {n:>9,} lines sent: {rss / MIB:7.1f} MiB (read {got:,}; flushes {flushes})")
    print(f"peak RSS (1 s samples):    {max(s[1] for s in samples) / MIB:7.1f} MiB")
    print(f"peak RSS (VmHWM):          {r['hwm'] / MIB:7.1f} MiB")  # type: ignore[operator]
    print(f"RSS after the flood:       {r['after'] / MIB:7.1f} MiB (after a flush)")  # type: ignore[operator]
    for a, b in itertools.pairwise(sorted(at)):
        print(f"RSS from {a:>9,} to {b:>9,} lines sent: {(at[b][0] - at[a][0]) / at[a][0]:+6.1%}")
    report_flatness(samples)
    print("RSS samples (s: MiB): " + ", ".join(f"{s[0]:.0f}: {s[1] / MIB:.0f}" for s in samples))


def report_flatness(samples: list[tuple[float, int, int, int]]) -> None:
    """Flat = from the first sample after the first completed flush to the end, RSS never rises
    more than FLAT_TOLERANCE above where it was. The series admitted before the limit cost memory
    once, up to and including their first flush (the store's series ids, the coarse tiers' open
    rollup buckets, SQLite's page cache); that first flush lands wherever the wall clock puts it,
    which is why the milestones alone can mislead."""
    after = [s for s in samples if s[2] > 0]
    if not after:
        print("RSS past the limit: no flush completed during the run; not judged")
        return
    t0, base, _, read0 = after[0]
    top = max(s[1] for s in after)
    growth = (top - base) / base
    print(
        f"RSS from the first flush (t={t0:.0f} s, {read0:,} lines read: {base / MIB:.1f} MiB) "
        f"to the end: at most {growth:+.1%} -> {'flat' if growth <= FLAT_TOLERANCE else 'NOT flat'}"
        f" (tolerance {FLAT_TOLERANCE:.0%})"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lines", type=int, default=1_000_000, help="unique lines (= series) to send")
    p.add_argument("--rate", type=int, default=50_000, help="lines per second")
    p.add_argument("--flush", type=float, default=10.0, help="aggregation.flush_interval, s")
    p.add_argument("--max-seconds", type=float, default=120.0, help="stop sending after this")
    args = p.parse_args()
    report(args, run(args))


if __name__ == "__main__":
    main()
