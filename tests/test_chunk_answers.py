"""The differential test of the chunk store: random points, with gaps and late ones, driven
through the real pipeline (IntervalAggregator → Flusher + TierRollup → SqliteStore on a file,
sealed into chunks and restarted at random moments), give the same answers from the QueryEngine
as plain Python computes from the raw points.

Values are multiples of 1/4 and weights powers of two, so every sum is exact in any order:
count, sum, min, max, avg and last must be equal, not close. The sketch merge is exact too, so a
quantile must be bit-identical to the sketch of the cell's raw values (clamped into the cell's
[min, max], as the engine does). A set's distinct count is compared with the exact count (a
universe of 30 members, within what the HyperLogLog counts exactly).

The range starts 2 h before a multiple of 6 h, so the minute tier seals one chunk window too.
The test ends by asserting that the situations it is about (reads of chunks with head rows
beside them in both tiers, restarts after a seal) did occur in some runs: they do in the 60
derandomized examples; CHUNK_ANSWERS_EXAMPLES runs more.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import random
import sqlite3
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from statsd_gateway import sketch
from statsd_gateway.aggregator import IntervalAggregator
from statsd_gateway.flusher import Flusher
from statsd_gateway.model import FUTURE_MAX_SECONDS, MetricType, Sample, Tags
from statsd_gateway.query import AggOp, Aggregation, Grouping, QueryEngine, QueryPlan, Selector
from statsd_gateway.query.result import QueryResult
from statsd_gateway.series_registry import SeriesRegistry
from statsd_gateway.store import SqliteStore
from statsd_gateway.store.chunks import chunk_span
from statsd_gateway.store.rollup import TierRollup
from statsd_gateway.telemetry import Telemetry
from tests.conftest import T0, ManualClock

TENANT = "default"
RES = (10.0, 60.0, 3600.0)
METRICS: dict[str, MetricType] = {
    "lat": MetricType.TIMING,
    "hits": MetricType.COUNTER,
    "temp": MetricType.GAUGE,
    "users": MetricType.SET,
}
# host b has two series: grouping by host merges them.
SERIES: list[Tags] = [
    (("host", "a"),),
    (("host", "b"),),
    (("host", "b"), ("shard", "2")),
    (("host", "c"),),
]
BEGIN = T0
SPAN = 3 * 3600 + 1200  # three whole hours of the finest tier's chunk windows, and 20 minutes
BUCKETS = int(SPAN // 10)
LATE_MAX = 5400  # how late a late point may be sent (seconds)
AHEAD_MAX = int(FUTURE_MAX_SECONDS) - 10  # how far ahead of the clock a point may be stamped
assert (BEGIN + 7200) % chunk_span(60.0) == 0  # the minute tier's window ends inside the range
assert BEGIN % chunk_span(10.0) == 0

MEMBERS = 30
BURST_LENGTHS = (1, 6, 30, 120)  # in buckets: one bucket, a minute, five, twenty

WINDOWS: tuple[float | None, ...] = (None, 10.0, 60.0, 3600.0)
GROUPINGS = (Grouping(), Grouping(("host",)))
NUMERIC = [Aggregation(op) for op in (AggOp.COUNT, AggOp.SUM, AggOp.MIN, AggOp.MAX, AggOp.AVG)]
QUANTILES = [Aggregation(AggOp.QUANTILE, 0.5), Aggregation(AggOp.QUANTILE, 0.99)]
AGGREGATIONS: dict[MetricType, list[Aggregation]] = {
    MetricType.TIMING: NUMERIC + QUANTILES,
    MetricType.COUNTER: NUMERIC,
    MetricType.GAUGE: [*NUMERIC, Aggregation(AggOp.LAST), *QUANTILES],
    MetricType.SET: [Aggregation(AggOp.COUNT), Aggregation(AggOp.DISTINCT)],
}

EXAMPLES = settings(
    max_examples=int(os.environ.get("CHUNK_ANSWERS_EXAMPLES", "60")),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass(frozen=True, slots=True)
class Point:
    """One observation: what is sent (`value` a set's member, or a number), at what client
    timestamp, and when it arrives (`sent`: the clock then)."""

    metric: str
    series: int
    value: float | str
    rate: float
    ts: float
    sent: float

    @property
    def weight(self) -> float:
        return 1.0 if METRICS[self.metric] in (MetricType.GAUGE, MetricType.SET) else 1 / self.rate

    def sample(self) -> Sample:
        return Sample(
            self.metric, SERIES[self.series], METRICS[self.metric], self.value, self.rate,
            self.ts, False,
        )  # fmt: skip


# Which windows and groupings one check of the answers asks about (every aggregation of every
# metric for each): a few of the eight at each check, drawn, so that a run stays short.
Views = list[tuple[float | None, Grouping]]
VIEWS: Views = list(itertools.product(WINDOWS, GROUPINGS))


@dataclass(frozen=True, slots=True)
class Scenario:
    """The points in the order they arrive; what happens when (flush, seal, restart, each at a
    flush tick); the range the queries ask about, and what each of the three checks asks: in
    the middle (at the first flush after which head rows wait beside a chunk, else after event
    `check_at`, in the second half), after the final flush, and after the final seal."""

    points: list[Point]
    events: list[tuple[float, str]]
    start: float
    until: float
    check_at: int
    views: tuple[Views, Views, Views]


def uniform(draw: st.DrawFn) -> random.Random:
    """A generator of uniform positions (of points, bursts and ticks) seeded by hypothesis: its
    own integers favour the low end of a range, which would crowd every run into its first
    minutes."""
    return random.Random(draw(st.integers(0, 2**32 - 1)))


@st.composite
def points_in(draw: st.DrawFn, bursts: Sequence[tuple[int, int]]) -> Point:
    first, length = draw(st.sampled_from(bursts))
    where = uniform(draw)
    bucket = min(first + where.randrange(length), BUCKETS - 1)
    metric = draw(st.sampled_from(sorted(METRICS)))
    series = draw(st.integers(0, len(SERIES) - 1))
    # Half-seconds, each series on its own eighth: timestamps of one series may be equal (a
    # gauge's last is then the later point), of two series never (no tie between series).
    ts = BEGIN + bucket * 10 + draw(st.integers(0, 19)) * 0.5 + series * 0.125
    mtype = METRICS[metric]
    value: float | str
    rate = 1.0
    if mtype is MetricType.SET:
        value = f"u{draw(st.integers(0, MEMBERS - 1))}"
    else:
        value = draw(st.integers(-400, 40_000)) / 4
        if mtype is MetricType.COUNTER:
            rate = draw(st.sampled_from((1.0, 1.0, 0.5, 0.25)))
        elif mtype is MetricType.TIMING:
            rate = draw(st.sampled_from((1.0, 1.0, 0.5)))
    # On time (within its bucket or the next), late, or ahead: from a client whose clock runs
    # fast, as far ahead as the aggregator takes (its bucket is in the head before the flush
    # boundary, and the rollups, have passed it).
    when = draw(st.sampled_from(("now", "now", "now", "now", "now", "late", "late", "ahead")))
    delay = {"now": where.randint(0, 9), "late": where.randint(60, LATE_MAX),
             "ahead": -where.randint(1, AHEAD_MAX)}[when]  # fmt: skip
    return Point(metric, series, value, rate, ts, max(ts + delay, BEGIN))


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    # Points come in bursts, so that buckets, minutes and whole hours are left empty; one burst
    # in the first hour and one past the second, so that the final seal always has a window.
    where = uniform(draw)
    lengths = st.sampled_from(BURST_LENGTHS)
    bursts = [(where.randint(0, 200), draw(lengths))]
    bursts += [(where.randrange(BUCKETS), draw(lengths)) for _ in range(draw(st.integers(0, 4)))]
    # Around some hours' ends, points stamped ahead into the next hour and, before the hour is
    # over, a seal and a restart: the window still being filled, open minutes of it in the
    # rollups, must answer the same whatever is sealed.
    hour_ends = [where.randint(1, 3) * 3600 for _ in range(draw(st.integers(1, 2)))]
    bursts += [(int(end // 10) - 60, 120) for end in hour_ends]
    bursts.append((where.randint(720, BUCKETS - 1), draw(lengths)))
    points = [draw(points_in(bursts[:1])), draw(points_in(bursts[-1:]))]
    # Sizes drawn as numbers: a list strategy would keep most lists short.
    points += [draw(points_in(bursts)) for _ in range(draw(st.integers(30, 160)))]
    order = sorted(range(len(points)), key=lambda i: (points[i].sent, i))
    # Every event is a flush tick; after some the store seals; after a few the daemon restarts
    # (and at one in the last minutes of each of those hours).
    ticks = where.sample(range(1, (SPAN + LATE_MAX) // 10), draw(st.integers(4, 30)))
    steps = [draw(st.sampled_from(("flush", "flush", "seal"))) for _ in ticks]
    for i in where.sample(range(len(ticks)), min(draw(st.integers(0, 3)), len(ticks))):
        steps[i] += "+restart"
    for end in hour_ends:
        ticks += [(end - where.randint(1, AHEAD_MAX // 10) * 10) // 10]
        steps += ["seal+restart"]
    events = sorted(zip((BEGIN + 10.0 * t for t in ticks), steps, strict=True))
    start_bucket = draw(st.one_of(st.just(0), st.integers(0, BUCKETS - 1)))
    until_bucket = draw(st.one_of(st.just(BUCKETS), st.integers(start_bucket + 1, BUCKETS)))
    views = st.lists(st.sampled_from(VIEWS), min_size=2, max_size=2, unique=True)
    return Scenario(
        [points[i] for i in order], events, BEGIN + 10.0 * start_bucket,
        BEGIN + 10.0 * until_bucket, draw(st.integers(len(events) // 2, len(events) - 1)),
        (draw(views), draw(views), draw(views)),
    )  # fmt: skip


class Pipeline:
    """The daemon's write path as gateway.py builds it, on the file at `path`: open() is a
    start (the registry seeded from the store, the rollups rebuilt), close() a stop (a final
    flush)."""

    def __init__(self, path: Path, clock: ManualClock) -> None:
        self.path = path
        self.clock = clock

    async def open(self) -> None:
        self.store = SqliteStore(self.path, resolutions=RES, clock=self.clock)
        stored = await self.store.open()
        registry = SeriesRegistry()
        for info in stored.series:
            registry.seed(info.id, (info.tenant, info.name, info.tags), info.type)
        self.aggregator = IntervalAggregator(
            interval=RES[0], clock=self.clock, registry=registry, max_series_per_tenant=10**6,
            max_backdate=LATE_MAX + 600.0, first_seq=stored.flushed_seq + 1,
        )  # fmt: skip
        self.aggregator.restore_gauges(stored.gauges)
        self.flusher = Flusher(
            self.aggregator, self.store, Telemetry(), clock=self.clock,
            rollup=TierRollup(RES, stored.complete_until),
        )  # fmt: skip
        await self.flusher.rebuild_rollups()
        self.engine = QueryEngine(self.store, self.aggregator)

    async def flush(self) -> None:
        assert await self.flusher.flush(), self.flusher.last_error

    async def close(self) -> None:
        assert await self.flusher.flush(force=True), self.flusher.last_error
        self.flusher.close()
        await self.store.close()


def store_state(path: Path) -> Counter[str]:
    """What the file holds, read beside the store: the chunks of the finest and minute tiers,
    and the head rows that wait beside a chunk of their window (merged at read until the next
    seal merges them into it)."""
    conn = sqlite3.connect(path)
    try:
        out: Counter[str] = Counter()
        for res in (10, 60):
            span = chunk_span(float(res))
            (out[f"chunks_{res}s"],) = conn.execute(
                f"SELECT count(*) FROM chunks_{res}s"
            ).fetchone()
            (out[f"beside_{res}s"],) = conn.execute(
                f"SELECT count(*) FROM points_{res}s p JOIN chunks_{res}s c "
                f"ON c.series_id = p.series_id AND c.start = CAST(p.ts / ? AS INTEGER) * ?",
                (span, span),
            ).fetchone()
        return out
    finally:
        conn.close()


# -- the answers from the raw points -----------------------------------------------------------


def cell_value(agg: Aggregation, points: list[Point]) -> float:
    """`agg` over one cell's points (in the order they arrived)."""
    op = agg.op
    if op is AggOp.DISTINCT:
        return float(len({p.value for p in points}))
    count = sum(p.weight for p in points)
    if op is AggOp.COUNT:
        return count
    values = [float(p.value) for p in points]
    total = sum(v * p.weight for v, p in zip(values, points, strict=True))
    if op is AggOp.SUM:
        return total
    if op is AggOp.AVG:
        return total / count
    if op is AggOp.MIN:
        return min(values)
    if op is AggOp.MAX:
        return max(values)
    if op is AggOp.LAST:  # the latest timestamp; of equal ones, the point that arrived last
        latest = max(range(len(points)), key=lambda i: (points[i].ts, i))
        return values[latest]
    assert op is AggOp.QUANTILE and agg.q is not None
    bins = sketch.bin_values(values, [p.weight for p in points])
    estimate = sketch.quantile(bins, agg.q)
    assert estimate is not None
    return min(max(estimate, min(values)), max(values))


def expected(plan: QueryPlan, points: list[Point]) -> list[tuple[Tags, list[float], list[float]]]:
    """The plan's answer computed from the raw points: each point in its 10 s bucket, each
    bucket read if it lies in [read_from, until), in the cell of its window."""
    w = plan.window
    cells: dict[tuple[Tags, float], list[Point]] = {}
    for p in points:
        if p.metric != plan.selector.name:
            continue
        bucket = math.floor(p.ts / RES[0]) * RES[0]
        if not plan.read_from <= bucket < plan.until:
            continue
        cell = math.floor(bucket / w) * w if w else plan.start
        group = plan.grouping.group_of(SERIES[p.series])
        cells.setdefault((group, cell), []).append(p)
    out: dict[Tags, tuple[list[float], list[float]]] = {}
    for group, cell in sorted(cells):
        stamps, values = out.setdefault(group, ([], []))
        stamps.append(cell)
        values.append(cell_value(plan.aggregation, cells[(group, cell)]))
    return [(g, ts, v) for g, (ts, v) in out.items()]


def answered(result: QueryResult) -> list[tuple[Tags, list[float], list[float]]]:
    return [(s.tags, s.timestamps.tolist(), s.values.tolist()) for s in result.series]


# -- the run -----------------------------------------------------------------------------------


async def check_answers(
    pipeline: Pipeline, case: Scenario, sent: int, views: Views, when: str
) -> None:
    """Every aggregation of every metric in each of `views`, against the answers computed from
    the first `sent` points."""
    points = case.points[:sent]
    names = {p.metric for p in points}
    plans = [
        QueryPlan(Selector(TENANT, name), agg, case.start, case.until, window, grouping)
        for name, mtype in METRICS.items()
        if name in names
        for (window, grouping), agg in itertools.product(views, AGGREGATIONS[mtype])
    ]
    results = await asyncio.gather(*(pipeline.engine.run(plan) for plan in plans))
    for plan, result in zip(plans, results, strict=True):
        assert answered(result) == expected(plan, points), f"{when}: {plan}"


async def run_scenario(path: Path, case: Scenario, seen: Counter[str]) -> None:
    """Drives the scenario through a pipeline on `path`, checking the answers thrice; counts in
    `seen` the situations the checks and restarts met."""
    clock = ManualClock(BEGIN)
    pipeline = Pipeline(path, clock)
    await pipeline.open()
    sent = 0
    sealed = checked = False
    middle, final, sealed_views = case.views

    def send(until: float) -> None:
        nonlocal sent
        while sent < len(case.points) and case.points[sent].sent <= until:
            p = case.points[sent]
            clock.t = p.sent
            assert pipeline.aggregator.add_samples(TENANT, [p.sample()]) == []
            sent += 1

    async def check(views: Views, when: str) -> Counter[str]:
        state = store_state(path)
        seen["checks reading chunks"] += state["chunks_10s"] > 0
        seen["checks reading head rows beside a 10s chunk"] += state["beside_10s"] > 0
        seen["checks reading head rows beside a 1m chunk"] += state["beside_60s"] > 0
        await check_answers(pipeline, case, sent, views, when)
        return state

    try:
        for i, (at, what) in enumerate(case.events):
            send(at)
            clock.t = at
            await pipeline.flush()
            if not checked:
                state = store_state(path)
                if i >= case.check_at or state["beside_10s"] + state["beside_60s"]:
                    checked = True
                    await check(middle, "in the middle")
            if "seal" in what:
                sealed = await pipeline.store.seal_chunks() > 0 or sealed
            if "restart" in what:
                seen["restarts after a seal"] += sealed
                await pipeline.close()
                await pipeline.open()
        send(math.inf)
        clock.t += 10.0
        await pipeline.flush()
        await check(final, "after the final flush")
        await pipeline.store.seal_chunks()
        state = await check(sealed_views, "after the final seal")
        assert state["chunks_10s"] > 0  # those answers were read from chunks
        assert state["beside_10s"] == state["beside_60s"] == 0  # the seal merged every one
        seen["runs with a 1m chunk"] += state["chunks_60s"] > 0
    finally:
        await pipeline.close()


def test_answers_from_chunks_equal_answers_from_the_raw_points(tmp_path: Path) -> None:
    seen: Counter[str] = Counter()
    runs = itertools.count()

    @EXAMPLES
    @given(scenarios())
    def check(case: Scenario) -> None:
        note(f"{case!r}")  # hypothesis does not print this composite's example itself
        asyncio.run(run_scenario(tmp_path / f"run{next(runs)}.db", case, seen))

    check()
    # What the test is about did happen, in some of the runs at least.
    for what in (
        "checks reading chunks",
        "checks reading head rows beside a 10s chunk",
        "checks reading head rows beside a 1m chunk",
        "restarts after a seal",
        "runs with a 1m chunk",
    ):
        assert seen[what] > 0, (what, dict(seen))
