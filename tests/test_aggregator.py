"""IntervalAggregator: buckets, per-type aggregates, rejects, series ids, and the swap / read in
memory / release cycle."""

from __future__ import annotations

import math

import numpy as np
import pytest

from statsd_gateway import sketch
from statsd_gateway.aggregator import IntervalAggregator
from statsd_gateway.model import STATSD_TYPES, BucketRow, MetricType, RowBatch, Sample, SeriesKey
from statsd_gateway.protocol import StatsdParser
from statsd_gateway.series_registry import SeriesRegistry
from tests.conftest import T0, ManualClock

# IntervalAggregator and the parser alone (no Gateway: no native live source behind the
# aggregator), the same in both passes: skipped in the pure-Python one (tests/conftest.py).
pytestmark = pytest.mark.same_in_both_passes

HOUR = 3600.0


def make_aggregator(
    clock: ManualClock,
    *,
    interval: float = 10.0,
    registry: SeriesRegistry | None = None,
    max_series: int = 1000,
    max_backdate: float = HOUR,
    first_seq: int = 1,
) -> IntervalAggregator:
    return IntervalAggregator(
        interval=interval,
        clock=clock,
        registry=registry if registry is not None else SeriesRegistry(),
        max_series_per_tenant=max_series,
        max_backdate=max_backdate,
        first_seq=first_seq,
    )


def feed(agg: IntervalAggregator, datagram: bytes, tenant: str = "default") -> list[str]:
    """Parses a datagram (which must be valid StatsD) into the aggregator; returns its rejects."""
    parsed = StatsdParser().parse(datagram)
    assert parsed.rejects == []
    return [reason for _, reason in agg.add_samples(tenant, parsed.samples)]


def flush(agg: IntervalAggregator) -> dict[tuple[float, SeriesKey], BucketRow]:
    """swap() + snapshot_rows(), keyed by (bucket, (tenant, name, tags))."""
    rows = agg.snapshot_rows(agg.swap()).rows()
    out = {(r.ts, r.key): r for r in rows}
    assert len(out) == len(rows)
    return out


def only_row(agg: IntervalAggregator) -> BucketRow:
    rows = list(flush(agg).values())
    assert len(rows) == 1, rows
    return rows[0]


def sketch_count(b: sketch.Bins) -> float:
    return float(b.pos_counts.sum() + b.neg_counts.sum() + b.zero)


# --- buckets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("interval", "offset", "bucket"),
    [
        pytest.param(10.0, 0.0, 0.0, id="on the boundary"),
        pytest.param(10.0, 9.999, 0.0, id="just before the next boundary"),
        pytest.param(10.0, 10.0, 10.0, id="next boundary"),
        pytest.param(60.0, 59.0, 0.0, id="one minute interval"),
        pytest.param(60.0, 125.0, 120.0, id="one minute interval third bucket"),
        pytest.param(7.0, 5.0, 2.0, id="interval that does not divide T0"),
    ],
)
def test_bucket_aligned_to_wall_clock_multiples(
    interval: float, offset: float, bucket: float
) -> None:
    clock = ManualClock(T0 + offset)
    agg = make_aggregator(clock, interval=interval)
    feed(agg, b"hits:1|c")
    row = only_row(agg)
    assert row.ts == T0 + bucket
    assert row.ts % interval == 0
    assert row.ts <= clock() < row.ts + interval


def test_samples_in_two_intervals_land_in_two_buckets() -> None:
    clock = ManualClock(T0 + 3)
    agg = make_aggregator(clock)
    feed(agg, b"hits:1|c")
    clock.advance(10)
    feed(agg, b"hits:2|c")
    rows = flush(agg)
    assert {ts: r.sum for (ts, _), r in rows.items()} == {T0: 1.0, T0 + 10: 2.0}


# --- counters --------------------------------------------------------------------------------


