"""PromqlService: a PromQL text and its steps → a value, for a tenant, within a deadline.

The expression is parsed on the loop (a syntax error answers at once), then evaluated on a
worker thread of the service's own pool (`workers` at a time): the evaluation waits there on
each read it makes, while the store reads on its own threads and the loop copies what memory
holds; so an evaluation never occupies the event loop, and never takes the default executor's
threads that the reads themselves need. Past `timeout` the caller gets QueryTimeout and the
evaluation stops at its next check.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Sequence

import numpy as np

from statsd_gateway.errors import StoreTimeout
from statsd_gateway.model import Matcher, MetricType, Tags
from statsd_gateway.promql.cells import Tier
from statsd_gateway.promql.evaluate import Evaluator, Steps
from statsd_gateway.promql.names import NameIndex
from statsd_gateway.promql.selection import Source
from statsd_gateway.promql.syntax import Node, parse
from statsd_gateway.promql.values import Value
from statsd_gateway.query import QueryEngine, Selector
from statsd_gateway.query.reduce import QueryRows


class PromqlService:
    def __init__(
        self,
        engine: QueryEngine,
        tiers: Sequence[tuple[float, float]],
        *,
        timeout: float,
        workers: int = 2,
    ) -> None:
        self.engine = engine
        self.tiers = tuple(Tier(r, k) for r, k in tiers)
        self.timeout = timeout
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="promql")
        self._indexes: dict[str, NameIndex] = {}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def index(self, tenant: str) -> NameIndex:
        """The tenant's names, escaped; rebuilt when its metrics changed (on the loop)."""
        types = {
            n: t
            for (ten, n), t in list(self.engine.aggregator.registry.types.items())
            if ten == tenant
        }
        have = self._indexes.get(tenant)
        if have is None or have.types != types:
            have = self._indexes[tenant] = NameIndex(types)
        return have

    def series_tags(self, tenant: str, name: str) -> Sequence[Tags]:
        return list(self.engine.aggregator.registry.series_of(tenant, name))

    def metric_type(self, tenant: str, name: str) -> MetricType | None:
        return self.engine.aggregator.registry.types.get((tenant, name))

    async def evaluate(self, tenant: str, text: str, steps: Steps, now: float) -> Value:
        """The value of `text` at every step (see the module)."""
        node = parse(text)
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.timeout
        stop = threading.Event()

        def check() -> None:
            if stop.is_set() or time.monotonic() > deadline:
                raise StoreTimeout(f"the query ran past query.timeout ({self.timeout:g}s)")

        def read(
            name: str, matchers: tuple[Matcher, ...], start: float, until: float, g: float,
            values: tuple[str, ...], sketches: bool, by_series: bool,
        ) -> QueryRows:  # fmt: skip
            check()
            rows = self.engine.read_rows(
                Selector(tenant, name, matchers), start, until, g, values=values,
                sketches=sketches, by_series=by_series,
            )  # fmt: skip
            future = asyncio.run_coroutine_threadsafe(rows, loop)
            try:
                return future.result(max(deadline - time.monotonic(), 0.0))
            except concurrent.futures.TimeoutError:
                future.cancel()
                raise StoreTimeout(
                    f"the query ran past query.timeout ({self.timeout:g}s)"
                ) from None

        source = Source(
            read, lambda name: self.series_tags(tenant, name), self.tiers, self.index(tenant), now
        )
        job = loop.run_in_executor(self._pool, _evaluate, Evaluator(source, steps, check), node)
        try:
            return await asyncio.wait_for(
                asyncio.shield(job), max(deadline - time.monotonic(), 0.0)
            )
        except TimeoutError:
            stop.set()
            raise StoreTimeout(f"the query ran past query.timeout ({self.timeout:g}s)") from None


def _evaluate(evaluator: Evaluator, node: Node) -> Value:
    with np.errstate(all="ignore"):
        return evaluator.eval(node)
