"""UDP ingest benchmark for statsd-gateway: how many StatsD lines/s the daemon takes without loss.

What it measures
    It starts the real daemon (`python -m statsd_gateway serve`) on 127.0.0.1 with a temporary
    config and store (flush interval 1 s, SO_RCVBUF 8 MiB asked), then runs three scenarios:

    counter-packed  `name:1|c` lines packed into ~1400-byte datagrams (the headline)
    timer-packed    `name:<lognormal value>|ms` lines, every value different, packed the same way
    counter-single  one `name:1|c` line per datagram

    Each scenario steps up the offered rate. In each step several sender processes (one UDP
    socket each) send for a few seconds, paced against a monotonic schedule in bursts per 1 ms
    tick; every step uses 100 series names under a prefix of its own. After the step the script
    waits until the daemon has drained its backlog (`statsd_gateway_lines_received_total` stops
    moving), then asks the query API for `agg=count` of every name, and reports:

    offered/achieved  target rate and what the senders really sent (they share the CPUs)
    loss              1 - counted / sent
    kdrop / qdrop     datagrams dropped by the kernel (socket buffer, /proc/net/udp) and by the
                      daemon's own queue (statsd_gateway_queue_dropped_total)
    cpu%              daemon CPU time during the send window / window length (100 % = one core)
    us/1k             daemon CPU microseconds (utime+stime from /proc/<pid>/stat, all threads,
                      until drained) per 1,000 lines it received

    The headline per scenario is the highest achieved rate with < 0.1 % loss.

How to run (from the repository root; Linux only, loopback only)
    .venv/bin/python bench/ingest.py            # full run, 3 s per step, a few minutes
    .venv/bin/python bench/ingest.py --quick    # 1 s per step, fewer steps
    .venv/bin/python bench/ingest.py --senders 3 --json /tmp/run1.json
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import math
import multiprocessing as mp
import os
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path

PACKET_BYTES = 1400
NAMES_PER_STEP = 100
TICK = 0.001  # the senders' pacing tick
MAX_BURST = 0.02  # a late sender catches up at most this many seconds of lines per tick
LOSS_OK = 0.001  # the headline: < 0.1 % loss
RCVBUF = 8 * 1024 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _k(*thousands: int) -> list[int]:
    return [t * 1000 for t in thousands]


# scenario -> (line kind, packed?, offered rates in lines/s: full run, --quick)
SCENARIOS: dict[str, tuple[str, bool, list[int], list[int]]] = {
    "counter-packed": (
        "counter",
        True,
        _k(100, 200, 300, 400, 600, 800, 1000, 1200, 1500, 2000),
        _k(100, 300, 1000, 2000),
    ),
    "timer-packed": (
        "timer",
        True,
        _k(50, 100, 150, 200, 250, 300, 400, 600),
        _k(100, 200, 300),
    ),
    "counter-single": (
        "counter",
        False,
        _k(10, 20, 40, 60, 80, 100, 120, 150, 200),
        _k(20, 60, 100, 200),
    ),
}


@dataclass
class StepResult:
    scenario: str
    offered: int
    achieved: float
    sent: int
    counted: int
    loss: float
    kernel_drops: int
    queue_drops: int
    cpu_util: float
    cpu_us_per_1k: float


# -- the daemon ------------------------------------------------------------------------------


class Daemon:
    """The daemon under test: a subprocess with a temporary config, store and log."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.key = "bench_" + secrets.token_urlsafe(24)
        self.log_path = workdir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.udp_port = 0
        self.http_port = 0
        self._conn: http.client.HTTPConnection | None = None

    def write_config(self) -> Path:
        sha = hashlib.sha256(self.key.encode()).hexdigest()
        text = f"""\
udp: {{listen: "127.0.0.1:0", read_buffer: {RCVBUF}}}
http: {{listen: "127.0.0.1:0"}}
storage: {{path: "{self.workdir / "db" / "metrics.db"}"}}
aggregation: {{flush_interval: 1s}}
auth: {{keys: [{{name: bench, sha256: "{sha}", tenant: default}}]}}
log: {{level: info}}
"""
        path = self.workdir / "config.yaml"
        path.write_text(text, encoding="utf-8")
        return path

    def start(self, timeout: float = 30.0) -> None:
        cmd = [
            sys.executable,
            "-m",
            "statsd_gateway",
            "serve",
            "--config",
            str(self.write_config()),
        ]
        with open(self.log_path, "wb") as log:
            # A session of its own: Ctrl-C reaches the script, which then stops the daemon.
            self.proc = subprocess.Popen(cmd, stderr=log, stdout=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_text()
            udp = re.search(r"listening udp 127\.0\.0\.1:(\d+)", text)
            web = re.search(r"listening http 127\.0\.0\.1:(\d+)", text)
            if udp and web:
                self.udp_port, self.http_port = int(udp.group(1)), int(web.group(1))
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited at start:\n{text}")
            time.sleep(0.05)
        raise RuntimeError(f"the daemon did not log its ports in {timeout} s:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = 30.0) -> None:
        if self._conn is not None:
            self._conn.close()
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"the daemon ignored SIGTERM for {timeout} s: killing it", file=sys.stderr)
            self.proc.kill()
            self.proc.wait(10)

    def cpu_us(self) -> float:
        """utime + stime of every thread of the daemon, in microseconds."""
        assert self.proc is not None
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces
        return (int(fields[11]) + int(fields[12])) * 1e6 / CLK_TCK

    def kernel_drops(self) -> int:
        """Datagrams the kernel dropped for the daemon's UDP socket (/proc/net/udp `drops`)."""
        port = f":{self.udp_port:04X}"
        for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
            cols = line.split()
            if cols[1].endswith(port) and cols[1].startswith("0100007F"):
                return int(cols[-1])
        return 0

    def get(self, path: str, auth: bool = False) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {self.key}"} if auth else {}
        for attempt in range(2):  # one reconnect if the kept-alive connection went away
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=60)
            try:
                self._conn.request("GET", path, headers=headers)
                resp = self._conn.getresponse()
                return resp.status, resp.read()
            except (OSError, http.client.HTTPException):
                self._conn.close()
                self._conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def self_metric(self, text: str, name: str) -> float:
        m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    def received_and_dropped(self) -> tuple[float, float]:
        status, body = self.get("/metrics")
        if status != 200:
            raise RuntimeError(f"GET /metrics: HTTP {status}")
        text = body.decode()
        lines = self.self_metric(text, 'statsd_gateway_lines_received_total{transport="udp"}')
        return lines, self.self_metric(text, "statsd_gateway_queue_dropped_total")

    def count(self, name: str, since: float) -> int:
        params = {"name": name, "agg": "count", "since": f"{since:.0f}"}
        params["until"] = f"{time.time() + 120:.0f}"
        status, body = self.get("/v1/metrics/query?" + urllib.parse.urlencode(params), auth=True)
        if status == 404:  # not one line of this name arrived
            return 0
        if status != 200:
            raise RuntimeError(f"query {name}: HTTP {status}: {body[:300]!r}")
        return round(sum(p["value"] for p in json.loads(body)["points"]))


