"""The chunk format SGC1: one series' closed buckets of one tier over one window, compressed.

Shared by every backend that keeps chunks (SQLite now, PostgreSQL next): they store the blob
and the (series, tier, window start) it belongs to; what is inside is this module's business.
A chunk covers the window [start, start + chunk_span(res)) of tier `res` (BUCKETS_PER_CHUNK
buckets, at most a day's: an hour of 10 s buckets, 6 h of 1 min, a day of 1 h; aligned to
multiples of the span from the epoch) and holds the rows of its buckets,
oldest first, each once.

Layout: a version byte (1), the row count n (varint), then four groups, each a varint length
and that many bytes of zlib (0: the group is absent, every column of it empty):

- A `ts count sum min max`, one value per row;
- B `last last_ts`, one per row (gauges);
- C the sketches, in blocks of SKETCH_BLOCK rows (a varint count of blocks, 0 when no row has
  a sketch; each block its first row's time as 8 bytes, then its group, so that a read of part
  of the window decompresses only the blocks it overlaps): `has` (0/1 per row), then for the s
  rows that have one `zero` (s values), `lens` (2s: each sketch's positive then negative store
  length) and the stores' bins concatenated, `keys` and `counts`;
- D the HyperLogLogs: `hll_len` (bytes per row, 0: none), then the registers as they are.

A column is a tag byte and its payload: 0 every value NaN (no payload); 1 integers, a width
byte w (1, 2, 4, 8) and the zigzag deltas of the values (the first from 0) as w-byte
little-endian integers; 3 the same with the values' own zigzag (no deltas: the encoder takes
it when it is narrower, or one byte wide); 2 floats: each value's IEEE bits XOR the previous
value's (Gorilla's idea; the first XOR 0) as 8-byte little-endian integers, byte-shuffled
(every value's byte 0, then every byte 1, ...).
The encoder picks 1 when every value is an integer float below 2**53 (bit for bit, so -0.0 and
NaN go to 2), else 2. So aligned timestamps (constant deltas), repeated counts and small integer
values shrink to almost nothing under zlib, and any float comes back bit for bit.

This module encodes; chunks_decode.py reads chunks back (`decode_chunks`).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from itertools import pairwise

import numpy as np
import numpy.typing as npt

from statsd_gateway.model import RowBatch

VERSION = 1
FORMAT = "SGC1"
BUCKETS_PER_CHUNK = 360
# Rows per sketch block: a read of part of a chunk decompresses and decodes only the blocks
# it overlaps (an hour of the 1 min tier's 6 h windows).
SKETCH_BLOCK = 60
_LEVEL = 6
_SAFE_INT = float(1 << 53)

_F64 = npt.NDArray[np.float64]
_I64 = npt.NDArray[np.int64]


def buckets_per_chunk(res: float) -> int:
    """How many buckets of tier `res` a chunk window spans: BUCKETS_PER_CHUNK, or a day's
    worth where that is fewer (an hourly tier: 24), so that a coarse tier's head, which holds
    its open window, stays small."""
    return max(1, min(BUCKETS_PER_CHUNK, int(86400 // res)))


def chunk_span(res: float) -> float:
    """The width of a chunk window of tier `res` (windows align to multiples of it)."""
    return res * buckets_per_chunk(res)


def chunk_starts(ts: _F64, res: float) -> _F64:
    """The start of the chunk window each bucket time falls in."""
    span = chunk_span(res)
    out: _F64 = np.floor(ts / span) * span
    return out


class ChunkError(ValueError):
    """A blob that is not a whole SGC1 chunk (cut short, another version, inconsistent)."""


# -- encoding --------------------------------------------------------------------------------


def _varint(x: int) -> bytes:
    out = bytearray()
    while x >= 0x80:
        out.append((x & 0x7F) | 0x80)
        x >>= 7
    out.append(x)
    return bytes(out)


def _shuffled(u: npt.NDArray[np.uint64]) -> bytes:
    """Every value's byte 0, then every byte 1, ... (the XORs' high bytes are mostly 0)."""
    return u.astype("<u8").view(np.uint8).reshape(-1, 8).T.tobytes()


def _integral(x: _F64) -> bool:
    """Whether every value is an integer float below 2**53 (-0.0 and NaN are not)."""
    with np.errstate(invalid="ignore"):
        ok = (np.abs(x) < _SAFE_INT) & (np.floor(x) == x) & ~((x == 0.0) & np.signbit(x))
    return bool(ok.all())


def _width(z: npt.NDArray[np.uint64]) -> int:
    top = int(z.max()) if z.size else 0
    return 1 if top < 1 << 8 else 2 if top < 1 << 16 else 4 if top < 1 << 32 else 8


def _zigzag(v: _I64) -> npt.NDArray[np.uint64]:
    out: npt.NDArray[np.uint64] = ((v << 1) ^ (v >> 63)).view(np.uint64)
    return out


def _int_column(v: _I64) -> bytes:
    """Tag 3 (the values themselves) where it is narrower than tag 1 (their deltas), or one
    byte wide: it decodes without a running sum. Counts, sketch lengths and flags take it;
    timestamps and sketch keys, which climb, take deltas, as do wider values (whose deltas
    zlib folds better)."""
    d = np.empty_like(v)
    if v.size:
        d[0] = v[0]
        np.subtract(v[1:], v[:-1], out=d[1:])
    plain, deltas = _zigzag(v), _zigzag(d)
    wp, wd = _width(plain), _width(deltas)
    if wp < wd or wp == 1:
        return bytes((3, wp)) + plain.astype(f"<u{wp}").tobytes()
    return bytes((1, wd)) + deltas.astype(f"<u{wd}").tobytes()


def _column(x: _F64) -> bytes:
    """One column, as the module's docstring lays it out."""
    if x.size and bool(np.isnan(x).all()):
        return b"\x00"
    if _integral(x):
        return _int_column(x.astype(np.int64))
    bits = np.ascontiguousarray(x, dtype=np.float64).view(np.uint64)
    xor = bits.copy()
    xor[1:] ^= bits[:-1]
    return b"\x02" + _shuffled(xor)