def test_counter_sum_and_count_weighted_by_sample_rate() -> None:
    agg = make_aggregator(ManualClock())
    feed(agg, b"hits:2|c\nhits:3|c|@0.5\nhits:1|c|@0.1")
    row = only_row(agg)
    assert row.type is MetricType.COUNTER
    assert row.sum == pytest.approx(2 + 3 / 0.5 + 1 / 0.1)
    assert row.count == pytest.approx(1 + 1 / 0.5 + 1 / 0.1)
    assert (row.min, row.max) == (1.0, 3.0)


def test_series_with_different_tags_are_separate() -> None:
    agg = make_aggregator(ManualClock())
    feed(agg, b"hits:1|c|#env:prod\nhits:2|c|#env:dev\nhits:4|c|#env:prod")
    rows = flush(agg)
    assert {tags: r.sum for (_, (_, _, tags)), r in rows.items()} == {
        (("env", "prod"),): 5.0,
        (("env", "dev"),): 2.0,
    }


# --- gauges ----------------------------------------------------------------------------------


def test_gauge_last_is_the_latest_value() -> None:
    agg = make_aggregator(ManualClock())
    feed(agg, b"g:1|g\ng:7|g\ng:3|g")
    row = only_row(agg)
    assert row.last == 3.0
    assert (row.count, row.sum, row.min, row.max) == (3.0, 11.0, 1.0, 7.0)


def test_gauge_last_ignores_a_back_dated_value_in_the_same_bucket() -> None:
    clock = ManualClock(T0 + 8)
    agg = make_aggregator(clock)
    feed(agg, b"g:1|g")
    feed(agg, b"g:9|g|T%d" % int(T0 + 2))
    row = only_row(agg)
    assert row.ts == T0
    assert row.last == 1.0


def test_gauge_delta_changes_the_current_value_across_intervals() -> None:
    clock = ManualClock()
    agg = make_aggregator(clock)
    feed(agg, b"g:10|g")
    lasts = [only_row(agg).last]
    for datagram in (b"g:+5|g", b"g:-3|g", b"g:+1:+1|g", b"g:4|g\ng:-1|g"):
        clock.advance(10)
        feed(agg, datagram)
        lasts.append(only_row(agg).last)
    assert lasts == [10.0, 15.0, 12.0, 14.0, 3.0]


def test_gauge_delta_without_a_current_value_starts_from_zero() -> None:
    agg = make_aggregator(ManualClock())
    feed(agg, b"g:+4|g")
    assert only_row(agg).last == 4.0


def test_back_dated_gauge_does_not_change_the_current_value_for_deltas() -> None:
    clock = ManualClock(T0 + 65)
    agg = make_aggregator(clock)
    feed(agg, b"g:10|g")
    feed(agg, b"g:1|g|T%d" % int(T0 + 5))  # a late point for an earlier bucket
    feed(agg, b"g:+1|g")
    rows = flush(agg)
    assert {ts: r.last for (ts, _), r in rows.items()} == {T0: 1.0, T0 + 60: 11.0}


def test_gauge_values_are_sketched() -> None:
    agg = make_aggregator(ManualClock())
    feed(agg, b"g:1|g\ng:+1|g\ng:10|g")
    row = only_row(agg)
    assert row.sketch == sketch.bin_values([1.0, 2.0, 10.0])


# --- sketch-backed types ---------------------------------------------------------------------


@pytest.mark.parametrize("code", ["ms", "h", "d"])
def test_timing_exact_aggregates_and_sketch(code: str) -> None:
    agg = make_aggregator(ManualClock())
    values = [1.0, 2.0, 3.0, 100.0, 0.5]
    feed(agg, b"\n".join(b"lat:%r|%s" % (v, code.encode()) for v in values))
    row = only_row(agg)
    assert row.type is STATSD_TYPES[code]
    assert (row.count, row.sum, row.min, row.max) == (5.0, 106.5, 0.5, 100.0)
    assert row.sketch is not None
    assert row.sketch == sketch.bin_values(values)


