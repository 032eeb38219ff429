"""The SQLite schema, its version, and the migrations from the first release on.

Layout (see shared/research/sketch-storage.md, schema "F"):
- `series`: one row per (tenant, name, tags); tags as canonical JSON (sorted keys, no spaces).
- One table per storage tier, `points_<resolution>` (`points_10s`, `points_60s`, …): one row per
  series per bucket. Exact count/sum/min/max/last in columns, DDSketch bins as a DDV1 blob in
  `sketch`, a set's HyperLogLog in `hll`. The finest tier is keyed time-major (ts, series_id), so
  that a flush appends to the right edge of one B-tree; coarser tiers series-major
  (series_id, ts), so that range reads of a series are cheap. Tier tables are created for the
  configured tiers when the store opens.
- `idempotency`: the stored response of each idempotency key, written in the same transaction as
  the points it answers for.
- `gauge_current` (version 2): per gauge series, its current value and that value's time (what
  StatsD `+N`/`-N` change), as of the last flush written; restored at start.
- `series_tags` (version 3): the series index, one row per (series, tag key) with its value;
  kept in step with `series` by triggers (a series inserted or deleted, by any writer), so
  that "series of this name whose tag k is v" and "values of tag k" are answered by its
  indexes instead of parsing every series' JSON. A version 2 file is back-filled at open.
- `chunks_<resolution>` (version 4): the closed buckets of each tier, one row per (series,
  chunk window): the window's start, its bucket count and the SGC1 blob (store/chunks.py). The
  `points_<resolution>` tables are then the head: the open window's buckets, and late points
  for a sealed window, until the writer seals them into their chunk (sqlite_chunks.py). A
  rowid table, so that a chunk of up to ~4 KB stays in its B-tree page instead of overflowing
  at ~1 KB as in a WITHOUT ROWID one. Coarse tiers' head tables get an index on ts (finding the
  oldest head bucket). A version 3 file keeps its rows as head rows; they are sealed in the
  background after the upgrade.
- `meta`: schema version, sketch format (`DDV1`, mapping id), `flushed_seq` (the last flushed
  snapshot; queries use it to avoid counting a snapshot both from memory and from disk), and per
  coarse tier `complete_until:<table>` (buckets before it are written in that tier; the open
  one is rebuilt from the tier below after a restart).
New databases use incremental auto-vacuum, so retention deletes give space back.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

from statsd_gateway import sketch
from statsd_gateway.model import Tags

log = logging.getLogger(__name__)

# What the stored sketch blobs are (both stores keep it in `meta` and refuse another).
SKETCH_FORMAT = f"{sketch.FORMAT}:mapping={sketch.MAPPING_ID}"

SCHEMA_VERSION = 4

_V1 = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS series(
  id INTEGER PRIMARY KEY,
  tenant TEXT NOT NULL,
  name TEXT NOT NULL,
  tags TEXT NOT NULL,
  type TEXT NOT NULL,
  created REAL NOT NULL,
  UNIQUE(tenant, name, tags));
CREATE TABLE IF NOT EXISTS idempotency(
  tenant TEXT NOT NULL,
  key TEXT NOT NULL,
  body_sha256 TEXT NOT NULL,
  status INTEGER NOT NULL,
  response TEXT NOT NULL,
  created REAL NOT NULL,
  PRIMARY KEY(tenant, key)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_created ON idempotency(created);
"""

_COLUMNS = """
  count REAL NOT NULL,
  sum REAL NOT NULL,
  min REAL,
  max REAL,
  last REAL,
  last_ts REAL,
  sketch BLOB,
  hll BLOB,"""


