"""The series index (`series_tags`, schema v3) and label matchers with Prometheus semantics.

- Every matcher op (`=`, `!=`, `=~`, `!~`), including a tag a series lacks (its value is ""),
  an empty value, values JSON has to escape, and matchers that want the tag present, selects
  the same series through the store's index (SqliteStore.series; MemoryStore agrees), through
  a query of stored rows, and through a query of what is still in memory; and those are the
  series a hand-written list names.
- Tag values are counted from the index; the index follows inserts and deletes of series.
- A schema version 2 file (made by the version 2 DDL) is migrated at open: the index is
  back-filled from `series.tags`, and new series are indexed from then on.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from statsd_gateway.aggregator import SeriesRegistry
from statsd_gateway.model import BucketRow, Matcher, MatchOp, MetricType, Tags, matches_all
from statsd_gateway.query import AggOp, Aggregation, Grouping, QueryEngine, QueryPlan, Selector
from statsd_gateway.store import SqliteStore, sqlite_reads
from statsd_gateway.store.memory import MemoryStore
from statsd_gateway.store.schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    SKETCH_FORMAT,
    ensure_tier_table,
    tags_json,
)
from tests.conftest import T0, ManualClock, make_aggregator, write_rows

TENANT = "default"
QUOTED = 'pr"od \\ 😀'
# Tag sets by the host they carry (each has one, so answers can be compared by host).
SERIES: dict[str, Tags] = {
    "a": (("env", "prod"), ("host", "a")),
    "b": (("env", "dev"), ("host", "b")),
    "c": (("host", "c"),),  # no env
    "d": (("env", ""), ("host", "d")),  # an empty env: the same as none
    "e": (("env", "prod"), ("host", "e"), ("zone", "x")),
    "f": (("env", QUOTED), ("host", "f")),
}
EVERY = set(SERIES)


def m(key: str, op: str, value: str, *, present: bool = False) -> Matcher:
    return Matcher(key, MatchOp(op), value, present=present)


# Each case: the matchers, and the hosts of the series Prometheus selects with them.
CASES: list[tuple[tuple[Matcher, ...], set[str]]] = [
    ((), EVERY),
    ((m("env", "=", "prod"),), {"a", "e"}),
    ((m("env", "!=", "prod"),), {"b", "c", "d", "f"}),
    ((m("env", "=", ""),), {"c", "d"}),
    ((m("env", "!=", ""),), {"a", "b", "e", "f"}),
    ((m("env", "=~", "pr.*"),), {"a", "e", "f"}),
    ((m("env", "!~", "pr.*"),), {"b", "c", "d"}),
    ((m("env", "=~", ".*"),), EVERY),
    ((m("env", "=~", ".+"),), {"a", "b", "e", "f"}),
    ((m("env", "!~", ".*"),), set()),
    ((m("env", "=~", ""),), {"c", "d"}),
    ((m("env", "!~", ""),), {"a", "b", "e", "f"}),
    ((m("env", "=~", "rod"),), set()),  # anchored: a regex matches the whole value
    ((m("env", "!~", "nope|dev"),), {"a", "c", "d", "e", "f"}),
    ((m("env", "=", QUOTED),), {"f"}),
    ((m("zone", "=", "x"),), {"e"}),
    ((m("zone", "!=", "x"),), EVERY - {"e"}),
    ((m("nokey", "=", ""),), EVERY),
    ((m("nokey", "!=", ""),), set()),
    ((m("nokey", "=~", "a"),), set()),
    ((m("nokey", "!~", "a"),), EVERY),
    ((m("env", "!=", "dev"), m("host", "=~", "[a-c]")), {"a", "c"}),
    ((m("env", "=~", "prod|dev"), m("zone", "!=", "x")), {"a", "b"}),
    ((m("env", "=", "prod"), m("env", "!=", "prod")), set()),
    # `present`: the series must carry the tag (the /v1 `tags` filter: `env:` is a bare env).
    ((m("env", "=", "", present=True),), {"d"}),
    ((m("env", "=", "prod", present=True),), {"a", "e"}),
    ((m("env", "!=", "prod", present=True),), {"b", "d", "f"}),
    ((m("env", "=~", ".*", present=True),), {"a", "b", "d", "e", "f"}),
    ((m("env", "!~", "pr.*", present=True),), {"b", "d"}),
    ((m("nokey", "=~", ".*", present=True),), set()),
]
IDS = [
    " ".join(f"{x.key}{x.op.value}{x.value!r}{'+' * x.present}" for x in ms) or "none"
    for ms, _ in CASES
]


def hosts(tag_sets: list[Tags]) -> set[str]:
    return {dict(t)["host"] for t in tag_sets}


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[tuple[SqliteStore, QueryEngine, MemoryStore]]:
    """`stored` has a row of each series in the store (and in a MemoryStore, the protocol's
    reference backend); `live` has a point of each in memory only; `other` (another metric)
    carries the same tags, which must never leak in."""
    clock = ManualClock(T0 + 25.0)
    store = SqliteStore(tmp_path / "metrics.db", clock=clock)
    await store.open()
    aggregator = make_aggregator(clock)
    rows = []
    for name in ("stored", "other"):
        for tags in SERIES.values():
            aggregator.registry.admit(TENANT, name, tags, MetricType.COUNTER, 10**9)
            key = (TENANT, name, tags)
            rows.append(BucketRow(T0, key, MetricType.COUNTER, 1.0, 1.0, 1.0, 1.0))
    await write_rows(store, rows)
    reference = MemoryStore(clock=clock)
    await reference.open()
    await write_rows(reference, rows)
    samples = [("live", t, MetricType.COUNTER, 1.0, 1.0, T0 + 20, False) for t in SERIES.values()]
    assert aggregator.add_samples(TENANT, samples) == []
    try:
        yield store, QueryEngine(store, aggregator), reference
    finally:
        await store.close()
        await reference.close()


async def selected_by_query(
    engine: QueryEngine, name: str, matchers: tuple[Matcher, ...]
) -> set[str]:
    plan = QueryPlan(
        Selector(TENANT, name, matchers),
        Aggregation(AggOp.COUNT),
        T0,
        T0 + 60,
        grouping=Grouping(without=True),  # one group per series: its whole tag set
    )
    return hosts([s.tags for s in (await engine.run(plan)).series])


@pytest.mark.parametrize("by_id", [True, False], ids=["by-id", "probed"])
@pytest.mark.parametrize(("matchers", "want"), CASES, ids=IDS)
async def test_matchers_select_alike_through_the_index_the_store_and_memory(
    parts: tuple[SqliteStore, QueryEngine, MemoryStore],
    matchers: tuple[Matcher, ...],
    want: set[str],
    by_id: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`by_id`: an `=` matcher's few carriers are looked up by id (every case here has few);
    else every series of the metric is probed for the value (what many carriers get)."""
    if not by_id:
        monkeypatch.setattr(sqlite_reads, "_FEW_CARRYING", 0)
    store, engine, reference = parts
    assert hosts([t for t in SERIES.values() if matches_all(t, matchers)]) == want
    assert hosts([s.tags for s in await store.series(TENANT, "stored", matchers)]) == want
    assert hosts([s.tags for s in await reference.series(TENANT, "stored", matchers)]) == want
    assert await selected_by_query(engine, "stored", matchers) == want
    assert await selected_by_query(engine, "live", matchers) == want
    # Without a name: the tenant's series of both stored metrics.
    tenant_wide = await store.series(TENANT, None, matchers)
    assert Counter(dict(s.tags)["host"] for s in tenant_wide) == Counter(2 * sorted(want))