def test_timing_sample_rate_weights_count_sum_and_sketch() -> None:
    agg = make_aggregator(ManualClock())
    feed(agg, b"lat:10|ms|@0.25\nlat:20|ms")
    row = only_row(agg)
    assert row.count == pytest.approx(5.0)
    assert row.sum == pytest.approx(60.0)
    assert (row.min, row.max) == (10.0, 20.0)
    assert row.sketch is not None
    assert sketch_count(row.sketch) == pytest.approx(5.0)
    assert sketch.quantile(row.sketch, 0.5) == pytest.approx(10.0, rel=0.01)


@pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
def test_quantiles_within_one_percent_of_exact(q: float) -> None:
    values = np.random.default_rng(7).lognormal(mean=3.0, sigma=1.2, size=20_000)
    agg = make_aggregator(ManualClock())
    feed(agg, "\n".join(f"lat:{v!r}|ms" for v in values.tolist()).encode())
    row = only_row(agg)
    assert row.sketch is not None
    assert row.count == len(values)
    assert row.sum == pytest.approx(float(values.sum()), rel=1e-9)
    assert (row.min, row.max) == (float(values.min()), float(values.max()))
    exact = float(np.quantile(values, q, method="lower"))
    assert sketch.quantile(row.sketch, q) == pytest.approx(exact, rel=0.01)


def test_quantile_of_merged_buckets_within_one_percent() -> None:
    rng = np.random.default_rng(11)
    first, second = rng.lognormal(2.0, 1.0, 5_000), rng.lognormal(4.0, 0.5, 5_000)
    clock = ManualClock()
    agg = make_aggregator(clock)
    feed(agg, "\n".join(f"lat:{v!r}|ms" for v in first.tolist()).encode())
    clock.advance(10)
    feed(agg, "\n".join(f"lat:{v!r}|ms" for v in second.tolist()).encode())
    rows = flush(agg)
    assert len(rows) == 2
    merged = sketch.merge(r.sketch for r in rows.values() if r.sketch is not None)
    both = np.concatenate([first, second])
    for q in (0.5, 0.99):
        exact = float(np.quantile(both, q, method="lower"))
        assert sketch.quantile(merged, q) == pytest.approx(exact, rel=0.01)


# --- sets ------------------------------------------------------------------------------------


def test_set_distinct_members_small() -> None:
    agg = make_aggregator(ManualClock())
    feed(agg, b"u:alice|s\nu:bob|s\nu:alice|s|@0.5")
    row = only_row(agg)
    assert row.hll is not None
    assert sketch.hll_estimate(row.hll) == pytest.approx(2.0, abs=0.01)
    assert row.count == 3.0
    assert row.sketch is None


def test_set_distinct_members_many() -> None:
    agg = make_aggregator(ManualClock())
    feed(agg, b"\n".join(b"u:user-%d|s" % (i % 5000) for i in range(12_000)))
    row = only_row(agg)
    assert row.hll is not None
    assert sketch.hll_estimate(row.hll) == pytest.approx(5000, rel=0.05)


# --- type conflicts and cardinality ----------------------------------------------------------


def test_type_conflict_first_type_wins() -> None:
    agg = make_aggregator(ManualClock())
    assert feed(agg, b"m:1|c\nm:5|g\nm:2|c|#env:prod\nm:3|ms|#env:prod") == [
        "type_conflict",
        "type_conflict",
    ]
    rows = flush(agg)
    assert {r.type for r in rows.values()} == {MetricType.COUNTER}
    assert sum(r.sum for r in rows.values()) == 3.0


def test_type_conflict_persists_into_later_intervals() -> None:
    clock = ManualClock()
    agg = make_aggregator(clock)
    feed(agg, b"m:1|c")
    flush(agg)
    clock.advance(10)
    assert feed(agg, b"m:1|g") == ["type_conflict"]
    assert feed(agg, b"m:1|c") == []


