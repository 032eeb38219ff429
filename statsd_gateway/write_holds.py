"""The seqs HTTP writes have logged points for and not yet applied: the hand-off between the
ingest (which takes a seq when it logs a body and gives it back once the points are applied)
and the flusher (which writes no snapshot while a write holds its seq)."""

from __future__ import annotations

import asyncio


class WriteHolds:
    """Seqs that HTTP writes have logged points for and not yet applied. The flusher writes no
    snapshot while a write holds its seq: the points must land in the snapshot the log entry
    names before that snapshot is written and its log segment released."""

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}
        self._waiters: dict[int, list[asyncio.Future[None]]] = {}

    def take(self, seq: int) -> None:
        self._counts[seq] = self._counts.get(seq, 0) + 1

    def give_back(self, seq: int) -> None:
        n = self._counts[seq] - 1
        if n:
            self._counts[seq] = n
            return
        del self._counts[seq]
        for w in self._waiters.pop(seq, ()):
            if not w.done():
                w.set_result(None)

    def any(self) -> bool:
        return bool(self._counts)

    def held(self, seq: int) -> bool:
        return seq in self._counts

    async def settled(self, seq: int, timeout: float) -> bool:
        """True once no write holds `seq` (at once if none does); False after `timeout`."""
        if seq not in self._counts:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(seq, []).append(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            return False
        return True
