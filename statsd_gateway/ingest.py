"""The one path every point takes into the aggregator, whether it came over UDP or HTTP.

Counts what arrives and what is rejected, by transport and reason; logs bad lines at debug level,
rate-limited. Never raises for bad input.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from statsd_gateway.aggregator import IntervalAggregator
from statsd_gateway.errors import GatewayError
from statsd_gateway.model import Sample, SeriesKey
from statsd_gateway.protocol import StatsdParser
from statsd_gateway.telemetry import Telemetry
from statsd_gateway.wal import WriteAheadLog
from statsd_gateway.write_holds import WriteHolds

if TYPE_CHECKING:
    from statsd_gateway.backpressure import MemoryBound
    from statsd_gateway.native import NativeLive, ResolvedPoints
    from statsd_gateway.relay import PythonRelay

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
    `header` when it accepted any, and keeps the accepted samples in `admitted`. The caller
    appends the entry (with the request's idempotency record, if any, so both are on disk or
    neither is), then calls Ingest.commit() once it is on disk or Ingest.abandon() if not."""

    form: str  # "report" (the body is one point) or "batch" (the body's "points")
    body: bytes
    positions: list[int] = field(default_factory=list)
    total: int = 0
    seq: int | None = None
    header: dict[str, Any] | None = None
    tenant: str = ""
    admitted: list[Sample] | None = None
    received: float = 0.0  # the receive time they were admitted at (and are added as of)
    new_series: list[SeriesKey] = field(default_factory=list)
    # Points judged by the native core (Ingest.points): what it packed, how many it accepted,
    # how to read the points again from the body and judge them anew (a series was forgotten,
    # or the interval swapped, before the commit), and the registry's forget count then.
    resolved: ResolvedPoints | None = None
    accepted: int = 0
    reread: Callable[[], list[Any]] | None = None
    to_sample: Callable[[Any], Sample] | None = None
    forgets: int = 0


