"""decode_chunks in C: the native module's chunk decoder (statsd_gateway/native/sg_chunks.c),
which chunks_decode.decode_chunks calls where the native module is built and not turned off.

Contract: `decode()` answers what the reference (chunks_decode's numpy decoder) answers for the
same arguments, the same arrays bit for bit or ChunkError, or None where the reference is to
decide: blobs not in a list or tuple, a blob that is not bytes or bytearray, since/until that
are not exactly floats, or an input the C decoder leaves to it (sg_chunks.h: counts past its
caps, and inputs where the reference raises something else than ChunkError). The arrays are
numpy views of the memory C filled: no copy, no Python object per row.
"""

from __future__ import annotations

from collections.abc import Set
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from statsd_gateway import sketch
from statsd_gateway.store.chunks import ChunkError

_F64 = npt.NDArray[np.float64]
_I64 = npt.NDArray[np.int64]
# The value columns in sg_chunks.h's order (bit i of `want`).
_INDEX = {name: i for i, name in enumerate(("count", "sum", "min", "max", "last", "last_ts"))}

Decoded = tuple[_F64, _I64, dict[str, _F64], sketch.FlatBins, _I64, list[bytes], _I64]


def _exact(x: Any) -> float | None:
    """x as a float where that compares as x does (the reference compares x itself)."""
    if type(x) is float:
        return x
    try:
        f = float(x)
    except (TypeError, ValueError, OverflowError):
        return None
    return f if bool(f == x) else None


def decode(
    module: ModuleType,
    blobs: Any,
    want: Set[Any],
    *,
    sketches: bool,
    hll: bool,
    since: Any,
    until: Any,
) -> Decoded | None:
    """The fields of DecodedChunks for `blobs` (`want`: the value names asked for, and "ts"),
    or None (see the module's contract)."""
    if type(blobs) is not list and type(blobs) is not tuple:
        return None
    lo, hi = (_exact(since), _exact(until)) if sketches else (0.0, 0.0)
    if lo is None or hi is None:
        return None
    mask = sum(1 << i for name, i in _INDEX.items() if name in want)
    try:
        out = module.decode_chunks(blobs, mask, bool(sketches), bool(hll), lo, hi)
    except ValueError as e:
        raise ChunkError(f"not a whole chunk: {e}") from None
    if out is None:
        return None
    ts_buf, chunk_buf, value_bufs, sk, hl = out
    ts = np.frombuffer(ts_buf, dtype=np.float64)
    values: dict[str, _F64] = {}
    for name in want:  # in the set's order, as the reference builds its dict
        if name != "ts":
            i = _INDEX.get(name)
            values[name] = (
                np.full(ts.size, np.nan)
                if i is None
                else np.frombuffer(value_bufs[i], dtype=np.float64)
            )
    # As the reference: one empty array, read-only once flat_from_arrays has taken it as keys,
    # for the rows of the sketches and HyperLogLogs not asked for.
    empty = np.empty(0, dtype=np.int64)
    flat = sketch.flat_from_arrays(empty, np.empty(0), np.zeros(1, np.int64), np.empty(0))
    sketch_rows = hll_rows = empty
    if sk is not None:
        rows, keys, counts, bounds, zero, integral = sk
        sketch_rows = np.frombuffer(rows, dtype=np.int64)
        # sg_chunks.c checked the bins as flat_from_arrays does, and computed `integral`.
        flat = sketch.flat_from_checked(
            np.frombuffer(keys, dtype=np.int64), np.frombuffer(counts, dtype=np.float64),
            np.frombuffer(bounds, dtype=np.int64), np.frombuffer(zero, dtype=np.float64),
            np.frombuffer(integral, dtype=np.bool_),
        )  # fmt: skip
    hlls: list[bytes] = []
    if hl is not None:
        hlls, hll_rows = hl[0], np.frombuffer(hl[1], dtype=np.int64)
    chunk = np.frombuffer(chunk_buf, dtype=np.int64)
    return ts, chunk, values, flat, sketch_rows, hlls, hll_rows
