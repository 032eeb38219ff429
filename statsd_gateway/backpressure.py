"""The bound on what the points in memory may take: `storage.backfill_memory`.

Points of the current interval and back-dated points alike wait in memory until a flush; a
client back-filling a day of history would otherwise hold the whole day there. The aggregator
estimates what its live interval and pending snapshots take (`memory_bytes()`); past the bound:

- HTTP: at half the bound a flush is started early (a "pressure flush": swap, write every
  pending snapshot, as a tick does); at the bound, before a body is applied, the request waits
  for it, so a client sending faster than the store writes is slowed down instead of growing
  memory. The back-dated buckets
  reach the store in batches, merged into the rows already there.
- UDP never waits: past the bound the flush is started and the datagram applied at once.
- The store failing (a flush failed and its backoff has not run out, or the pressure flush
  fails): HTTP writes are refused with 503 UNAVAILABLE before anything of them is applied, so a
  retry later loses and doubles nothing. UDP goes on into memory; at each tick the existing
  `aggregation.max_pending_rows` bound drops the oldest pending snapshots and counts them.

The bound holds to within one batch per concurrent HTTP writer (requests that waited for the
same flush all go ahead when it ends).
"""

from __future__ import annotations

import asyncio
import logging

from statsd_gateway.aggregator import IntervalAggregator
from statsd_gateway.errors import Unavailable
from statsd_gateway.flusher import Flusher
from statsd_gateway.snapshot import ENTRY_BYTES, VALUE_BYTES
from statsd_gateway.telemetry import Telemetry

log = logging.getLogger(__name__)


class MemoryBound:
    """Holds what the points in memory take under `limit` (see the module's rules): nudged after
    every UDP batch, awaited before every HTTP body is applied."""

    def __init__(
        self,
        aggregator: IntervalAggregator,
        flusher: Flusher,
        telemetry: Telemetry,
        *,
        limit: int,
    ) -> None:
        self.aggregator = aggregator
        self.flusher = flusher
        self.telemetry = telemetry
        self.limit = limit
        self._flush: asyncio.Task[bool] | None = None

    async def make_room(self, points: int) -> None:
        """Before an HTTP body of `points` points is applied: waits for a pressure flush if
        they could take the memory past the bound; raises Unavailable if the store cannot take
        what memory holds."""
        need = points * (ENTRY_BYTES + VALUE_BYTES)  # the most they can add
        held = self.aggregator.memory_bytes()
        if held + need <= self.limit:
            if held + need > self.limit // 2 and not self.flusher.backing_off:
                # Half way: start the flush now, so ingest goes on while it writes and only
                # waits if the bound is reached before it is done.
                self._start()
            return
        written = not self.flusher.backing_off and await asyncio.shield(self._start())
        if not written and self.aggregator.memory_bytes() + need > self.limit:
            raise Unavailable(
                "the points in memory are at storage.backfill_memory and the store is not "
                f"taking them ({self.flusher.last_error}); nothing of this request was applied, "
                "retry later"
            )

    def nudge(self) -> None:
        """After UDP samples were applied: past the bound, starts a flush without waiting."""
        if self.aggregator.memory_bytes() > self.limit and not self.flusher.backing_off:
            self._start()

    async def drain(self) -> None:
        """Waits for a pressure flush in progress (before the final flush at stop)."""
        if self._flush is not None:
            await asyncio.wait([self._flush])

    def _start(self) -> asyncio.Task[bool]:
        """The pressure flush in progress, or a new one: concurrent writers share one."""
        if self._flush is None or self._flush.done():
            self.telemetry.pressure_flushes += 1
            self._flush = asyncio.create_task(self.flusher.flush(), name="pressure-flush")
            self._flush.add_done_callback(_log_failure)
        return self._flush


def _log_failure(task: asyncio.Task[bool]) -> None:
    # Retrieved here, so a task nobody awaited (UDP's) never raises into the event loop.
    if not task.cancelled() and (e := task.exception()) is not None:
        log.error("pressure flush failed: %s: %s", type(e).__name__, e)
