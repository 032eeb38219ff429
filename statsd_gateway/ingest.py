"""The one path every point takes into the aggregator, whether it came over UDP or HTTP.

Counts what arrives and what is rejected, by transport and reason; logs bad lines at debug level,
rate-limited. Never raises for bad input.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from statsd_gateway.aggregator import IntervalAggregator
from statsd_gateway.model import MetricType
from statsd_gateway.protocol import Sample, StatsdParser
from statsd_gateway.telemetry import Telemetry
from statsd_gateway.wal import WriteAheadLog

log = logging.getLogger(__name__)


class RateLimitedLog:
    """At most `per_second` debug lines a second; the rest are summed into the next line."""

    def __init__(self, per_second: int = 10) -> None:
        self.per_second = per_second
        self._window = 0
        self._n = 0
        self._suppressed = 0

    def debug(self, msg: str, *args: object) -> None:
        if not log.isEnabledFor(logging.DEBUG):
            return
        now = int(time.monotonic())
        if now != self._window:
            if self._suppressed:
                log.debug("%d more rejected lines not logged", self._suppressed)
            self._window, self._n, self._suppressed = now, 0, 0
        if self._n >= self.per_second:
            self._suppressed += 1
            return
        self._n += 1
        log.debug(msg, *args)


class Ingest:
    def __init__(
        self,
        aggregator: IntervalAggregator,
        telemetry: Telemetry,
        parser: StatsdParser,
        wal: WriteAheadLog | None = None,
    ) -> None:
        self.aggregator = aggregator
        self.telemetry = telemetry
        self.parser = parser
        self.wal = wal
        self._log = RateLimitedLog()

    def statsd(self, tenant: str, data: bytes, transport: str) -> None:
        """One datagram (or one TCP line batch) of StatsD text."""
        t = self.telemetry
        res = self.parser.parse(data)
        t.packets[transport] += 1
        t.bytes[transport] += len(data)
        t.lines[transport] += res.lines
        for reason, line in res.rejects:
            t.rejects[(transport, reason)] += 1
            self._log.debug("rejected %s line (%s): %.200r", transport, reason, line)
        if res.events:
            t.ignored["event"] += res.events
        if res.service_checks:
            t.ignored["service_check"] += res.service_checks
        if res.unknown_sections:
            t.ignored["unknown_section"] += res.unknown_sections
        samples = res.samples
        if not samples:
            return
        rejects = self.aggregator.add_samples(tenant, samples)
        t.accepted[transport] += len(samples) - len(rejects)
        for i, reason in rejects:
            t.rejects[(transport, reason)] += 1
            self._log.debug("rejected %s sample (%s): %.200r", transport, reason, samples[i][0])

    def samples(self, tenant: str, samples: list[Sample], transport: str) -> list[tuple[int, str]]:
        """Validated samples from HTTP; returns (index, reason) of those the aggregator refused.

        With a write-ahead log, the accepted samples are queued to it, stamped with their receive
        time so that a replay puts them in the same bucket; the caller awaits `wal.barrier()`
        before answering.
        """
        if self.wal is not None:
            now = self.aggregator.clock()
            samples = [s if s[5] is not None else (*s[:5], now, s[6]) for s in samples]
        seq = self.aggregator.next_seq
        rejects = self.aggregator.add_samples(tenant, samples)
        self.telemetry.accepted[transport] += len(samples) - len(rejects)
        for _, reason in rejects:
            self.telemetry.rejects[(transport, reason)] += 1
        if self.wal is not None and len(rejects) < len(samples):
            refused = {i for i, _ in rejects}
            kept = [
                [name, tags, mtype.value, value, rate, ts, delta]
                for i, (name, tags, mtype, value, rate, ts, delta) in enumerate(samples)
                if i not in refused
            ]
            self.wal.append(seq, {"k": "points", "tenant": tenant, "samples": kept})
        return rejects

    def replay(self, tenant: str, stored: list[list[Any]]) -> None:
        """Samples from the write-ahead log, as JSON lists; applied whatever their age."""
        samples: list[Sample] = [
            (name, tuple((k, v) for k, v in tags), MetricType(mtype), value, rate, ts, delta)
            for name, tags, mtype, value, rate, ts, delta in stored
        ]
        saved = self.aggregator.max_backdate
        self.aggregator.max_backdate = math.inf
        try:
            self.aggregator.add_samples(tenant, samples)
        finally:
            self.aggregator.max_backdate = saved