def test_type_conflict_against_a_type_already_in_the_registry() -> None:
    registry = SeriesRegistry()
    registry.seed(7, ("default", "m", (("env", "prod"),)), MetricType.GAUGE)
    agg = make_aggregator(ManualClock(), registry=registry)
    assert feed(agg, b"m:1|c") == ["type_conflict"]
    assert feed(agg, b"m:1|g") == []
    assert only_row(agg).type is MetricType.GAUGE


def test_types_are_per_tenant() -> None:
    agg = make_aggregator(ManualClock())
    assert feed(agg, b"m:1|c", tenant="a") == []
    assert feed(agg, b"m:1|g", tenant="b") == []
    assert {r.key[0]: r.type for r in flush(agg).values()} == {
        "a": MetricType.COUNTER,
        "b": MetricType.GAUGE,
    }


def test_cardinality_limit_rejects_new_series_only() -> None:
    clock = ManualClock()
    agg = make_aggregator(clock, max_series=2)
    assert feed(agg, b"a:1|c\nb:1|c") == []
    assert feed(agg, b"c:1|c\na:1|c|#env:x") == ["cardinality_limit", "cardinality_limit"]
    assert feed(agg, b"a:1|c\nb:1|c") == []
    assert feed(agg, b"c:1|c", tenant="other") == []
    assert {(r.key[0], r.key[1]): r.sum for r in flush(agg).values()} == {
        ("default", "a"): 2.0,
        ("default", "b"): 2.0,
        ("other", "c"): 1.0,
    }
    clock.advance(10)
    assert feed(agg, b"a:1|c\nc:1|c") == ["cardinality_limit"]


def test_cardinality_limit_counts_series_already_in_the_registry() -> None:
    registry = SeriesRegistry()
    registry.seed(7, ("default", "old", ()), MetricType.COUNTER)
    agg = make_aggregator(ManualClock(), registry=registry, max_series=1)
    assert feed(agg, b"new:1|c\nold:1|c") == ["cardinality_limit"]


# --- timestamps ------------------------------------------------------------------------------


def test_back_dated_sample_lands_in_its_own_bucket() -> None:
    clock = ManualClock(T0 + 5)
    agg = make_aggregator(clock)
    assert feed(agg, b"hits:1|c\nhits:2|c|T%d" % int(T0 - 95)) == []
    rows = flush(agg)
    assert {ts: r.sum for (ts, _), r in rows.items()} == {T0: 1.0, T0 - 100: 2.0}


def test_future_sample_within_ten_minutes_lands_in_its_own_bucket() -> None:
    clock = ManualClock(T0 + 5)
    agg = make_aggregator(clock)
    assert feed(agg, b"hits:1|c|T%d" % int(T0 + 5 + 595)) == []
    assert only_row(agg).ts == T0 + 600


@pytest.mark.parametrize(
    ("offset", "reason"),
    [
        pytest.param(-HOUR - 1, "timestamp_too_old", id="older than max_backdate"),
        pytest.param(601, "timestamp_in_future", id="more than ten minutes ahead"),
        pytest.param(10 * 365 * 86400, "timestamp_in_future", id="years ahead"),
    ],
)
def test_timestamp_out_of_range_rejected(offset: float, reason: str) -> None:
    clock = ManualClock(T0 + 5)
    agg = make_aggregator(clock, max_backdate=HOUR)
    assert feed(agg, b"hits:1|c|T%d\nhits:2|c" % int(clock() + offset)) == [reason]
    assert only_row(agg).sum == 2.0


# --- swap, rows in memory, release ----------------------------------------------------------


def test_swap_numbers_snapshots_and_leaves_an_empty_live_interval() -> None:
    agg = make_aggregator(ManualClock(), first_seq=41)
    feed(agg, b"hits:1|c")
    first = agg.swap()
    second = agg.swap()
    assert (first.seq, second.seq) == (41, 42)
    assert agg.snapshot_rows(second).rows() == []
    assert [r.sum for r in agg.snapshot_rows(first).rows()] == [1.0]