def _group(columns: Sequence[bytes]) -> bytes:
    if all(c == b"\x00" for c in columns):
        return _varint(0)
    packed = zlib.compress(b"".join(columns), _LEVEL)
    return _varint(len(packed)) + packed


def encode_chunk(rows: RowBatch) -> bytes:
    """The chunk of `rows`: one series' buckets of one window, oldest first, each once."""
    return encode_chunks(rows, [0, len(rows)])[0]


def encode_chunks(rows: RowBatch, cuts: Sequence[int]) -> list[bytes]:
    """The chunk of each run rows[cuts[i]:cuts[i + 1]] (each one series' buckets of one
    window, oldest first, each once), from slices of the batch's arrays (no copy per run)."""
    hll_all = [h or b"" for h in rows.hll]
    hll_len_all = np.array([len(h) for h in hll_all], dtype=np.float64)
    out = []
    for a, b in pairwise(cuts):
        has = rows.has_sketch[a:b]
        group_a = [_column(rows.ts[a:b]), _column(rows.count[a:b]), _column(rows.sum[a:b])]
        group_a += [_column(rows.min[a:b]), _column(rows.max[a:b])]
        group_b = [_column(rows.last[a:b]), _column(rows.last_ts[a:b])]
        blocks = _sketch_blocks(rows, a, b) if has.any() else []
        group_d = [b"\x00"]
        if hll_len_all[a:b].any():
            group_d = [_column(hll_len_all[a:b]), b"".join(hll_all[a:b])]
        out.append(
            b"".join(
                [bytes((VERSION,)), _varint(b - a), _group(group_a), _group(group_b),
                 _varint(len(blocks)), *blocks, _group(group_d)]
            )
        )  # fmt: skip
    return out


def _sketch_blocks(rows: RowBatch, a: int, b: int) -> list[bytes]:
    """The sketches of rows [a, b) in blocks of SKETCH_BLOCK rows, each its first bucket's
    time (8 bytes), then its group (a block without a sketch: size 0)."""
    flat = rows.sketches
    bounds = flat.bounds
    out = []
    for lo_row in range(a, b, SKETCH_BLOCK):
        hi_row = min(lo_row + SKETCH_BLOCK, b)
        has = rows.has_sketch[lo_row:hi_row]
        first = np.float64(rows.ts[lo_row]).astype("<f8").tobytes()
        s = int(has.sum())
        if not s:
            out.append(first + _varint(0))
            continue
        # Items without a sketch hold empty stores: their bins are none of the block's.
        lo, hi = int(bounds[2 * lo_row]), int(bounds[2 * hi_row])
        lens = np.diff(bounds[2 * lo_row : 2 * hi_row + 1]).reshape(-1, 2)[has].reshape(-1)
        group = [_varint(s) + _varint(hi - lo), _column(has.astype(np.float64))]
        group += [_column(flat.zero[lo_row:hi_row][has]), _column(lens.astype(np.float64))]
        group += [_column(flat.keys[lo:hi].astype(np.float64)), _column(flat.counts[lo:hi])]
        out.append(first + _group(group))
    return out