class Ingest:
    """The one door into the aggregator: StatsD text from UDP, TCP and unixgram (`statsd()`),
    validated samples from HTTP (`samples()`, logged before they are applied when the
    write-ahead log is on: `commit()` / `abandon()`), and the log's records at start
    (`replay()`). Runs on the event loop; counts what arrives and what is refused by transport
    and reason, logs bad lines at debug level (rate-limited), never raises for bad input."""

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
        self.holds = WriteHolds()
        # Set once the flusher exists (after the write-ahead log's replay).
        self.bound: MemoryBound | None = None
        # The native core, where it runs: StatsD text goes there instead (native.py).
        self.native: NativeLive | None = None
        # The pure-Python path's relay, when relay.address is set: StatsD text goes there as
        # received (the native core hands it to its own relay in C).
        self.relay: PythonRelay | None = None
        self._log = RateLimitedLog()

    def statsd_lines(self, tenant: str, data: bytes, transport: str) -> None:
        """One datagram (or one TCP line batch) of StatsD text."""
        if self.relay is not None:
            self.relay.append(data)
        if self.native is not None:
            self.native.feed(tenant, data, transport)
            self.nudge()
            return
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
            self._log.debug("rejected %s sample (%s): %.200r", transport, reason, samples[i].name)

    def nudge(self) -> None:
        """After StatsD samples were applied: the memory bound may start a flush."""
        if self.bound is not None:
            self.bound.nudge()

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

        With a write-ahead log and `logged` (the request body they came from), nothing is
        applied here: `logged` gets the log entry to append (the body itself, the receive time
        and the positions accepted, so that a replay re-reads exactly those points into the same
        buckets) and the samples to apply once it is on disk, and holds its seq until then.
        Logging the raw body costs no encoding on the hot path.
        """
        if self.wal is None or logged is None:
            rejects = self.aggregator.add_samples(tenant, samples)
            self._count(transport, len(samples) - len(rejects), rejects)
            return rejects
        seq = self.aggregator.next_seq
        now = self.aggregator.clock()
        admitted, rejects, new_series = self.aggregator.admit(tenant, samples, now)
        self._count(transport, 0, rejects)
        if admitted:
            keep = logged.positions
            if rejects:
                refused = {logged.positions[i] for i, _ in rejects}
                keep = [p for p in logged.positions if p not in refused]
            self._hold_for_log(
                logged, tenant, seq, now, None if len(keep) == logged.total else keep, new_series
            )
            logged.admitted = admitted
        return rejects

    def points(
        self,
        tenant: str,
        points: list[Any],
        to_sample: Callable[[Any], Sample],
        transport: str,
        *,
        logged: LoggedBody | None = None,
        reread: Callable[[], list[Any]] | None = None,
    ) -> tuple[list[tuple[int, GatewayError]], list[tuple[int, str]]]:
        """Typed points of a batch: `to_sample(point)` is its sample, or raises the GatewayError
        that names its field. Returns the invalid points (index, error) and those the aggregator
        refused (index, reason), counted here; the rest are applied as samples() applies them
        (with `logged`, once Ingest.commit() says the log holds the body; `reread()` then gives
        the points again from the body, should they have to be judged anew: nothing here keeps
        `points` past the call).

        With the native core, the points go there in one call: the points of series it has
        admitted before are judged and packed in C, every other one by `to_sample` and the
        aggregator's checks, in the batch's order, so the answer is the reference's."""
        native = self.native
        invalid: list[tuple[int, GatewayError]] = []
        if native is None:
            samples: list[Sample] = []
            positions: list[int] = []
            for i, point in enumerate(points):
                try:
                    samples.append(to_sample(point))
                    positions.append(i)
                except GatewayError as e:
                    self.telemetry.reject(transport, "invalid_point")
                    invalid.append((i, e))
            if logged is not None:
                logged.positions = positions
            rejects = self.samples(tenant, samples, transport, logged=logged)
            return invalid, [(positions[j], reason) for j, reason in rejects]
        refused: list[tuple[int, str]] = []
        new_series: list[SeriesKey] = []
        agg = self.aggregator
        seq, now, forgets = agg.next_seq, agg.clock(), agg.registry.forgets

        def judge(i: int, point: Any) -> tuple[int, Sample] | None:
            try:
                sample = to_sample(point)
            except GatewayError as e:
                invalid.append((i, e))
                return None
            answer = agg.admit_one(tenant, sample, now)
            if isinstance(answer, str):
                refused.append((i, answer))
                return None
            sid, fresh = answer
            if fresh:
                new_series.append((tenant, sample.name, sample.tags))
            return sid, sample

        resolved = native.resolve_points(tenant, points, now, judge)
        for _ in invalid:
            self.telemetry.reject(transport, "invalid_point")
        accepted = len(points) - len(invalid) - len(refused)
        if self.wal is None or logged is None:
            if accepted:
                native.apply_points(resolved, now)
            self._count(transport, accepted, refused)
            return invalid, refused
        self._count(transport, 0, refused)
        if accepted:
            dropped = {i for i, _ in invalid}.union(i for i, _ in refused)
            keep = [i for i in range(len(points)) if i not in dropped] if dropped else None
            self._hold_for_log(logged, tenant, seq, now, keep, new_series)
            logged.resolved, logged.accepted, logged.forgets = resolved, accepted, forgets
            logged.reread, logged.to_sample = reread, to_sample
            logged.positions = keep if keep is not None else []
        return invalid, refused

    def _hold_for_log(
        self,
        logged: LoggedBody,
        tenant: str,
        seq: int,
        now: float,
        keep: list[int] | None,
        new_series: list[SeriesKey],
    ) -> None:
        """What samples() and points() accepted of a body: its log entry's header (the body's
        points `keep`, all of them when None, received at `now`, into snapshot `seq`), and the
        hold on `seq` until commit() or abandon()."""
        logged.seq = seq
        logged.header = {
            "k": "body",
            "form": logged.form,
            "tenant": tenant,
            "now": now,
            "keep": keep,
        }
        logged.tenant, logged.received, logged.new_series = tenant, now, new_series
        self.holds.take(seq)

    def _count(self, transport: str, accepted: int, rejects: list[tuple[int, str]]) -> None:
        self.telemetry.accepted[transport] += accepted
        for _, reason in rejects:
            self.telemetry.rejects[(transport, reason)] += 1

    def commit(self, logged: LoggedBody, transport: str = "http") -> None:
        """The log entry is on disk: applies exactly what it holds, into the seq it names."""
        if logged.resolved is not None and logged.seq is not None:
            self._commit_resolved(logged, transport)
            return
        if logged.admitted is None or logged.seq is None:
            return
        samples, logged.admitted = logged.admitted, None
        try:
            late = self.aggregator.add_admitted(logged.tenant, samples, logged.seq, logged.received)
        finally:
            self.holds.give_back(logged.seq)
        # Only a race with the store forgetting a series can refuse a point here; the log holds
        # it, so a restart would count it: say so rather than differ silently.
        for i, reason in late:
            log.error("a logged HTTP point was not applied (%s): %.200r", reason, samples[i].name)
        self._count(transport, len(samples) - len(late), late)

    def _commit_resolved(self, logged: LoggedBody, transport: str) -> None:
        """commit() of what the native core judged: added as packed when its seq is still the
        live interval's and no series was forgotten since; otherwise the points it kept become
        samples again and take the reference's path (add_admitted), which judges them anew."""
        assert self.native is not None and logged.seq is not None
        resolved, logged.resolved = logged.resolved, None
        assert resolved is not None
        agg = self.aggregator
        try:
            if logged.seq == agg.next_seq and agg.registry.forgets == logged.forgets:
                self.native.apply_points(resolved, logged.received)
                self._count(transport, logged.accepted, [])
                return
            assert logged.reread is not None and logged.to_sample is not None
            to_sample, points = logged.to_sample, logged.reread()
            everything = logged.header is None or logged.header["keep"] is None
            kept = range(len(points)) if everything else logged.positions
            samples = [to_sample(points[i]) for i in kept]
            late = agg.add_admitted(logged.tenant, samples, logged.seq, logged.received)
        finally:
            self.holds.give_back(logged.seq)
        for i, reason in late:
            log.error("a logged HTTP point was not applied (%s): %.200r", reason, samples[i].name)
        self._count(transport, len(samples) - len(late), late)

    def abandon(self, logged: LoggedBody) -> None:
        """The log entry could not be written: nothing of it is applied, and the series it
        reserved are released unless another write may have been judged against them."""
        if (logged.admitted is None and logged.resolved is None) or logged.seq is None:
            return
        logged.admitted = logged.resolved = None
        self.holds.give_back(logged.seq)
        if logged.new_series and not self.holds.any():
            in_memory = self.aggregator.keys_in_memory()
            self.aggregator.registry.forget(k for k in logged.new_series if k not in in_memory)

    def replay(self, tenant: str, samples: list[Sample]) -> None:
        """Samples re-read from the write-ahead log: applied whatever their age."""
        saved = self.aggregator.max_backdate
        self.aggregator.max_backdate = math.inf
        try:
            self.aggregator.add_samples(tenant, samples)
        finally:
            self.aggregator.max_backdate = saved
