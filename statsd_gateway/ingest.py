"""The one path every point takes into the aggregator, whether it came over UDP or HTTP.

Counts what arrives and what is rejected, by transport and reason; logs bad lines at debug level,
rate-limited. Never raises for bad input.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from statsd_gateway.aggregator import IntervalAggregator
from statsd_gateway.protocol import Sample, StatsdParser
from statsd_gateway.telemetry import Telemetry
from statsd_gateway.wal import WriteAheadLog

if TYPE_CHECKING:
    from statsd_gateway.backpressure import MemoryBound

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


@dataclass(slots=True)
class LoggedBody:
    """An HTTP body as received, for the write-ahead log: `positions[i]` is the index in the
    body's points of the i-th sample handed to Ingest.samples(), which fills in `seq` and
    `header` when it accepted any. The caller appends the entry (with the request's
    idempotency record, if any, so both are on disk or neither is)."""

    form: str  # "report" (the body is one point) or "batch" (the body's "points")
    body: bytes
    positions: list[int] = field(default_factory=list)
    total: int = 0
    seq: int | None = None
    header: dict[str, Any] | None = None


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
        # Set once the flusher exists (after the write-ahead log's replay).
        self.bound: MemoryBound | None = None
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
        if self.bound is not None:
            self.bound.nudge()
        t.accepted[transport] += len(samples) - len(rejects)
        for i, reason in rejects:
            t.rejects[(transport, reason)] += 1
            self._log.debug("rejected %s sample (%s): %.200r", transport, reason, samples[i][0])

    async def make_room(self, points: int) -> None:
        """Before an HTTP body of `points` is applied: waits while memory is at its bound
        (backpressure.py); raises Unavailable if the store cannot take what memory holds."""
        if self.bound is not None:
            await self.bound.make_room(points)

    def samples(
        self,
        tenant: str,
        samples: list[Sample],
        transport: str,
        *,
        logged: LoggedBody | None = None,
    ) -> list[tuple[int, str]]:
        """Validated samples from HTTP; returns (index, reason) of those the aggregator refused.

        With a write-ahead log and `logged` (the request body they came from), `logged` gets the
        log entry to append: the body itself, the receive time and the positions accepted, so
        that a replay re-reads exactly those points into the same buckets. Logging the raw body
        costs no encoding on the hot path.
        """
        seq = self.aggregator.next_seq
        now = self.aggregator.clock()
        rejects = self.aggregator.add_samples(tenant, samples)
        self.telemetry.accepted[transport] += len(samples) - len(rejects)
        for _, reason in rejects:
            self.telemetry.rejects[(transport, reason)] += 1
        if self.wal is not None and logged is not None and len(rejects) < len(samples):
            keep = logged.positions
            if rejects:
                refused = {logged.positions[i] for i, _ in rejects}
                keep = [p for p in logged.positions if p not in refused]
            logged.seq = seq
            logged.header = {
                "k": "body",
                "form": logged.form,
                "tenant": tenant,
                "now": now,
                "keep": None if len(keep) == logged.total else keep,
            }
        return rejects

    def replay(self, tenant: str, samples: list[Sample]) -> None:
        """Samples re-read from the write-ahead log: applied whatever their age."""
        saved = self.aggregator.max_backdate
        self.aggregator.max_backdate = math.inf
        try:
            self.aggregator.add_samples(tenant, samples)
        finally:
            self.aggregator.max_backdate = saved
