"""The Store contract: what the flusher, the query engine, retention, the catalog and the
idempotency ledger ask of a backend, and the records that cross that seam.

A backend (SQLite, the in-memory store of the unit tests, PostgreSQL next) implements `Store`.
Nothing outside `store/` sees a connection, a cursor or a thread of a backend: every method is a
domain-level coroutine, safe to await from the event loop, and a backend runs its work where it
likes (SQLite: one writer thread, a pool of readers).

Rules every backend keeps:
- `write_flush` is one atomic unit: the finest tier's rows, the coarse tiers' completed buckets,
  how far each tier is complete, the gauges' current values, the idempotency records, and the
  flush's seq are all stored or none is. A flush whose seq is at or below the stored one is
  ignored (a retry after an answer that never arrived) and answers False.
- A bucket already stored is merged with, never overwritten: counts and sums add, min/max
  combine, `last` keeps the latest `last_ts`, sketches and HyperLogLogs merge. How is the
  backend's business (SQLite merges in its upsert).
- `trial=True` does the whole write and rolls it back: it raises what the real write would.
- An outage (the backend unreachable, locked, full, its file removed) raises StoreError (or a
  subclass), after which the same call is worth retrying; an error of the data itself (a value
  the backend cannot hold) propagates as raised, so the flusher can set the rows aside.
- Series are listed (`series`, the series of `read_rows`) by name, then by tags in the order of
  their canonical JSON text (`{"k":"v",...}`, keys sorted, no spaces) compared by code point, as
  SQLite's `ORDER BY name, tags` lists them; never by id.
- Reads see one consistent state: `read_rows` answers the flushed seq and the rows from the same
  transaction, so the caller can add what memory holds above that seq, and nothing twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from statsd_gateway import sketch
from statsd_gateway.model import Matcher, MetricType, RowBatch, SeriesKey, Tags

# The numeric columns of a bucket row a read may ask for.
NUMERIC_COLUMNS = ("count", "sum", "min", "max", "last", "last_ts")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SeriesInfo:
    id: int
    tenant: str
    name: str
    tags: Tags
    type: MetricType


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    tenant: str
    key: str
    body_sha256: str
    status: int
    response: str  # the JSON body answered
    created: float
    seq: int = 0  # the snapshot holding the points this request applied


@dataclass(frozen=True, slots=True)
class Columns:
    """Bucket rows as arrays, one element per row (no Python object per row).

    `series[i]` is the position of row i's series in the series list the rows were read for
    (None when the rows' series were not read).
    `values` maps each numeric column read (of NUMERIC_COLUMNS) to float64, NaN where NULL.
    `sketches` holds the bins of the rows `sketch_rows`, in row order, as flat arrays (a row
    without a sketch has none); `hlls` and `hll_rows` likewise for HyperLogLog blobs.
    """

    ts: npt.NDArray[np.float64]
    series: npt.NDArray[np.int64] | None
    values: dict[str, npt.NDArray[np.float64]]
    sketches: sketch.FlatBins
    sketch_rows: npt.NDArray[np.int64]
    hlls: list[bytes]
    hll_rows: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.ts.size)


def concat_columns(parts: Sequence[Columns], values: Sequence[str]) -> Columns:
    """The rows of the parts in order, as one Columns (their `series` index the same list)."""
    parts = [c for c in parts if len(c)] or list(parts[:1])
    if len(parts) == 1:
        return parts[0]
    empty = np.empty(0, dtype=np.int64)
    if not parts:
        return Columns(
            np.empty(0), empty, {v: np.empty(0) for v in values}, sketch.decode_flat([]), empty,
            [], empty,
        )  # fmt: skip
    starts = np.cumsum([0, *(len(c) for c in parts[:-1])]).tolist()
    series = [c.series for c in parts if c.series is not None]
    return Columns(
        ts=np.concatenate([c.ts for c in parts]),
        series=np.concatenate(series) if len(series) == len(parts) else None,
        values={v: np.concatenate([c.values[v] for c in parts]) for v in values},
        sketches=sketch.flat_concat([c.sketches for c in parts]),
        sketch_rows=np.concatenate([c.sketch_rows + s for s, c in zip(starts, parts, strict=True)]),
        hlls=[h for c in parts for h in c.hlls],
        hll_rows=np.concatenate([c.hll_rows + s for s, c in zip(starts, parts, strict=True)]),
    )


def columns_from_tuples(
    raw: Sequence[tuple[Any, ...]],
    names: Sequence[str],
    values: Sequence[str],
    position: Mapping[int, int],
    *,
    blob_lists: bool = False,
) -> Columns:
    """Rows fetched as tuples of the columns `names` (of "ts", "series_id", NUMERIC_COLUMNS,
    "sketch", "hll"; None for NULL), as Columns: `values` the numeric columns, the series as
    their place in the series list (`position`: series id -> place; every row's series is in
    it) when "series_id" was fetched, the blobs when fetched. `blob_lists`: each row's "sketch"
    and "hll" are lists of blobs (None or empty: none), merged into the row's one."""
    # Column by column, each straight from the rows; np.fromiter turns None (NULL) into NaN.
    n = len(raw)

    def column(name: str) -> Any:
        return map(itemgetter(names.index(name)), raw)

    ts = np.fromiter(column("ts"), dtype=np.float64, count=n)
    numbers = {v: np.fromiter(column(v), dtype=np.float64, count=n) for v in values}
    sketch_column = list(column("sketch")) if "sketch" in names else []
    hll_column = list(column("hll")) if "hll" in names else []
    if blob_lists:
        bins, sketch_rows = _merged_sketches(sketch_column)
        hll_blobs, hll_rows = _present([_merged_hll(h) for h in hll_column])
    else:
        sketch_blobs, sketch_rows = _present(sketch_column)
        bins = sketch.decode_flat(sketch_blobs)
        hll_blobs, hll_rows = _present(hll_column)
    at = None
    if "series_id" in names:
        known = np.fromiter(position.keys(), dtype=np.int64, count=len(position))
        order = np.argsort(known)
        sid = np.fromiter(column("series_id"), dtype=np.int64, count=n)
        at = np.fromiter(position.values(), dtype=np.int64, count=len(position))[order]
        at = at[np.searchsorted(known[order], sid)]
    return Columns(
        ts=ts,
        series=at,
        values=numbers,
        sketches=bins,
        sketch_rows=sketch_rows,
        hlls=hll_blobs,
        hll_rows=hll_rows,
    )


def _present(column: list[Any]) -> tuple[list[bytes], npt.NDArray[np.int64]]:
    """The non-NULL blobs of a column, and their row numbers."""
    if None not in column:  # the usual case: every row of a sketch-backed metric has one
        return column, np.arange(len(column), dtype=np.int64)
    rows = [i for i, b in enumerate(column) if b is not None]
    return [column[i] for i in rows], np.array(rows, dtype=np.int64)


def _merged_sketches(
    column: list[list[bytes] | None],
) -> tuple[sketch.FlatBins, npt.NDArray[np.int64]]:
    """Each row's sketches merged (one decode and one merge for all rows), and the rows with
    any."""
    lists = [b or [] for b in column]
    rows = np.array([i for i, b in enumerate(lists) if b], dtype=np.int64)
    blobs = [blob for b in lists for blob in b]
    if len(blobs) == rows.size:  # one sketch per row: nothing to merge
        return sketch.decode_flat(blobs), rows
    sizes = np.array([len(lists[i]) for i in rows.tolist()], dtype=np.int64)
    groups = np.repeat(np.arange(rows.size, dtype=np.int64), sizes)
    return sketch.merge_flat(sketch.decode_flat(blobs), groups, int(rows.size)), rows


def _merged_hll(blobs: list[bytes] | None) -> bytes | None:
    if not blobs:
        return None
    return blobs[0] if len(blobs) == 1 else sketch.hll_merge(blobs)


@dataclass(frozen=True, slots=True)
class OthersSeries:
    """Series other gateways of a shared store stored (`added`) and deleted (`deleted`)."""

    added: list[SeriesInfo] = field(default_factory=list)
    deleted: list[SeriesKey] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class StoredState:
    """What a store holds that the daemon needs at start."""

    series: list[SeriesInfo]
    flushed_seq: int
    # Per coarse tier: every bucket before this time is written in that tier.
    complete_until: dict[float, float]
    # The current value and its time of every gauge, as last flushed.
    gauges: dict[SeriesKey, tuple[float, float]]


@dataclass(frozen=True, slots=True)
class FlushWrite:
    """One flush, written as one atomic unit (see the module's rules)."""

    seq: int | None  # the aggregator's snapshot; None for rows from elsewhere (imports)
    rows: RowBatch  # the finest tier's rows
    rollups: Mapping[float, RowBatch] = field(default_factory=dict)
    complete_until: Mapping[float, float] = field(default_factory=dict)
    gauges: Mapping[SeriesKey, tuple[float, float]] = field(default_factory=dict)
    idempotency: Sequence[IdempotencyRecord] = ()
    # Idempotency records created before this are deleted in the same unit.
    idempotency_expire_before: float | None = None


@dataclass(frozen=True, slots=True)
class RowRead:
    """The stored bucket rows of one metric's series matching `matchers`, start <= ts < until.

    The backend picks the tiers: the coarsest whose resolution divides `window` (any, if None)
    serves the whole buckets it has completed, finer ones the edges (store/tiers.py). Only the
    columns asked for are read: `values` (of NUMERIC_COLUMNS), the sketch blobs, the HLL blobs,
    and the rows' series (to group by tags). `sketch_budget`, if set, is called with the number
    of bucket sketches the read would merge before any row is read; it raises to refuse."""

    tenant: str
    name: str
    matchers: tuple[Matcher, ...]
    start: float
    until: float
    window: float | None
    values: tuple[str, ...] = ()
    sketches: bool = False
    hll: bool = False
    by_series: bool = False
    sketch_budget: Callable[[int], None] | None = None


@dataclass(frozen=True, slots=True)
class StoredRows:
    """The answer to a RowRead: the flushed seq and the rows, from one consistent state."""

    flushed_seq: int
    series: list[SeriesInfo]  # the matching series; `cols.series` indexes it
    cols: Columns


class Store(Protocol):
    """A backend for the rolled-up buckets. `resolutions`: the tiers' widths, finest first."""

    resolutions: tuple[float, ...]
    read_timeout: float

    @property
    def gone(self) -> str | None:
        """Why writes fail right now because the store's files went away, or None."""
        ...

    # -- lifecycle
    async def open(self) -> StoredState: ...
    async def close(self, timeout: float | None = None) -> None: ...
    async def ensure_in_place(self, *, recreate: bool = False) -> None:
        """Checks the store is still where it was opened (reopening it if it can)."""
        ...

    # -- writes
    async def write_flush(self, flush: FlushWrite, *, trial: bool = False) -> bool:
        """Stores the flush; False if its seq was stored already (nothing done)."""
        ...

    async def write_rollups(
        self, rollups: Mapping[float, RowBatch], complete_until: Mapping[float, float]
    ) -> None:
        """Completed coarse buckets and how far each tier is complete (history imports)."""
        ...

    async def delete_series(self, keys: Sequence[SeriesKey]) -> tuple[int, int]:
        """Deletes the series and their rows in every tier; returns (series stored, rows)."""
        ...

    async def delete_expired(self, resolution: float, before: float) -> int:
        """Deletes tier `resolution`'s rows older than `before`, in short units that let
        flushes interleave; frees the space; returns the rows deleted."""
        ...

    async def seal_chunks(self, on_sealed: Callable[[int], None] | None = None) -> int:
        """Moves every bucket of a complete chunk window from the tiers' heads into their
        chunks (a backend without chunks: nothing), in short units that let flushes
        interleave, telling `on_sealed` what each unit moved; returns the buckets moved.
        Answers are the same before and after."""
        ...

    async def forget_stale_series(self, horizon: float) -> list[SeriesKey]:
        """Deletes series created before `horizon` with no row in any coarse tier and not
        written by this process since; returns their keys."""
        ...

    # -- reads
    async def flushed_seq(self) -> int: ...
    async def read_rows(self, request: RowRead) -> StoredRows: ...
    async def read_rows_then(self, request: RowRead, then: Callable[[StoredRows], T]) -> T:
        """then(the rows read_rows answers), called off the event loop where the backend read
        them, once the read transaction is over: a caller that reduces the rows saves a
        thread hop. `then` must not touch the loop; what it raises is raised here."""
        ...

    async def read_for_rebuild(self, resolution: float, since: float) -> RowBatch:
        """Every row of tier `resolution` from `since` on (the open rollups, at start)."""
        ...

    async def series(
        self, tenant: str, name: str | None = None, matchers: Sequence[Matcher] = ()
    ) -> list[SeriesInfo]:
        """The tenant's series (of metric `name`, if given) whose tags pass every matcher."""
        ...

    async def tag_values(self, tenant: str, key: str, name: str | None = None) -> dict[str, int]:
        """The values of tag `key` over the tenant's series (of `name`), each with how many
        series carry it."""
        ...

    async def idempotency_record(self, tenant: str, key: str) -> IdempotencyRecord | None: ...
    async def series_of_others(self) -> OthersSeries:
        """What other gateways sharing the store changed since the last call (the first: since
        open): the series they stored, which this one lists and answers too, and the series
        they deleted, which this one forgets; nothing for a store one gateway owns."""
        ...

    async def claim_idempotency(self, claim: IdempotencyRecord) -> IdempotencyRecord | None:
        """The key's stored record (status 0: a claim, another gateway applying that request
        now), or None once the key is claimed for this gateway (`claim`: its status 0, its seq
        the snapshot its points go in; the flush storing that snapshot completes it). A store
        one gateway owns has no one to claim against: it answers the stored record."""
        ...

    async def release_idempotency(self, claim: IdempotencyRecord) -> None:
        """Gives up this gateway's claim (the request failed; the key is unused again)."""
        ...
