"""The daemon's own metrics: plain counters on the hot path, exported through prometheus_client.

Counting is a Python integer increment (the ingest path cannot afford a registry lock per line);
`TelemetryCollector` turns the counters into Prometheus metric families at scrape time. Every
metric name is listed in METRICS and documented in docs/METRICS.md (a test keeps that true).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from statsd_gateway.relay import RelayCounts

PREFIX = "statsd_gateway_"
METRICS: dict[str, str] = {
    "packets_received_total": "Datagrams or HTTP requests received, by transport.",
    "bytes_received_total": "Payload bytes received, by transport.",
    "lines_received_total": "StatsD lines or JSON points received, by transport.",
    "samples_accepted_total": "Samples accepted into the aggregator, by transport.",
    "rejects_total": "Lines or points rejected, by transport and reason.",
    "ignored_total": "Accepted but not stored: events, service checks, unknown sections.",
    "queue_dropped_total": "Datagrams dropped because a UDP or Unix datagram queue was full.",
    "kernel_drops_total": "Datagrams the kernel dropped on the socket, by transport (Linux only).",
    "tcp_connections_total": "TCP connections accepted.",
    "tcp_connections_refused_total": "TCP connections closed at once: tcp.max_connections open.",
    "tcp_idle_closed_total": "TCP connections closed after tcp.idle_timeout without data.",
    "tcp_connections_open": "TCP connections open now.",
    "http_bad_requests_total": "HTTP requests refused before any handler, by reason.",
    "relay_lines_total": "StatsD lines sent to relay.address.",
    "relay_packets_total": "Datagrams sent to relay.address.",
    "relay_bytes_total": "Bytes sent to relay.address (the datagrams' payloads).",
    "relay_dropped_lines_total": "StatsD lines not relayed, by reason.",
    "relay_send_errors_total": "Sends to relay.address that failed, by error.",
    "flushes_total": "Flushes written to the store.",
    "flush_errors_total": "Flushes that failed and were kept for retry.",
    "flush_rows_total": "Bucket rows written by flushes.",
    "flush_dropped_series_total": "Series-buckets dropped because too many flushes were pending.",
    "flush_quarantined_series_total": "Series-buckets set aside because they cannot be written.",
    "pressure_flushes_total": "Flushes started early: points in memory at storage.backfill_memory.",
    "wal_replay_skipped_total": "Write-ahead-log points or records skipped at start: invalid.",
    "wal_replay_dropped_bytes_total": "Write-ahead-log bytes not replayed at start: torn, corrupt.",
    "retention_deleted_rows_total": "Bucket rows deleted because they outlived their tier.",
    "sealed_buckets_total": "Buckets moved from a tier's head rows into compressed chunks.",
    "last_flush_duration_seconds": "Duration of the last successful flush.",
    "last_flush_step_duration_seconds": "Duration of each step of the last flush, by step.",
    "pending_flushes": "Snapshots waiting to be written to the store.",
    "memory_held_bytes": "Estimated bytes the points in memory take (bounded by backfill_memory).",
    "series": "Series known to the daemon, all tenants.",
    "exporter_scrapes_total": "Scrapes of the exporter's /metrics (exporter.listen).",
    "exporter_dropped_series_total": "Series a scrape of the exporter left out, by reason.",
}


NO_RELAY = RelayCounts(0, 0, 0, {}, {})


class Telemetry:
    def __init__(self) -> None:
        self.packets: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self.lines: Counter[str] = Counter()
        self.accepted: Counter[str] = Counter()
        self.rejects: Counter[tuple[str, str]] = Counter()
        self.ignored: Counter[str] = Counter()
        self.queue_dropped = 0
        self.flushes = 0
        self.flush_errors = 0
        self.flushed_rows = 0
        self.flush_dropped_series = 0
        self.flush_quarantined_series = 0
        # step (swap, finish, fold, write, release) -> seconds it took in the last flush that ran it
        self.flush_step_seconds: dict[str, float] = {}
        self.pressure_flushes = 0
        self.wal_replay_skipped = 0
        self.wal_replay_dropped_bytes = 0
        self.retention_deleted_rows = 0
        self.sealed_buckets = 0
        self.last_flush_seconds = 0.0
        self.tcp_connections = 0
        self.tcp_connections_refused = 0
        self.tcp_idle_closed = 0
        self.http_bad_requests: Counter[str] = Counter()
        self.exporter_scrapes = 0
        self.exporter_dropped: Counter[str] = Counter()
        # Filled in by the composition root: values read at scrape time.
        self.pending_flushes: Callable[[], int] = lambda: 0
        self.memory_held_bytes: Callable[[], int] = lambda: 0
        self.series_count: Callable[[], int] = lambda: 0
        self.tcp_connections_open: Callable[[], int] = lambda: 0
        # transport -> drops the kernel reports; a transport it does not report for is absent.
        self.kernel_drops: Callable[[], dict[str, int]] = dict
        self.relay_counts: Callable[[], RelayCounts] = lambda: NO_RELAY

    def reject(self, transport: str, reason: str, n: int = 1) -> None:
        self.rejects[(transport, reason)] += n

    def render(self) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(TelemetryCollector(self))
        return generate_latest(registry)


def _labelled(name: str, labels: list[str], items: dict[tuple[str, ...], int]) -> Metric:
    fam = CounterMetricFamily(PREFIX + name.removesuffix("_total"), METRICS[name], labels=labels)
    for key, value in sorted(items.items()):
        fam.add_metric(list(key), value)
    return fam


class TelemetryCollector(Collector):
    def __init__(self, t: Telemetry) -> None:
        self.t = t

    def collect(self) -> Iterator[Metric]:
        t = self.t
        by_transport = ["transport"]
        yield _labelled(
            "packets_received_total", by_transport, {(k,): v for k, v in t.packets.items()}
        )
        yield _labelled("bytes_received_total", by_transport, {(k,): v for k, v in t.bytes.items()})
        yield _labelled("lines_received_total", by_transport, {(k,): v for k, v in t.lines.items()})
        yield _labelled(
            "samples_accepted_total", by_transport, {(k,): v for k, v in t.accepted.items()}
        )
        yield _labelled(
            "rejects_total", ["transport", "reason"], {k: v for k, v in t.rejects.items()}
        )
        yield _labelled("ignored_total", ["kind"], {(k,): v for k, v in t.ignored.items()})
        yield _labelled(
            "http_bad_requests_total", ["reason"], {(k,): v for k, v in t.http_bad_requests.items()}
        )
        yield _labelled(
            "exporter_dropped_series_total",
            ["reason"],
            {(k,): v for k, v in t.exporter_dropped.items()},
        )
        yield _labelled(
            "kernel_drops_total", by_transport, {(k,): v for k, v in t.kernel_drops().items()}
        )
        relay = t.relay_counts()
        yield _labelled(
            "relay_dropped_lines_total", ["reason"], {(k,): v for k, v in relay.dropped.items()}
        )
        yield _labelled(
            "relay_send_errors_total", ["error"], {(k,): v for k, v in relay.errors.items()}
        )
        for name, value in (
            ("relay_lines_total", relay.lines),
            ("relay_packets_total", relay.packets),
            ("relay_bytes_total", relay.bytes),
            ("queue_dropped_total", t.queue_dropped),
            ("flushes_total", t.flushes),
            ("flush_errors_total", t.flush_errors),
            ("flush_rows_total", t.flushed_rows),
            ("flush_dropped_series_total", t.flush_dropped_series),
            ("flush_quarantined_series_total", t.flush_quarantined_series),
            ("pressure_flushes_total", t.pressure_flushes),
            ("wal_replay_skipped_total", t.wal_replay_skipped),
            ("wal_replay_dropped_bytes_total", t.wal_replay_dropped_bytes),
            ("retention_deleted_rows_total", t.retention_deleted_rows),
            ("sealed_buckets_total", t.sealed_buckets),
            ("tcp_connections_total", t.tcp_connections),
            ("tcp_connections_refused_total", t.tcp_connections_refused),
            ("tcp_idle_closed_total", t.tcp_idle_closed),
            ("exporter_scrapes_total", t.exporter_scrapes),
        ):
            yield CounterMetricFamily(PREFIX + name.removesuffix("_total"), METRICS[name], value)
        steps = GaugeMetricFamily(
            PREFIX + "last_flush_step_duration_seconds",
            METRICS["last_flush_step_duration_seconds"],
            labels=["step"],
        )
        for step, seconds in sorted(t.flush_step_seconds.items()):
            steps.add_metric([step], seconds)
        yield steps
        for name, gvalue in (
            ("last_flush_duration_seconds", t.last_flush_seconds),
            ("pending_flushes", float(t.pending_flushes())),
            ("memory_held_bytes", float(t.memory_held_bytes())),
            ("series", float(t.series_count())),
            ("tcp_connections_open", float(t.tcp_connections_open())),
        ):
            yield GaugeMetricFamily(PREFIX + name, METRICS[name], gvalue)