def test_snapshot_is_not_changed_by_later_samples() -> None:
    agg = make_aggregator(ManualClock())
    feed(agg, b"hits:1|c")
    snap = agg.swap()
    feed(agg, b"hits:5|c")
    assert [r.sum for r in agg.snapshot_rows(snap).rows()] == [1.0]


def everything(tags: object) -> bool:
    return True


def sums_in_memory(agg: IntervalAggregator, after_seq: int = 0, name: str = "hits") -> list[float]:
    """The sums of the rows a query reads of `name` in memory, past snapshot `after_seq`."""
    rows = agg.metric_in_memory("default", name).rows(after_seq, 0.0, math.inf, everything)
    return rows.sum.tolist()  # type: ignore[no-any-return]


def test_memory_rows_see_live_and_pending_data_until_released() -> None:
    agg = make_aggregator(ManualClock())
    feed(agg, b"hits:1|c\nother:1|c")
    first = agg.swap()
    feed(agg, b"hits:2|c")
    second = agg.swap()
    feed(agg, b"hits:4|c")
    # Oldest first (pending snapshots, then the live interval, which carries seq 3).
    assert sums_in_memory(agg) == [1.0, 2.0, 4.0]
    assert sums_in_memory(agg, after_seq=1) == [2.0, 4.0]
    assert sums_in_memory(agg, after_seq=3) == []
    none = agg.metric_in_memory("other-tenant", "hits")
    assert len(none) == 0
    assert len(none.rows(0, 0.0, math.inf, everything)) == 0
    agg.release(first)
    assert sums_in_memory(agg) == [2.0, 4.0]
    agg.release(second)
    assert sums_in_memory(agg) == [4.0]
    assert agg.pending == []


def test_memory_rows_keep_a_snapshot_flushed_after_the_copy() -> None:
    """The copy is taken before the store read: a snapshot swapped, written and released in
    between is still in the copy, and the seq the store read says decides whether it counts."""
    agg = make_aggregator(ManualClock())
    feed(agg, b"hits:1|c")
    memory = agg.metric_in_memory("default", "hits")
    agg.release(agg.swap())
    feed(agg, b"hits:5|c")
    assert memory.rows(0, 0.0, math.inf, everything).sum.tolist() == [1.0]  # store read first
    assert len(memory.rows(1, 0.0, math.inf, everything)) == 0  # the store holds seq 1


def test_memory_rows_of_a_range() -> None:
    clock = ManualClock(T0 + 65)
    agg = make_aggregator(clock)
    feed(agg, b"hits:1|c|T%d\nhits:2|c|T%d\nhits:4|c" % (int(T0 + 5), int(T0 + 35)))
    memory = agg.metric_in_memory("default", "hits")

    def between(start: float, until: float) -> list[tuple[float, float]]:
        rows = memory.rows(0, start, until, everything)
        return sorted(zip(rows.ts.tolist(), rows.sum.tolist(), strict=True))

    assert between(T0, T0 + 70) == [(T0, 1.0), (T0 + 30, 2.0), (T0 + 60, 4.0)]
    assert between(T0 + 30, T0 + 60) == [(T0 + 30, 2.0)]  # start included, until excluded
    assert between(T0 + 1, T0 + 30) == []
    assert between(T0 + 60, math.inf) == [(T0 + 60, 4.0)]


def test_memory_rows_of_the_series_whose_tags_pass() -> None:
    agg = make_aggregator(ManualClock())
    feed(agg, b"hits:1|c|#env:prod,host:a\nhits:2|c|#env:dev,host:a\nhits:4|c|#env:prod,host:b")
    rows = agg.metric_in_memory("default", "hits").rows(
        0, 0.0, math.inf, lambda tags: dict(tags).get("env") == "prod"
    )
    assert sorted(zip((k[2] for k in rows.keys), rows.sum.tolist(), strict=True)) == [
        ((("env", "prod"), ("host", "a")), 1.0),
        ((("env", "prod"), ("host", "b")), 4.0),
    ]
    assert rows.series is not None
    assert rows.series.tolist() == [agg.registry.id_of(k) for k in rows.keys]


