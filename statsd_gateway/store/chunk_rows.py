"""Decoded chunks (store/chunks_decode.py) as the store's records, for every backend that keeps
chunks: the rows of a range as Columns, a chunk's rows as a RowBatch (to merge and re-encode
when sealing), and flat sketches spread one per row."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import numpy.typing as npt

from statsd_gateway import sketch
from statsd_gateway.model import MetricType, RowBatch, SeriesKey
from statsd_gateway.store.base import NUMERIC_COLUMNS, Columns
from statsd_gateway.store.chunks_decode import DecodedChunks, decode_chunks

_I64 = npt.NDArray[np.int64]


def in_range_columns(
    d: DecodedChunks, owner: _I64, since: float, until: float, by_series: bool
) -> Columns:
    """The decoded rows with since <= ts < until as Columns; `owner[c]`: the series position
    of chunk c."""
    keep = (d.ts >= since) & (d.ts < until)
    if keep.all():  # the usual case: whole chunks inside the range
        return Columns(
            d.ts, owner[d.chunk] if by_series else None, d.values, d.sketches, d.sketch_rows,
            d.hlls, d.hll_rows,
        )  # fmt: skip
    rows = np.flatnonzero(keep)
    new_index = np.cumsum(keep) - 1
    sk_keep = keep[d.sketch_rows]
    hll_keep = keep[d.hll_rows].tolist()
    # The decoder gave the rows outside [since, until) no sketch: none is to go, as a rule.
    sketches = (
        d.sketches if sk_keep.all() else sketch.flat_take(d.sketches, np.flatnonzero(sk_keep))
    )
    return Columns(
        ts=d.ts[rows],
        series=owner[d.chunk[rows]] if by_series else None,
        values={v: a[rows] for v, a in d.values.items()},
        sketches=sketches,
        sketch_rows=new_index[d.sketch_rows[sk_keep]],
        hlls=[h for h, k in zip(d.hlls, hll_keep, strict=True) if k],
        hll_rows=new_index[d.hll_rows[keep[d.hll_rows]]],
    )


def chunk_row_batch(
    found: Sequence[tuple[int, bytes]],
    key_of: Callable[[int], tuple[SeriesKey, MetricType] | None],
) -> RowBatch:
    """The rows of the chunks `found` ((series id, blob) each) as a RowBatch with their series
    ids; `key_of` names each id, None for a series deleted meanwhile (its rows left out)."""
    known = [(sid, data, key_of(sid)) for sid, data in found]
    known = [k for k in known if k[2] is not None]
    if not known:
        return replace(RowBatch.from_rows([]), series=np.empty(0, dtype=np.int64))
    # Every row (the default range is all finite times: no bucket time the encoder wrote is
    # NaN or infinite, which would lose its sketch here).
    d = decode_chunks(
        [data for _, data, _ in known], NUMERIC_COLUMNS,
        sketches=True, hll=True,
    )  # fmt: skip
    n = d.ts.size
    chunk = d.chunk.tolist()
    names = [k for _, _, k in known]
    has = np.zeros(n, dtype=np.bool_)
    has[d.sketch_rows] = True
    hlls: list[bytes | None] = [None] * n
    for r, h in zip(d.hll_rows.tolist(), d.hlls, strict=True):
        hlls[r] = h
    ids = np.asarray([sid for sid, _, _ in known], dtype=np.int64)
    return RowBatch(
        ts=d.ts, keys=[names[c][0] for c in chunk], types=[names[c][1] for c in chunk],
        count=d.values["count"], sum=d.values["sum"], min=d.values["min"], max=d.values["max"],
        last=d.values["last"], last_ts=d.values["last_ts"],
        sketches=per_row(d.sketches, d.sketch_rows, n), has_sketch=has, hll=hlls,
        series=ids[d.chunk],
    )  # fmt: skip


def per_row(flat: sketch.FlatBins, rows: _I64, n: int) -> sketch.FlatBins:
    """One item per row of n: item i of `flat` at row rows[i], the empty sketch elsewhere."""
    if rows.size == n:
        return flat
    where = np.full(n, len(flat), dtype=np.int64)
    where[rows] = np.arange(rows.size)
    with_empty = sketch.flat_concat([flat, sketch.flat_from_bins([sketch.Bins.empty()])])
    return sketch.flat_take(with_empty, where)
