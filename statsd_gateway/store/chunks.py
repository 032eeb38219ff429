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


def _widths(top: npt.NDArray[np.uint64]) -> _I64:
    """_width of every segment, from its largest zigzag value (0 for an empty one)."""
    out: _I64 = np.select([top < 1 << 8, top < 1 << 16, top < 1 << 32], [1, 2, 4], 8).astype(
        np.int64
    )
    return out


def encode_columns(x: _F64, lengths: _I64) -> list[bytes]:
    """_column of every segment of x (consecutive, of the given lengths, which may be 0), the
    same bytes, in a few numpy passes over all of them: a chunk holds dozens of columns, most
    of a few hundred values, where a pass per column costs more than its values do."""
    m = lengths.size
    ends = np.cumsum(lengths)
    starts = ends - lengths
    seg = np.repeat(np.arange(m), lengths)
    first = starts[lengths > 0]

    def per_segment(flags: npt.NDArray[np.bool_]) -> _I64:
        c = np.concatenate(([0], np.cumsum(flags, dtype=np.int64)))
        out: _I64 = c[ends] - c[starts]
        return out

    with np.errstate(invalid="ignore"):
        ok = (np.abs(x) < _SAFE_INT) & (np.floor(x) == x) & ~((x == 0.0) & np.signbit(x))
    all_nan = (lengths > 0) & (per_segment(np.isnan(x)) == lengths)
    integral = per_segment(~ok) == 0
    v = np.where(ok, x, 0.0).astype(np.int64)
    d = v.copy()
    d[1:] -= v[:-1]
    d[first] = v[first]
    plain, deltas = _zigzag(v), _zigzag(d)
    zero = np.zeros(m, dtype=np.uint64)
    top_p, top_d = zero.copy(), zero.copy()
    if first.size:
        nonempty = lengths > 0
        top_p[nonempty] = np.maximum.reduceat(np.where(ok, plain, 0), first)
        top_d[nonempty] = np.maximum.reduceat(np.where(ok, deltas, 0), first)
    wp, wd = _widths(top_p), _widths(top_d)
    use_plain = (wp < wd) | (wp == 1)
    tag = np.where(all_nan, 0, np.where(integral, np.where(use_plain, 3, 1), 2))
    width = np.where(tag == 3, wp, np.where(tag == 1, wd, 8))
    tag_e, width_e = tag[seg], width[seg]
    # Each segment's payload is a slice of one buffer per (tag, width): its values in order.
    buffers: dict[tuple[int, int], tuple[bytes, _I64]] = {}
    for w in (1, 2, 4, 8):
        for t, z in ((3, plain), (1, deltas)):
            sel = (tag_e == t) & (width_e == w)
            if sel.any():
                at = np.cumsum(np.where((tag == t) & (width == w), lengths, 0)) * w
                buffers[t, w] = (z[sel].astype(f"<u{w}").tobytes(), at)
    floats = tag_e == 2
    if floats.any():
        bits = x.view(np.uint64)
        xor = bits.copy()
        xor[1:] ^= bits[:-1]
        xor[first] = bits[first]
        k = np.where(tag == 2, lengths, 0)
        at = np.cumsum(k) * 8
        local = np.arange(x.size) - starts[seg]
        f_seg = seg[floats]
        # Byte b of a segment's value j goes to plane b, column j: its values' byte 0 first.
        dest = (at - 8 * k)[f_seg, None] + np.arange(8) * k[f_seg, None] + local[floats, None]
        planes = np.empty(int(at[-1]), dtype=np.uint8)
        planes[dest.ravel()] = xor[floats].astype("<u8").view(np.uint8)
        buffers[2, 8] = (planes.tobytes(), at)
    out = []
    for i, (t, w, n) in enumerate(zip(tag.tolist(), width.tolist(), lengths.tolist(), strict=True)):
        if t == 0:
            out.append(b"\x00")
            continue
        buf, at = buffers[t, w] if n else (b"", zero)
        end = int(at[i]) if n else 0
        head = b"\x02" if t == 2 else bytes((t, w))
        out.append(head + buf[end - n * w : end])
    return out


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
    window, oldest first, each once), every column of every run encoded in one pass."""
    bounds = np.asarray(cuts, dtype=np.int64)
    sizes = np.diff(bounds)

    def columns(*names: str) -> list[list[bytes]]:
        a, b = int(bounds[0]), int(bounds[-1])
        return [encode_columns(getattr(rows, name)[a:b], sizes) for name in names]

    group_a = list(zip(*columns("ts", "count", "sum", "min", "max"), strict=True))
    group_b = list(zip(*columns("last", "last_ts"), strict=True))
    blocks = _sketch_blocks(rows, cuts)
    any_hll = rows.hll.count(None) < len(rows.hll)
    out = []
    for i, (a, b) in enumerate(pairwise(cuts)):
        group_d = [b"\x00"]
        hll = [h or b"" for h in rows.hll[a:b]] if any_hll else []
        if any(hll):
            group_d = [_column(np.array([len(h) for h in hll], dtype=np.float64)), b"".join(hll)]
        mine = blocks[i]
        out.append(
            b"".join(
                [bytes((VERSION,)), _varint(b - a), _group(group_a[i]), _group(group_b[i]),
                 _varint(len(mine)), *mine, _group(group_d)]
            )
        )  # fmt: skip
    return out


def _sketch_blocks(rows: RowBatch, cuts: Sequence[int]) -> list[list[bytes]]:
    """For each run, the sketches of its rows in blocks of SKETCH_BLOCK rows, each its first
    bucket's time (8 bytes), then its group (a block without a sketch: size 0); none for a
    run without a sketch. Every block's columns are encoded in one pass per column."""
    runs = list(pairwise(cuts))
    spans = [(lo, min(lo + SKETCH_BLOCK, b)) for a, b in runs for lo in range(a, b, SKETCH_BLOCK)]
    if not spans or not rows.has_sketch[cuts[0] : cuts[-1]].any():
        return [[] for _ in runs]
    flat = rows.sketches
    bounds = flat.bounds
    lo_rows = np.array([lo for lo, _ in spans], dtype=np.int64)
    hi_rows = np.array([hi for _, hi in spans], dtype=np.int64)
    a0, b0 = cuts[0], cuts[-1]
    has = rows.has_sketch[a0:b0]
    s = np.add.reduceat(has.astype(np.int64), lo_rows - a0)
    rows_with = np.flatnonzero(has) + a0
    # Items without a sketch hold empty stores: their bins are none of the block's.
    lens = np.diff(bounds[2 * a0 : 2 * b0 + 1]).reshape(-1, 2)[has].reshape(-1)
    n_bins = bounds[2 * hi_rows] - bounds[2 * lo_rows]
    lo_bin, hi_bin = int(bounds[2 * a0]), int(bounds[2 * b0])
    cols = [
        encode_columns(has.astype(np.float64), hi_rows - lo_rows),
        encode_columns(flat.zero[rows_with], s),
        encode_columns(lens.astype(np.float64), 2 * s),
        encode_columns(flat.keys[lo_bin:hi_bin].astype(np.float64), n_bins),
        encode_columns(np.asarray(flat.counts[lo_bin:hi_bin], dtype=np.float64), n_bins),
    ]
    firsts = rows.ts[lo_rows].astype("<f8")
    encoded = []
    for j, (k, nb) in enumerate(zip(s.tolist(), n_bins.tolist(), strict=True)):
        first = firsts[j : j + 1].tobytes()
        if not k:
            encoded.append(first + _varint(0))
            continue
        group = [_varint(k) + _varint(nb), *(c[j] for c in cols)]
        encoded.append(first + _group(group))
    out = []
    at = 0
    for a, b in runs:
        n = -(-(b - a) // SKETCH_BLOCK)
        mine = encoded[at : at + n]
        at += n
        out.append(mine if rows.has_sketch[a:b].any() else [])
    return out