async def test_another_tenant_is_never_selected(
    parts: tuple[SqliteStore, QueryEngine, MemoryStore],
) -> None:
    store, _, _ = parts
    assert await store.series("other", "stored", (m("env", "=~", ".*"),)) == []
    assert await store.tag_values("other", "env") == {}
    # Another tenant's series carrying the same values (its ids among an = matcher's
    # carriers) select only their own tenant's, and never leak into this one's.
    key = ("other", "stored", SERIES["a"])
    await write_rows(store, [BucketRow(T0, key, MetricType.COUNTER, 1.0, 1.0, 1.0, 1.0)])
    for matchers in ((m("env", "=", "prod"),), (m("host", "=", "a"), m("env", "!=", "dev"))):
        assert hosts([s.tags for s in await store.series("other", "stored", matchers)]) == {"a"}
        mine = await store.series(TENANT, "stored", matchers)
        assert {s.tenant for s in mine} == {TENANT} and hosts([s.tags for s in mine]) == {"a"} | (
            {"e"} if len(matchers) == 1 else set()
        )


async def test_tag_values_are_counted_from_the_index(
    parts: tuple[SqliteStore, QueryEngine, MemoryStore],
) -> None:
    store, _, _ = parts
    # An empty value is a value a series carries; a series without the tag counts for none.
    want = {"prod": 2, "dev": 1, "": 1, QUOTED: 1}
    assert await store.tag_values(TENANT, "env", "stored") == want
    assert await store.tag_values(TENANT, "env") == {v: 2 * n for v, n in want.items()}
    assert await store.tag_values(TENANT, "zone", "stored") == {"x": 1}
    assert await store.tag_values(TENANT, "nokey", "stored") == {}


