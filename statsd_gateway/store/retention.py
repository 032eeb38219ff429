"""Retention: buckets older than their tier's retention are deleted on a schedule.

The store deletes in short units (SQLite: one short transaction each on its writer thread), so
flushes interleave with a long cleanup instead of waiting for it, and gives the space back (SQLite:
incremental vacuum), so the database stops growing in steady state. Series without data in any
tier for longer than the longest retention are removed too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from statsd_gateway.config import TierConfig
from statsd_gateway.model import SeriesKey
from statsd_gateway.store.base import Store
from statsd_gateway.telemetry import Telemetry

log = logging.getLogger(__name__)


class RetentionJob:
    """On a schedule, deletes each tier's buckets older than its retention (a coarse tier at most
    once per its resolution) and the series left without data; tells the daemon which series
    went (`forget_series`). A failed run is logged and tried again at the next."""

    def __init__(
        self,
        store: Store,
        tiers: Sequence[TierConfig],
        telemetry: Telemetry,
        *,
        clock: Callable[[], float],
        interval: float,
        forget_series: Callable[[list[SeriesKey]], None],
    ) -> None:
        self.store = store
        self.tiers = tuple(tiers)
        self.telemetry = telemetry
        self.clock = clock
        self.interval = interval
        self.forget_series = forget_series
        self._last_run: dict[float, float] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.run_once()
            except Exception as e:  # the store may be failing: flushes report it; go on
                log.warning("retention run failed, will retry: %s", e)

    async def run_once(self, *, force: bool = False) -> int:
        """Deletes what every tier no longer keeps; a coarse tier is checked at most once per
        its resolution (its buckets age no faster). Returns the rows deleted."""
        now = self.clock()
        total = 0
        for tier in self.tiers:
            res = tier.resolution
            if not force and now - self._last_run.get(res, -1e300) < max(self.interval, res):
                continue
            self._last_run[res] = now
            total += await self.store.delete_expired(res, now - tier.retention)
        if total:
            self.telemetry.retention_deleted_rows += total
            log.info("retention: deleted %d expired bucket rows", total)
        horizon = now - max(t.retention for t in self.tiers)
        stale = await self.store.forget_stale_series(horizon)
        if stale:
            self.forget_series(stale)
            log.info("retention: removed %d series without data", len(stale))
        return total
