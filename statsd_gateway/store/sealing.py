"""Sealing: on a schedule, the store moves every complete bucket from its tiers' heads into
compressed chunks (store/chunks.py; SQLite: sqlite_chunks.py), the open window's a step of 10
minutes at a time (its chunk rewritten at each step).

It runs every flush interval, so each tier's head holds about one step of buckets plus what has
just been flushed; after an upgrade from the row layout, or after a
back-fill, the first runs convert the history in short units, flushes interleaving. Answers do
not change with sealing: a read takes the head and the chunks alike. A failed run is logged and
tried again at the next; the rows stay in the head meanwhile, readable as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from statsd_gateway.store.base import Store
from statsd_gateway.telemetry import Telemetry

log = logging.getLogger(__name__)

# A run that seals at least this many buckets says so at info (a conversion, a back-fill, the
# hourly window of a large daemon); smaller ones at debug.
_LOUD = 100_000


class SealJob:
    """Every `interval` seconds, `store.seal_chunks()`; counts what it moved in
    `sealed_buckets_total`. `alive` is False once its task has died (readiness shows it).

    A run is put off while a back-fill is arriving (the memory bound started a flush since the
    last run): sealing then would rewrite the same windows' chunks again and again as their
    buckets keep coming, on the core the import needs; the windows are sealed once it stops."""

    def __init__(self, store: Store, telemetry: Telemetry, *, interval: float) -> None:
        self.store = store
        self.telemetry = telemetry
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._pressure_seen = telemetry.pressure_flushes

    @property
    def alive(self) -> bool:
        return self._task is None or not self._task.done()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="seal-chunks")

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
                log.warning("sealing chunks failed, will retry: %s", e)

    def _count(self, n: int) -> None:
        # Unit by unit, so that a long conversion shows its progress in the counter.
        self.telemetry.sealed_buckets += n

    async def run_once(self, *, force: bool = False) -> int:
        """Seals every complete bucket (unless a back-fill is arriving and not `force`);
        returns the buckets moved into chunks."""
        pressure, self._pressure_seen = self._pressure_seen, self.telemetry.pressure_flushes
        if not force and self._pressure_seen != pressure:
            log.debug("sealing put off: a back-fill is arriving")
            return 0
        began = time.monotonic()
        n = await self.store.seal_chunks(self._count)
        if n:
            level = logging.INFO if n >= _LOUD else logging.DEBUG
            log.log(level, "sealed %d buckets into chunks in %.1fs", n, time.monotonic() - began)
        return n
