"""Failures of the store reach a client as errors of the one tree (errors.py): 503 UNAVAILABLE
with a message that says what happened and what to do, never `500 internal error`. Against the
real aiohttp app on a real port, with real SQLite files."""

from __future__ import annotations

from pathlib import Path

from statsd_gateway.errors import GatewayError, StoreError, StoreGone, StoreTimeout, Unavailable
from statsd_gateway.store import StoreError as StoreErrorOfTheStore
from statsd_gateway.store.sqlite import StoreTimeout as StoreTimeoutOfSqlite
from tests.conftest import T0, ManualClock, make_config, remove_tree, running
from tests.test_api import assert_error

SINCE = int(T0 - 3600)
UNTIL = int(T0 + 60)


async def test_a_query_past_query_timeout_is_503_saying_how_to_narrow_it(
    tmp_path: Path, clock: ManualClock
) -> None:
    # 1e-9 s: the first time SQLite's progress handler looks (every 10,000 instructions), the
    # read is past its limit; a few thousand stored rows take it there.
    config = make_config(tmp_path, query={"timeout": 1e-9})
    async with running(config, clock) as (gw, api):
        points = [
            {"name": "slow", "type": "counter", "value": 1, "tags": {"host": f"h{i}"}}
            for i in range(3000)
        ]
        status, body = await api.batch(points)
        assert (status, body["accepted"]) == (200, 3000), body
        assert await gw.flusher.flush()
        status, body = await api.query(name="slow", agg="sum", since=SINCE, until=UNTIL)
        assert_error(status, body, 503, "UNAVAILABLE")
        message = body["error"]["message"]
        assert "longer than 1e-09s" in message
        for how in ("since", "until", "window", "tags"):
            assert how in message, message
        # A time limit is not an outage: flushing goes on, and readiness says nothing of it.
        assert gw.readiness() == []
        gw.store.read_timeout = 10.0
        status, body = await api.query(name="slow", agg="sum", since=SINCE, until=UNTIL)
        assert status == 200, body
        assert body["points"][0]["value"] == 3000


async def test_a_store_that_cannot_be_read_is_503_naming_the_store(
    tmp_path: Path, clock: ManualClock
) -> None:
    config = make_config(tmp_path)
    async with running(config, clock) as (gw, api):
        await api.report({"name": "r", "type": "counter", "value": 1})
        assert await gw.flusher.flush()
        remove_tree(Path(config.storage.path).parent)
        clock.advance(10)
        assert not await gw.flusher.flush()  # the writer notices: the store is gone
        status, body = await api.query(name="r", agg="sum", since=SINCE, until=UNTIL)
        assert_error(status, body, 503, "UNAVAILABLE")
        assert body["error"]["message"].startswith("the store is unavailable: "), body


def test_store_errors_are_503s_of_the_tree_wherever_they_are_imported_from() -> None:
    assert issubclass(StoreError, Unavailable) and issubclass(Unavailable, GatewayError)
    assert issubclass(StoreTimeout, StoreError) and issubclass(StoreGone, StoreError)
    assert StoreErrorOfTheStore is StoreError and StoreTimeoutOfSqlite is StoreTimeout
    e = StoreError("write failed: disk I/O error")
    assert (e.status, e.code) == (503, "UNAVAILABLE")
    assert str(e) == "write failed: disk I/O error"  # the store's words, for logs and /readyz