def granted_rcvbuf() -> int:
    """What Linux grants for SO_RCVBUF=8 MiB (it reports double; capped by net.core.rmem_max)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        return s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2


# -- the senders -----------------------------------------------------------------------------


def make_lines(kind: str, names: list[str], n: int, rng: random.Random) -> list[str]:
    """`n` lines cycling through `names`; timer values are lognormal (median ~20 ms)."""
    if kind == "counter":
        return [f"{names[i % len(names)]}:1|c" for i in range(n)]
    return [f"{names[i % len(names)]}:{rng.lognormvariate(3.0, 1.0):.3f}|ms" for i in range(n)]


def make_pool(kind: str, packed: bool, names: list[str], seed: int) -> list[tuple[bytes, int]]:
    """Datagrams to send in a cycle, each with its number of lines."""
    rng = random.Random(seed)
    # Timer values must differ line to line: a pool far larger than the parser's line cache.
    n_lines = 120_000 if kind == "timer" else len(names) * 60
    lines = make_lines(kind, names, n_lines, rng)
    if not packed:
        return [(line.encode(), 1) for line in lines]
    pool: list[tuple[bytes, int]] = []
    buf: list[str] = []
    size = 0
    for line in lines:
        if buf and size + len(line) + 1 > PACKET_BYTES:
            pool.append(("\n".join(buf).encode(), len(buf)))
            buf, size = [], 0
        buf.append(line)
        size += len(line) + 1
    if buf:
        pool.append(("\n".join(buf).encode(), len(buf)))
    return pool


def paced_send(
    sock: socket.socket, pool: list[tuple[bytes, int]], rate: float, start: float, duration: float
) -> tuple[int, int, float]:
    """Sends `rate` lines/s from `start` for `duration` s in bursts per tick.
    Returns (lines, datagrams, seconds actually taken)."""
    lines = dgrams = i = 0
    n = len(pool)
    end = start + duration
    burst = max(rate * MAX_BURST, 1.0)
    time.sleep(max(0.0, start - time.monotonic()))
    while True:
        now = time.monotonic()
        if now >= end:
            break
        target = min(rate * (now - start), lines + burst)
        while lines < target:
            payload, k = pool[i]
            i = i + 1 if i + 1 < n else 0
            sock.send(payload)
            lines += k
            dgrams += 1
        next_tick = start + (math.floor((now - start) / TICK) + 1) * TICK
        delay = next_tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return lines, dgrams, time.monotonic() - start


def sender_main(conn: Connection, kind: str, packed: bool, names: list[str], port: int) -> None:
    """One sender process: builds its pool, says ready, gets (rate, start, duration), sends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    try:
        pool = make_pool(kind, packed, names, seed=os.getpid())
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(("127.0.0.1", port))
            conn.send("ready")
            if not conn.poll(60):
                return
            rate, start, duration = conn.recv()
            conn.send(paced_send(sock, pool, rate, start, duration))
    finally:
        conn.close()