class _NoScan(dict):  # type: ignore[type-arg]
    """A bucket map that fails the test if anything walks it instead of looking a key up."""

    def items(self):  # type: ignore[no-untyped-def]
        raise AssertionError("metric_in_memory walked every series in memory")

    def values(self):  # type: ignore[no-untyped-def]
        raise AssertionError("metric_in_memory walked every series in memory")

    def __iter__(self):  # type: ignore[no-untyped-def]
        raise AssertionError("metric_in_memory walked every series in memory")


def test_metric_in_memory_reads_one_metric_without_walking_everything_in_memory() -> None:
    """A query copies what memory holds of its metric on the event loop: the cost must follow
    the metric asked for, not the millions of other series a flood may have put in memory."""
    agg = make_aggregator(ManualClock())
    feed(agg, b"\n".join(b"noise.%d:1|c" % i for i in range(500)) + b"\nhits:1|c")
    snap = agg.swap()
    feed(agg, b"\n".join(b"noise.%d:1|c" % i for i in range(500)) + b"\nhits:2|c")
    snap.buckets = {ts: _NoScan(m) for ts, m in snap.buckets.items()}
    agg._live = {ts: _NoScan(m) for ts, m in agg._live.items()}
    memory = agg.metric_in_memory("default", "hits")
    assert memory.rows(0, 0.0, math.inf, everything).sum.tolist() == [1.0, 2.0]


def test_memory_rows_are_copies() -> None:
    agg = make_aggregator(ManualClock())
    feed(agg, b"lat:1|ms")
    memory = agg.metric_in_memory("default", "lat")
    feed(agg, b"lat:2|ms")
    assert memory.rows(0, 0.0, math.inf, everything).count.tolist() == [1.0]
    assert only_row(agg).count == 2.0


# --- series ids ------------------------------------------------------------------------------


def ids_by_key(agg: IntervalAggregator) -> dict[SeriesKey, int]:
    """swap() + snapshot_rows(): the id each flushed row carries, by series key."""
    rows = agg.snapshot_rows(agg.swap())
    assert rows.series is not None
    return dict(zip(rows.keys, rows.series.tolist(), strict=True))


def test_each_series_keeps_its_id_across_intervals() -> None:
    clock = ManualClock()
    agg = make_aggregator(clock)
    feed(agg, b"hits:1|c\nhits:1|c|#env:prod\nlat:3|ms")
    first = ids_by_key(agg)
    assert len(set(first.values())) == 3
    clock.advance(10)
    feed(agg, b"lat:4|ms\nhits:1|c\nnew:1|c\nhits:1|c|#env:prod", tenant="default")
    feed(agg, b"hits:1|c", tenant="other")
    second = ids_by_key(agg)
    assert {k: second[k] for k in first} == first
    fresh = {second[("default", "new", ())], second[("other", "hits", ())]}
    assert len(fresh) == 2 and not fresh & set(first.values())


def test_ids_continue_above_the_largest_seeded_one() -> None:
    registry = SeriesRegistry()
    registry.seed(40, ("default", "old", ()), MetricType.COUNTER)
    registry.seed(3, ("default", "older", ()), MetricType.COUNTER)
    agg = make_aggregator(ManualClock(), registry=registry)
    feed(agg, b"old:1|c\nolder:1|c\nnew:1|c\nnewer:1|c")
    assert ids_by_key(agg) == {
        ("default", "old", ()): 40,
        ("default", "older", ()): 3,
        ("default", "new", ()): 41,
        ("default", "newer", ()): 42,
    }