def tags_json(tags: Tags) -> str:
    """A series' tags as stored: canonical JSON (keys sorted, no spaces)."""
    return json.dumps(dict(tags), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def tags_from_json(text: str) -> Tags:
    return tuple(sorted(json.loads(text).items()))


def tier_table(resolution: float) -> str:
    """`points_10s`, `points_60s`, `points_500ms`: the table of the tier of that resolution."""
    if float(resolution).is_integer():
        return f"points_{int(resolution)}s"
    return f"points_{round(resolution * 1000)}ms"


def chunk_table(resolution: float) -> str:
    """`chunks_10s`, …: the table of the tier's sealed chunks."""
    return "chunks_" + tier_table(resolution).removeprefix("points_")


def ensure_tier_table(conn: sqlite3.Connection, resolution: float, time_major: bool) -> None:
    key = "ts, series_id" if time_major else "series_id, ts"
    table = tier_table(resolution)
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {table}("
        f"ts REAL NOT NULL, series_id INTEGER NOT NULL,{_COLUMNS} "
        f"PRIMARY KEY({key})) WITHOUT ROWID"
    )
    if not time_major:
        conn.execute(f"CREATE INDEX IF NOT EXISTS {table}_ts ON {table}(ts)")
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {chunk_table(resolution)}("
        "series_id INTEGER NOT NULL, start REAL NOT NULL, rows INTEGER NOT NULL, "
        "data BLOB NOT NULL, PRIMARY KEY(series_id, start))"
    )


_V2 = """
CREATE TABLE IF NOT EXISTS gauge_current(
  series_id INTEGER PRIMARY KEY,
  value REAL NOT NULL,
  ts REAL NOT NULL);
"""

# Keyed by (series_id, key), a series carrying each key once (its tags are canonical): the
# per-series probe of a matcher and "values of tag k of metric n" (from series' (tenant,
# name) index); (key, value) finds the series carrying a value, across metrics.
_V3 = """
CREATE TABLE IF NOT EXISTS series_tags(
  series_id INTEGER NOT NULL,
  key TEXT NOT NULL,
  value TEXT NOT NULL,
  PRIMARY KEY(series_id, key)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS series_tags_value ON series_tags(key, value);
INSERT OR IGNORE INTO series_tags(series_id, key, value)
  SELECT s.id, t.key, t.value FROM series s, json_each(s.tags) t;
CREATE TRIGGER IF NOT EXISTS series_tags_insert AFTER INSERT ON series BEGIN
  INSERT INTO series_tags(series_id, key, value)
    SELECT NEW.id, t.key, t.value FROM json_each(NEW.tags) t;
END;
CREATE TRIGGER IF NOT EXISTS series_tags_update AFTER UPDATE OF tags ON series BEGIN
  DELETE FROM series_tags WHERE series_id = OLD.id;
  INSERT INTO series_tags(series_id, key, value)
    SELECT NEW.id, t.key, t.value FROM json_each(NEW.tags) t;
END;
CREATE TRIGGER IF NOT EXISTS series_tags_delete AFTER DELETE ON series BEGIN
  DELETE FROM series_tags WHERE series_id = OLD.id;
END;
"""

# The chunk tables are made per tier at open (ensure_tier_table); the version records that
# the file may hold them, so that an older release refuses it instead of missing its history.
_V4 = ""

MIGRATIONS: dict[int, str] = {1: _V1, 2: _V2, 3: _V3, 4: _V4}


class SchemaError(Exception):
    pass


class DamagedDatabase(SchemaError):
    """The file is not a whole SQLite database: cut short, emptied, or its header overwritten."""


_MAGIC = b"SQLite format 3\x00"
_HEADER_BYTES = 100


def check_file(path: Path) -> None:
    """Raises DamagedDatabase unless `path` is absent or holds a whole SQLite database file, by
    its header alone (cheap at any size; damage inside a page shows when SQLite reads it).

    An empty file is refused too: the store creates a new database beside its path and renames
    it into place, so it never leaves an empty file of its own; one there was emptied."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            header = f.read(_HEADER_BYTES)
    except FileNotFoundError:
        return
    if size == 0:
        raise DamagedDatabase("the file is empty (0 bytes)")
    if len(header) < _HEADER_BYTES:
        raise DamagedDatabase(f"the file is truncated: {size} bytes, less than SQLite's header")
    if not header.startswith(_MAGIC):
        raise DamagedDatabase("not a database: the file does not start with SQLite's header")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        raise DamagedDatabase(f"the header is damaged (page size {page_size})")
    if size % page_size:
        raise DamagedDatabase(
            f"the file is truncated: {size} bytes is not a whole number of {page_size}-byte pages"
        )
    pages = int.from_bytes(header[28:32], "big")
    # The header's page count is valid only when its "version valid for" equals the change
    # counter (SQLite's file format, §1.3.7). And only without a -wal beside the file: while
    # a checkpoint (another connection's, a moment before) copies pages into the file, the page
    # holding the count can land before the pages that extend the file, and SQLite reads what
    # is not in the file yet from the -wal.
    if header[92:96] == header[24:28] and size < pages * page_size and not _has_wal(path):
        raise DamagedDatabase(
            f"the file is truncated: {size} bytes, but its header counts {pages} pages of "
            f"{page_size} bytes ({pages * page_size} bytes)"
        )


def _has_wal(path: Path) -> bool:
    try:
        return path.with_name(path.name + "-wal").stat().st_size > 0
    except FileNotFoundError:
        return False


def migrate(conn: sqlite3.Connection, sketch_format: str) -> None:
    """Brings a database to SCHEMA_VERSION; refuses files that are not ours or are newer."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not tables:
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # only takes effect before any table
    if tables and "meta" not in tables:
        raise SchemaError("the file is an SQLite database, but not a statsd-gateway one")
    version = 0
    if "meta" in tables:
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"the database has schema version {version}, newer than this release's "
            f"{SCHEMA_VERSION}: upgrade statsd-gateway"
        )
    if version < SCHEMA_VERSION:
        steps = "".join(MIGRATIONS[v] for v in range(version + 1, SCHEMA_VERSION + 1))
        # One transaction: a crash mid-migration leaves the old version intact.
        conn.executescript(
            f"BEGIN IMMEDIATE;{steps}"
            f"INSERT OR REPLACE INTO meta VALUES('schema_version', '{SCHEMA_VERSION}');"
            f"INSERT OR IGNORE INTO meta VALUES('sketch_format', '{sketch_format}');"
            "INSERT OR IGNORE INTO meta VALUES('flushed_seq', '0');"
            "COMMIT;"
        )
        if 1 <= version < 4:
            log.info(
                "database upgraded from schema %d to %d: its bucket rows are sealed into "
                "compressed chunks in the background (progress below)",
                version,
                SCHEMA_VERSION,
            )
    fmt = conn.execute("SELECT value FROM meta WHERE key='sketch_format'").fetchone()[0]
    if fmt != sketch_format:
        raise SchemaError(f"sketch format {fmt!r} is not {sketch_format!r}")