class Senders:
    """Sender processes for one step: started and ready on enter, joined (or killed) on exit."""

    def __init__(self, n: int, kind: str, packed: bool, names: list[str], port: int) -> None:
        self.args = (kind, packed, names, port)
        self.n = n
        self.procs: list[mp.process.BaseProcess] = []
        self.pipes: list[Connection] = []

    def __enter__(self) -> Senders:
        ctx = mp.get_context("fork")
        for _ in range(self.n):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=sender_main, args=(child, *self.args))
            p.start()
            self.procs.append(p)
            self.pipes.append(parent)
        for pipe in self.pipes:
            if not pipe.poll(60) or pipe.recv() != "ready":
                raise RuntimeError("a sender did not get ready in 60 s")
        return self

    def run(self, rate: float, duration: float) -> tuple[int, float]:
        """Sends `rate` lines/s in total for `duration` s. Returns (lines sent, achieved rate)."""
        start = time.monotonic() + 0.05
        for pipe in self.pipes:
            pipe.send((rate / self.n, start, duration))
        results = [pipe.recv() for pipe in self.pipes if pipe.poll(duration + 60)]
        if len(results) != self.n:
            raise RuntimeError("a sender did not report")
        lines = sum(r[0] for r in results)
        return lines, lines / max(r[2] for r in results)

    def __exit__(self, *exc: object) -> None:
        for pipe in self.pipes:
            pipe.close()
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join(5)


# -- one step --------------------------------------------------------------------------------


def wait_drained(daemon: Daemon, timeout: float = 60.0) -> tuple[float, float]:
    """Waits until the daemon's received-lines counter stops moving (its backlog is parsed)."""
    deadline = time.monotonic() + timeout
    last = daemon.received_and_dropped()
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = daemon.received_and_dropped()
        if now == last:
            return now
        last = now
    print(f"  warning: the daemon was still receiving after {timeout} s", file=sys.stderr)
    return last


def wait_counted(daemon: Daemon, names: list[str], sent: int, since: float) -> int:
    """Sum of `agg=count` over `names`, polled until it equals `sent` or stops changing."""
    deadline = time.monotonic() + 30.0
    last = -1
    for _ in range(40):
        total = sum(daemon.count(name, since) for name in names)
        if total in (sent, last) or time.monotonic() > deadline:
            return total
        last = total
        time.sleep(0.5)  # within one flush interval (1 s) the count must be final
    return last


def run_step(
    daemon: Daemon, args: argparse.Namespace, scenario: str, rate: int, step: int
) -> StepResult:
    kind, packed, _, _ = SCENARIOS[scenario]
    prefix = f"bench.{args.tag}.{scenario.replace('-', '_')}.s{step:02d}"
    names = [f"{prefix}.m{i:03d}" for i in range(NAMES_PER_STEP)]
    since = time.time() - 60
    with Senders(args.senders, kind, packed, names, daemon.udp_port) as senders:
        received0, qdrop0 = daemon.received_and_dropped()
        kdrop0, cpu0, t0 = daemon.kernel_drops(), daemon.cpu_us(), time.monotonic()
        sent, achieved = senders.run(rate, args.duration)
        cpu_send = (daemon.cpu_us() - cpu0) / ((time.monotonic() - t0) * 1e6)
    received1, qdrop1 = wait_drained(daemon)
    cpu = daemon.cpu_us() - cpu0
    received = max(received1 - received0, 1.0)
    counted = wait_counted(daemon, names, sent, since)
    return StepResult(
        scenario=scenario,
        offered=rate,
        achieved=achieved,
        sent=sent,
        counted=counted,
        loss=1.0 - counted / sent if sent else 0.0,
        kernel_drops=daemon.kernel_drops() - kdrop0,
        queue_drops=int(qdrop1 - qdrop0),
        cpu_util=cpu_send,
        cpu_us_per_1k=cpu / received * 1000,
    )


