"""The query engine without HTTP: a plan built by hand, run against a real SQLite store and the
aggregator, answers typed arrays per group (float64 timestamps and values, NaN for no value).

The /v1 JSON answers are proven unchanged by the HTTP tests (test_api, test_tiers,
test_query_columns, test_e2e); here the plan, the engine and its typed results.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from statsd_gateway import sketch
from statsd_gateway.aggregator import IntervalAggregator
from statsd_gateway.api.query_params import parse_query
from statsd_gateway.api.v1_query import query_answer
from statsd_gateway.errors import InvalidArgument, MetricNotFound, QueryTooLarge
from statsd_gateway.model import BucketRow, Matcher, MatchOp, MetricType, Tags
from statsd_gateway.query import (
    AggOp,
    Aggregation,
    Grouping,
    QueryEngine,
    QueryPlan,
    QueryResult,
    Selector,
)
from statsd_gateway.store import SqliteStore
from statsd_gateway.store.base import Store
from statsd_gateway.store.postgresql import PostgresStore
from tests.conftest import T0, ManualClock, make_aggregator, write_rows

# Every test making a store runs on both backends (tests/conftest.py).
STORE_BACKENDS = ("sqlite", "postgresql")

TENANT = "default"
A: Tags = (("env", "prod"), ("host", "a"))
B: Tags = (("env", "dev"), ("host", "b"))
C: Tags = (("host", "c"),)  # no env
UNTIL = T0 + 180.0
TOTAL = Grouping()  # every series in one group


@dataclass
class World:
    store: Store
    aggregator: IntervalAggregator
    engine: QueryEngine
    clock: ManualClock


@pytest.fixture
async def world(
    tmp_path: Path, storage_backend: str, request: pytest.FixtureRequest
) -> AsyncIterator[World]:
    clock = ManualClock(T0 + 125.0)
    store: Store = SqliteStore(tmp_path / "metrics.db", clock=clock)
    if storage_backend == "postgresql":
        store = PostgresStore(request.getfixturevalue("postgres_dsn"), source="gw", clock=clock)
    await store.open()
    aggregator = make_aggregator(clock)
    try:
        yield World(store, aggregator, QueryEngine(store, aggregator), clock)
    finally:
        await store.close()


async def store_rows(world: World, rows: list[BucketRow]) -> None:
    for r in rows:
        world.aggregator.registry.admit(*r.key, r.type, 10**9)
    await write_rows(world.store, rows)


def hits(ts: float, tags: Tags, total: float) -> BucketRow:
    return BucketRow(ts, (TENANT, "hits", tags), MetricType.COUNTER, 1.0, total, total, total)


@pytest.fixture
async def counters(world: World) -> World:
    """hits: a (env=prod) 1, 2 and 4 stored and 64 in memory; b (env=dev) 8 and 16; c (no
    env) 32."""
    await store_rows(
        world,
        [
            hits(T0, A, 1.0),
            hits(T0 + 10, A, 2.0),
            hits(T0 + 60, A, 4.0),
            hits(T0, B, 8.0),
            hits(T0 + 70, B, 16.0),
            hits(T0 + 10, C, 32.0),
        ],
    )
    sample = ("hits", A, MetricType.COUNTER, 64.0, 1.0, T0 + 120.0, False)
    assert world.aggregator.add_samples(TENANT, [sample]) == []
    return world


def plan(
    agg: Aggregation,
    *,
    name: str = "hits",
    matchers: tuple[Matcher, ...] = (),
    window: float | None = None,
    grouping: Grouping = TOTAL,
    start: float = T0,
    until: float = UNTIL,
) -> QueryPlan:
    return QueryPlan(Selector(TENANT, name, matchers), agg, start, until, window, grouping)


def arrays(result: QueryResult) -> list[tuple[Tags, list[float], list[float]]]:
    return [(s.tags, s.timestamps.tolist(), s.values.tolist()) for s in result.series]


async def test_a_plan_answers_arrays_per_group_of_stored_and_memory_rows(counters: World) -> None:
    got = await counters.engine.run(
        plan(Aggregation(AggOp.SUM), window=60.0, grouping=Grouping(("env",)))
    )
    assert got.type is MetricType.COUNTER
    assert arrays(got) == [
        ((), [T0], [32.0]),  # c, without env
        ((("env", "dev"),), [T0, T0 + 60], [8.0, 16.0]),
        ((("env", "prod"),), [T0, T0 + 60, T0 + 120], [3.0, 4.0, 64.0]),  # 64: in memory
    ]
    for s in got.series:
        assert s.timestamps.dtype == np.float64 and s.values.dtype == np.float64


async def test_grouping_without_keys_keeps_the_other_tags(counters: World) -> None:
    got = await counters.engine.run(
        plan(Aggregation(AggOp.COUNT), grouping=Grouping(("env",), without=True))
    )
    assert arrays(got) == [
        ((("host", "a"),), [T0], [4.0]),
        ((("host", "b"),), [T0], [2.0]),
        ((("host", "c"),), [T0], [1.0]),
    ]
    by_all = await counters.engine.run(
        plan(Aggregation(AggOp.COUNT), grouping=Grouping(without=True))
    )
    assert [s.tags for s in by_all.series] == [B, A, C]  # every series alone, ordered by tags


async def test_one_cell_over_the_range_without_a_window(counters: World) -> None:
    total = await counters.engine.run(plan(Aggregation(AggOp.SUM)))
    assert arrays(total) == [((), [T0], [127.0])]
    rate = await counters.engine.run(plan(Aggregation(AggOp.RATE), start=T0 + 5))
    # The cell starts where the range does; the rate divides by the range's length.
    assert arrays(rate) == [((), [T0 + 5], [(2.0 + 4 + 16 + 32 + 64) / (UNTIL - T0 - 5)])]


async def test_matchers_select_stored_and_memory_series_alike(counters: World) -> None:
    not_prod = (Matcher("env", MatchOp.NOT_EQUAL, "prod"),)
    got = await counters.engine.run(plan(Aggregation(AggOp.SUM), matchers=not_prod))
    assert arrays(got) == [((), [T0], [8.0 + 16 + 32])]  # b, and c (no env is "")
    prod = (Matcher("env", MatchOp.REGEX, "pr.*"),)
    got = await counters.engine.run(plan(Aggregation(AggOp.SUM), matchers=prod, window=60.0))
    assert arrays(got) == [((), [T0, T0 + 60, T0 + 120], [3.0, 4.0, 64.0])]
    none = (Matcher("env", MatchOp.EQUAL, "nope"),)
    assert (await counters.engine.run(plan(Aggregation(AggOp.SUM), matchers=none))).series == []


async def test_a_cell_without_a_value_is_nan(world: World) -> None:
    key = (TENANT, "lat", A)
    bins = sketch.bin_values([5.0])
    row = BucketRow(T0, key, MetricType.TIMING, 1.0, 5.0, None, 5.0, sketch=bins)
    await store_rows(world, [row])
    lowest = await world.engine.run(plan(Aggregation(AggOp.MIN), name="lat"))
    assert lowest.series[0].timestamps.tolist() == [T0]
    assert math.isnan(lowest.series[0].values[0])
    highest = await world.engine.run(plan(Aggregation(AggOp.MAX), name="lat"))
    assert arrays(highest) == [((), [T0], [5.0])]


async def test_quantiles_and_averages(world: World) -> None:
    values = [1.0, 2.0, 3.0, 4.0, 100.0]
    key = (TENANT, "lat", A)
    row = BucketRow(
        T0, key, MetricType.TIMING, 5.0, sum(values), 1.0, 100.0, sketch=sketch.bin_values(values)
    )
    await store_rows(world, [row])
    median = await world.engine.run(plan(Aggregation(AggOp.QUANTILE, 0.5), name="lat"))
    estimate = sketch.quantile(sketch.bin_values(values), 0.5)
    assert arrays(median) == [((), [T0], [estimate])]
    top = await world.engine.run(plan(Aggregation(AggOp.QUANTILE, 1.0), name="lat"))
    assert arrays(top) == [((), [T0], [100.0])]  # p100 is the exact max
    mean = await world.engine.run(plan(Aggregation(AggOp.AVG), name="lat"))
    assert arrays(mean) == [((), [T0], [22.0])]
    per_second = await world.engine.run(plan(Aggregation(AggOp.COUNT_RATE), name="lat"))
    assert arrays(per_second) == [((), [T0], [5.0 / 180.0])]


async def test_a_sum_that_overflows_both_ways_is_inf_and_renders_null(world: World) -> None:
    await store_rows(world, [hits(T0, A, math.inf), hits(T0, B, -math.inf)])
    got = await world.engine.run(plan(Aggregation(AggOp.SUM)))
    assert arrays(got) == [((), [T0], [math.inf])]  # an overflow, not "no value"
    spec = parse_query(
        {"name": "hits", "agg": "sum", "since": str(T0), "until": str(UNTIL)}, world.clock(), 100
    )
    answer = json.loads(await query_answer(world.engine, TENANT, spec))
    assert answer["points"] == [{"timestamp": T0, "value": None}]


async def test_the_merged_sketch_of_stored_and_memory_rows(world: World) -> None:
    stored = [1.0, 2.0, 3.0]
    key = (TENANT, "lat", A)
    row = BucketRow(
        T0, key, MetricType.TIMING, 3.0, 6.0, 1.0, 3.0, sketch=sketch.bin_values(stored)
    )
    await store_rows(world, [row])
    world.aggregator.add_samples(
        TENANT, [("lat", B, MetricType.TIMING, 10.0, 1.0, T0 + 120, False)]
    )
    got = await world.engine.merged_sketch(Selector(TENANT, "lat"), T0, UNTIL)
    assert (got.type, got.count, got.sum, got.min, got.max) == (MetricType.TIMING, 4, 16, 1, 10)
    assert sketch.to_proto(got.bins) == sketch.to_proto(sketch.bin_values([*stored, 10.0]))
    only_b = Selector(TENANT, "lat", (Matcher("host", MatchOp.EQUAL, "b"),))
    got = await world.engine.merged_sketch(only_b, T0, UNTIL)
    assert (got.count, got.min, got.max) == (1, 10, 10)
    empty = await world.engine.merged_sketch(Selector(TENANT, "lat"), T0 - 3600, T0 - 60)
    assert empty.count == 0 and math.isnan(empty.min) and math.isnan(empty.max)


async def test_the_engine_refuses_what_no_language_could_run(counters: World) -> None:
    engine = counters.engine
    with pytest.raises(MetricNotFound):
        await engine.run(plan(Aggregation(AggOp.SUM), name="nope"))
    with pytest.raises(InvalidArgument, match="last does not apply to a counter") as err:
        await engine.run(plan(Aggregation(AggOp.LAST)))
    assert err.value.field == "agg"
    with pytest.raises(InvalidArgument, match="multiple of the finest storage tier") as err:
        await engine.run(plan(Aggregation(AggOp.SUM), window=15.0))
    assert err.value.field == "window"
    with pytest.raises(InvalidArgument, match="has no sketch"):
        await engine.merged_sketch(Selector(TENANT, "hits"), T0, UNTIL)


@pytest.mark.parametrize(
    ("mtype", "applies"),
    [
        (MetricType.COUNTER, {"count", "sum", "avg", "min", "max", "rate", "count_rate"}),
        (MetricType.SET, {"count", "count_rate", "distinct"}),
        (
            MetricType.GAUGE,
            {"count", "sum", "avg", "min", "max", "rate", "count_rate", "last", "quantile"},
        ),
        (
            MetricType.TIMING,
            {"count", "sum", "avg", "min", "max", "rate", "count_rate", "quantile"},
        ),
    ],
)
def test_which_aggregations_apply_to_a_type(mtype: MetricType, applies: set[str]) -> None:
    def of(op: AggOp) -> Aggregation:
        return Aggregation(op, 0.5 if op is AggOp.QUANTILE else None)

    assert {op.value for op in AggOp if of(op).applies_to(mtype)} == applies


def test_a_plan_checks_itself() -> None:
    with pytest.raises(ValueError, match="has a q"):
        Aggregation(AggOp.QUANTILE)
    with pytest.raises(ValueError, match="has a q"):
        Aggregation(AggOp.SUM, 0.5)
    with pytest.raises(ValueError, match="lies in"):
        Aggregation(AggOp.QUANTILE, 1.5)
    with pytest.raises(ValueError, match="must not be empty"):
        plan(Aggregation(AggOp.SUM), start=T0, until=T0)
    with pytest.raises(ValueError, match="positive number"):
        plan(Aggregation(AggOp.SUM), window=0.0)
    windowed = plan(Aggregation(AggOp.SUM), start=T0 + 70, window=60.0)
    assert (windowed.read_from, windowed.cell_seconds) == (T0 + 60, 60.0)
    whole = plan(Aggregation(AggOp.SUM), start=T0 + 70)
    assert (whole.read_from, whole.cell_seconds) == (T0 + 70, UNTIL - T0 - 70)


async def test_too_many_sketches_are_refused_naming_the_range_asked_for(world: World) -> None:
    key = (TENANT, "lat", A)
    row = BucketRow(T0, key, MetricType.TIMING, 1.0, 1.0, 1.0, 1.0, sketch=sketch.bin_values([1]))
    await store_rows(world, [row])
    engine = QueryEngine(world.store, world.aggregator, max_sketches=2)
    p99 = Aggregation(AggOp.QUANTILE, 0.99)
    # Read from T0 + 60 (the window bucket holding the start): 12 buckets of 10 s.
    with pytest.raises(QueryTooLarge, match="about 12 bucket sketches") as err:
        await engine.run(plan(p99, name="lat", start=T0 + 70, window=60.0))
    assert "a range shorter than 110s" in str(err.value) and err.value.field == "window"
    with pytest.raises(QueryTooLarge, match="a window that is a multiple of 1h"):
        await engine.merged_sketch(Selector(TENANT, "lat"), T0, UNTIL)