def test_a_forgotten_series_sent_again_gets_a_new_id() -> None:
    clock = ManualClock()
    agg = make_aggregator(clock)
    feed(agg, b"hits:1|c\nkeep:1|c")
    before = ids_by_key(agg)
    agg.registry.forget([("default", "hits", ())])
    clock.advance(10)
    feed(agg, b"hits:1|c\nkeep:1|c")
    after = ids_by_key(agg)
    assert after[("default", "keep", ())] == before[("default", "keep", ())]
    assert after[("default", "hits", ())] > max(before.values())


def test_a_metrics_series_ids_follow_admissions_and_forgets() -> None:
    """The ids a query copies a metric's series out of memory by: those of its tag sets."""
    agg = make_aggregator(ManualClock())
    feed(agg, b"lat:1|ms|#h:a\nlat:1|ms|#h:b\nlat:1|ms|#h:c\nother:1|c")
    reg = agg.registry

    def ids_of(tags: list[tuple[tuple[str, str], ...]]) -> list[int]:
        return [reg.series["default"][("lat", t)] for t in tags]

    assert list(reg.ids_of_metric("default", "lat")) == ids_of(
        list(reg.series_of("default", "lat"))
    )
    reg.forget([("default", "lat", (("h", "b"),))])
    assert list(reg.series_of("default", "lat")) == [(("h", "a"),), (("h", "c"),)]
    assert list(reg.ids_of_metric("default", "lat")) == ids_of(
        list(reg.series_of("default", "lat"))
    )
    reg.forget([("default", "lat", (("h", "a"),)), ("default", "lat", (("h", "c"),))])
    assert list(reg.ids_of_metric("default", "lat")) == []


def test_series_buckets_set_aside_leave_the_snapshot() -> None:
    agg = make_aggregator(ManualClock())
    feed(agg, b"a:1|c\nb:2|c\nc:4|c")
    snap = agg.swap()
    rows = agg.snapshot_rows(snap)
    assert rows.series is not None
    ids = dict(zip(rows.keys, rows.series.tolist(), strict=True))
    snap.remove([(T0, ids[("default", "a", ())]), (T0 + 10, ids[("default", "b", ())])])
    assert sorted(agg.snapshot_rows(snap).sum.tolist()) == [2.0, 4.0]
    snap.remove([(T0, ids[("default", "b", ())]), (T0, ids[("default", "c", ())])])
    assert len(agg.snapshot_rows(snap)) == 0
    assert snap.series_count() == 0


def test_gauges_and_sets_ignore_sample_rate() -> None:
    # The HTTP path hands the rate through unchanged; only counters and sketches use it.
    agg = make_aggregator(ManualClock())
    rejects = agg.add_samples(
        "default",
        [
            Sample("g", (), MetricType.GAUGE, 5.0, 0.25, None, False),
            Sample("u", (), MetricType.SET, "alice", 0.25, None, False),
        ],
    )
    assert rejects == []
    rows = {r.key[1]: r for r in flush(agg).values()}
    assert (rows["g"].count, rows["g"].sum, rows["g"].last) == (1.0, 5.0, 5.0)
    assert rows["u"].count == 1.0


def test_taking_and_joining_rows_keeps_their_series_ids() -> None:
    agg = make_aggregator(ManualClock())
    feed(agg, b"a:1|c\nb:2|c\nc:4|c")
    rows = agg.snapshot_rows(agg.swap())
    assert rows.series is not None
    ids = rows.series.tolist()
    picked = rows.take(np.array([2, 0]))
    assert picked.series is not None and picked.series.tolist() == [ids[2], ids[0]]
    joined = RowBatch.concat([picked, rows])
    assert joined.series is not None and joined.series.tolist() == [ids[2], ids[0], *ids]
    # A batch built from rows carries no ids: neither does a batch joined with one.
    assert RowBatch.concat([rows, RowBatch.from_rows(picked.rows())]).series is None