# -- scenarios, report, main -----------------------------------------------------------------


def run_scenario(daemon: Daemon, args: argparse.Namespace, scenario: str) -> list[StepResult]:
    """Steps the offered rate up; stops early after two steps in a row lose more than 5 %."""
    _, _, full, quick = SCENARIOS[scenario]
    rates = [int(r) for r in args.rates.split(",")] if args.rates else quick if args.quick else full
    results: list[StepResult] = []
    print(f"\n{scenario}: {args.senders} senders, {args.duration:g} s per step", flush=True)
    print(header(), flush=True)
    for step, rate in enumerate(rates[:20]):
        r = run_step(daemon, args, scenario, rate, step)
        results.append(r)
        print(row(r), flush=True)
        if len(results) >= 2 and all(x.loss > 0.05 for x in results[-2:]):
            print("  (two steps lost > 5 %: the higher rates are skipped)", flush=True)
            break
    return results


def header() -> str:
    return (
        f"{'offered/s':>10} {'achieved/s':>11} {'sent':>10} {'counted':>10} {'loss %':>8} "
        f"{'kdrop':>7} {'qdrop':>7} {'cpu %':>6} {'us/1k':>7}"
    )


def row(r: StepResult) -> str:
    return (
        f"{r.offered:>10,} {r.achieved:>11,.0f} {r.sent:>10,} {r.counted:>10,} "
        f"{r.loss * 100:>8.3f} {r.kernel_drops:>7,} {r.queue_drops:>7,} "
        f"{r.cpu_util * 100:>6.0f} {r.cpu_us_per_1k:>7.0f}"
    )


def best_rate(results: list[StepResult]) -> float:
    """The highest achieved rate of a step with < 0.1 % loss (0 if none)."""
    return max((r.achieved for r in results if r.loss < LOSS_OK), default=0.0)


def print_headline(all_results: dict[str, list[StepResult]]) -> None:
    print("\nheadline: highest achieved rate with < 0.1 % loss")
    for scenario, results in all_results.items():
        best = best_rate(results)
        top = max((r.achieved for r in results), default=0.0)
        note = "  (the highest step tested: the limit may be higher)" if best == top else ""
        print(f"  {scenario:<15} {best:>11,.0f} lines/s{note}")


def machine_info(daemon: Daemon) -> dict[str, object]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    m = re.search(r"kernel granted (\d+)", daemon.log_text())
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": sys.version.split()[0],
        "rcvbuf_asked": RCVBUF,
        "rcvbuf_granted": int(m.group(1)) if m else granted_rcvbuf(),
    }


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 s per step and fewer steps")
    p.add_argument("--duration", type=float, help="seconds per step (default 3, --quick 1)")
    p.add_argument("--senders", type=int, default=2, help="sender processes (default 2)")
    p.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), help="only these")
    p.add_argument("--rates", help="offered rates to step through, e.g. 200000,400000")
    p.add_argument("--json", type=Path, help="also write the results to this file")
    args = p.parse_args()
    if args.duration is None:
        args.duration = 1.0 if args.quick else 3.0
    args.duration = min(max(args.duration, 0.5), 30.0)
    args.senders = min(max(args.senders, 1), 8)
    args.tag = f"r{secrets.token_hex(3)}"
    return args


def main() -> int:
    args = parse_args()
    all_results: dict[str, list[StepResult]] = {}
    info: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="sgw-bench-") as tmp:
        daemon = Daemon(Path(tmp))
        try:
            daemon.start()
            info = machine_info(daemon)
            print("machine:", ", ".join(f"{k}={v}" for k, v in info.items()))
            print(f"daemon pid {daemon.proc.pid if daemon.proc else '?'}, udp :{daemon.udp_port}")
            for scenario in args.scenario or list(SCENARIOS):
                all_results[scenario] = run_scenario(daemon, args, scenario)
        except KeyboardInterrupt:
            print("\ninterrupted: stopping the daemon", file=sys.stderr)
            return 130
        finally:
            daemon.stop()
    print_headline(all_results)
    if args.json:
        out = {
            "machine": info,
            "args": sys.argv[1:],
            "results": {s: [asdict(r) for r in rs] for s, rs in all_results.items()},
        }
        args.json.write_text(json.dumps(out, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