def index_rows(path: Path) -> set[tuple[str, str, str, str]]:
    """(name, host, key, value) of every row of the index."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT s.name, s.tags, t.key, t.value FROM series_tags t JOIN series s "
            "ON s.id = t.series_id"
        ).fetchall()
        orphans = conn.execute(
            "SELECT count(*) FROM series_tags WHERE series_id NOT IN (SELECT id FROM series)"
        ).fetchone()[0]
    finally:
        conn.close()
    assert orphans == 0
    return {(n, tags, k, v) for n, tags, k, v in rows}


def expected_index(names: dict[str, list[Tags]]) -> set[tuple[str, str, str, str]]:
    return {(n, tags_json(t), k, v) for n, sets in names.items() for t in sets for k, v in t}


async def test_the_index_follows_inserted_and_deleted_series(
    parts: tuple[SqliteStore, QueryEngine, MemoryStore],
) -> None:
    store, _, _ = parts
    every = list(SERIES.values())
    assert index_rows(store.path) == expected_index({"stored": every, "other": every})
    gone = [(TENANT, "stored", SERIES["a"]), (TENANT, "stored", SERIES["f"])]
    assert (await store.delete_series(gone))[0] == 2
    kept = [t for h, t in SERIES.items() if h not in ("a", "f")]
    assert index_rows(store.path) == expected_index({"stored": kept, "other": every})
    assert hosts([s.tags for s in await store.series(TENANT, "stored", ())]) == EVERY - {"a", "f"}


def make_v2_file(path: Path) -> None:
    """A database as schema version 2 made it (its DDL and meta rows), with series whose
    tags are JSON only, and a row of each in the finest tier."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.executescript(
            f"BEGIN;{MIGRATIONS[1]}{MIGRATIONS[2]}"
            "INSERT INTO meta VALUES('schema_version', '2');"
            f"INSERT INTO meta VALUES('sketch_format', '{SKETCH_FORMAT}');"
            "INSERT INTO meta VALUES('flushed_seq', '0');"
            "COMMIT;"
        )
        ensure_tier_table(conn, 10.0, time_major=True)
        for sid, tags in enumerate(SERIES.values(), start=1):
            conn.execute(
                "INSERT INTO series VALUES (?, ?, 'old', ?, 'counter', ?)",
                (sid, TENANT, tags_json(tags), T0),
            )
            conn.execute(
                "INSERT INTO points_10s(ts, series_id, count, sum) VALUES (?, ?, 1, 1)", (T0, sid)
            )
    finally:
        conn.close()


async def test_a_version_2_file_is_migrated_and_its_index_back_filled(tmp_path: Path) -> None:
    path = tmp_path / "metrics.db"
    make_v2_file(path)
    clock = ManualClock(T0 + 25.0)
    store = SqliteStore(path, clock=clock)
    known = (await store.open()).series
    try:
        assert {s.tags for s in known} == set(SERIES.values())
        conn = sqlite3.connect(path)
        version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        conn.close()
        assert version == (str(SCHEMA_VERSION),) and SCHEMA_VERSION == 4
        assert index_rows(path) == expected_index({"old": list(SERIES.values())})
        not_prod = (m("env", "!=", "prod"),)
        assert hosts([s.tags for s in await store.series(TENANT, "old", not_prod)]) == {
            "b",
            "c",
            "d",
            "f",
        }
        # A series written after the migration is indexed by the triggers.
        new: Tags = (("env", "prod"), ("host", "g"))
        row = BucketRow(T0, (TENANT, "old", new), MetricType.COUNTER, 1.0, 1.0, 1.0, 1.0)
        await write_rows(store, [row])
        prod = (m("env", "=", "prod"),)
        assert hosts([s.tags for s in await store.series(TENANT, "old", prod)]) == {"a", "e", "g"}
        registry = SeriesRegistry()
        for s in known:
            registry.seed(s.id, (s.tenant, s.name, s.tags), s.type)
        registry.admit(TENANT, "old", new, MetricType.COUNTER, 10**9)
        aggregator = make_aggregator(clock, registry)
        assert await selected_by_query(QueryEngine(store, aggregator), "old", prod) == {
            "a",
            "e",
            "g",
        }
    finally:
        await store.close()
