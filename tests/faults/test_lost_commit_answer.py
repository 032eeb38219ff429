"""A flush whose commit succeeded but whose answer was lost (the connection dropped during
COMMIT, as a networked database can): the retry finds its seq stored and must keep the rollups
that commit wrote, neither counting a coarse bucket twice nor losing the open one.

Before: the retry's "seq already stored" put the rollups back to their state before the
snapshot, so the minute tier counted a bucket twice and the hour lost the snapshot's points."""

from __future__ import annotations

from aiohttp import ClientSession

from statsd_gateway.config import Config
from statsd_gateway.errors import StoreError
from statsd_gateway.gateway import Gateway
from statsd_gateway.store.base import FlushWrite
from statsd_gateway.store.memory import MemoryStore
from tests.conftest import T0, Api, ManualClock


class AnswerLost(MemoryStore):
    """Commits every write; the one after `lose_next` is set then raises as if its answer
    never arrived."""

    lose_next = False

    async def write_flush(self, flush: FlushWrite, *, trial: bool = False) -> bool:
        stored = await super().write_flush(flush, trial=trial)
        if self.lose_next and not trial:
            self.lose_next = False
            raise StoreError("the connection to the server was lost during COMMIT")
        return stored


async def test_a_lost_commit_answer_neither_doubles_nor_loses_a_rollup(config: Config) -> None:
    clock = ManualClock(T0 + 5)
    store = AnswerLost(resolutions=(10.0, 60.0, 3600.0), clock=clock)
    gw = Gateway(config, clock=clock, flush_on_ticks=False, store=store)
    await gw.start()
    try:
        assert gw.http_address is not None
        async with ClientSession() as session:
            api = Api(session, "http://{}:{}".format(*gw.http_address))
            assert (await api.report({"name": "paid", "type": "counter", "value": 1}))[0] == 200
            clock.advance(60)  # T0+65: the flush completes the first minute
            assert (await api.report({"name": "paid", "type": "counter", "value": 10}))[0] == 200
            store.lose_next = True
            assert not await gw.flusher.flush(force=True)  # committed, answer lost
            assert await gw.flusher.flush(force=True)  # the retry: stored already
            clock.advance(3600)  # past the hour: its rollup completes
            assert await gw.flusher.flush(force=True)
            for window, want in (("1m", [1, 10]), ("1h", [11])):
                status, body = await api.query(
                    name="paid", agg="sum", window=window, since=str(int(T0)),
                    until=str(int(T0 + 3600)),
                )  # fmt: skip
                assert status == 200, body
                assert [p["value"] for p in body["points"]] == want, window
    finally:
        await gw.stop()
