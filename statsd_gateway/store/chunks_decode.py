"""Reading SGC1 chunks (the format is described in chunks.py): many at once.

`decode_chunks` runs the C decoder (native/sg_chunks.c, through chunks_native.py) where the
native module is built and not turned off (`native.native_module()`): one call for the whole
batch, without the GIL, and no Python object per row. The numpy decoder here is the reference
and the fallback (`_decode_chunks_python`): it parses each blob's header in Python (a few steps
per chunk, none per bucket) and turns every column of every chunk into one numpy pass per (tag,
width). For any bytes the two give the same arrays, bit for bit, or both raise ChunkError
(tests/test_chunk_native.py); the C decoder leaves to this one the few inputs it does not
repeat (sg_chunks.h: counts past its caps, and what raises another error here). A blob that is
not a whole chunk of this version raises ChunkError.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from statsd_gateway import native, sketch
from statsd_gateway.store import chunks_native
from statsd_gateway.store.chunks import (
    BUCKETS_PER_CHUNK,
    FORMAT,
    SKETCH_BLOCK,
    VERSION,
    ChunkError,
)

_F64 = npt.NDArray[np.float64]
_I64 = npt.NDArray[np.int64]


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    x = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise ChunkError("cut short in a varint")
        b = data[at]
        at += 1
        x |= (b & 0x7F) << shift
        if b < 0x80:
            return x, at
        shift += 7


@dataclass(slots=True)
class _Segments:
    """The payloads of one column over many chunks, by (tag, width), to decode in one pass."""

    parts: dict[tuple[int, int], list[tuple[bytes, int, int, int]]]

    def add(self, tag: int, width: int, data: bytes, at: int, m: int, out_at: int) -> None:
        self.parts.setdefault((tag, width), []).append((data, at, m, out_at))


def _read_column(data: bytes, at: int, m: int, segs: _Segments | None, out_at: int) -> int:
    """Reads the column of m values at `at` into `segs` (if given); returns where it ends."""
    if at >= len(data):
        raise ChunkError("cut short before a column")
    tag = data[at]
    if tag == 0:
        if segs is not None:
            segs.add(0, 0, data, at + 1, m, out_at)
        return at + 1
    if tag in (1, 3):
        if at + 1 >= len(data) or data[at + 1] not in (1, 2, 4, 8):
            raise ChunkError("bad integer width")
        width, start = data[at + 1], at + 2
    elif tag == 2:
        width, start = 8, at + 1
    else:
        raise ChunkError(f"unknown column tag {tag}")
    end = start + width * m
    if end > len(data):
        raise ChunkError("cut short in a column")
    if segs is not None:
        segs.add(tag, width, data, start, m, out_at)
    return end


def _decode_segments(segs: _Segments, total: int) -> _F64:
    """Every segment's values, placed at its `out_at`, as float64 (NaN for tag 0)."""
    out: _F64 = np.full(total, np.nan)
    for (tag, width), parts in segs.parts.items():
        if tag == 0:
            continue
        m = np.array([p[2] for p in parts], dtype=np.int64)
        count = int(m.sum())
        if not count:
            continue
        if tag in (1, 3):
            raw = b"".join([d[a : a + width * k] for d, a, k, _ in parts])
            z = np.frombuffer(raw, f"<u{width}").astype(np.uint64)
            ints = (z >> np.uint64(1)).view(np.int64) ^ -(z.view(np.int64) & 1)
            values = (_running(ints, m, np.add) if tag == 1 else ints).astype(np.float64)
        else:
            planes = np.empty(count * 8, dtype=np.uint8)
            at = 0
            for d, a, k, _ in parts:  # un-shuffle: each segment's (8, k) planes, transposed
                block = np.frombuffer(d, np.uint8, 8 * k, a).reshape(8, k)
                planes[at : at + 8 * k].reshape(k, 8)[:] = block.T
                at += 8 * k
            values = _running(planes.view("<u8"), m, np.bitwise_xor).view(np.float64)
        out_at = [p[3] for p in parts]
        if _contiguous(out_at, m, total):
            out[out_at[0] : out_at[0] + count] = values
        else:
            starts = np.cumsum(m) - m
            seg = np.repeat(np.arange(m.size), m)
            out[np.asarray(out_at, dtype=np.int64)[seg] + np.arange(count) - starts[seg]] = values
    return out


def _contiguous(out_at: list[int], m: _I64, total: int) -> bool:
    """Whether the segments, in order, fill one range of the output (the usual case: every
    chunk wrote the column the same way)."""
    ends = np.asarray(out_at, dtype=np.int64) + m
    return bool((ends[:-1] == np.asarray(out_at[1:], dtype=np.int64)).all())


def _running(x: npt.NDArray[np.int64] | npt.NDArray[np.uint64], m: _I64, op: np.ufunc) -> _I64:
    """In place, per segment of lengths m: the running `op` (np.add or np.bitwise_xor) of x, in
    one pass over all segments: each segment's first element is first combined with the
    previous segment's total, the running value the global pass reaches there, so that every
    segment starts again from its own first element."""
    nonempty = np.flatnonzero(m)
    firsts = (np.cumsum(m) - m)[nonempty]
    if firsts.size > 1:
        before = op.reduceat(x, firsts)[:-1]
        if op is np.add:
            x[firsts[1:]] -= before
        else:
            x[firsts[1:]] ^= before
    op.accumulate(x, out=x)
    return x  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class DecodedChunks:
    """The rows of many chunks as columns: `chunk[i]` is the blob row i came from; `values` the
    numeric columns asked for; `sketches` the bins of the rows `sketch_rows` (in row order);
    `hlls` the HyperLogLogs of the rows `hll_rows`."""

    ts: _F64
    chunk: _I64
    values: dict[str, _F64]
    sketches: sketch.FlatBins
    sketch_rows: _I64
    hlls: list[bytes]
    hll_rows: _I64


_A = ("ts", "count", "sum", "min", "max")
_B = ("last", "last_ts")


def _size(blob: bytes, at: int) -> tuple[int, int]:
    size = blob[at] if at < len(blob) else 0x80  # one byte, the usual case, read inline
    if size < 0x80:
        return size, at + 1
    return _read_varint(blob, at)


def _groups(
    blob: bytes, need_b: bool, hll: bool
) -> tuple[int, bytes, bytes, list[tuple[float, memoryview]], bytes]:
    """The row count, groups A and B, the sketch blocks (each its first time and its group,
    still compressed) and group D (decompressed where wanted, else b"")."""
    if not blob or blob[0] != VERSION:
        raise ChunkError(f"not an {FORMAT} chunk of version {VERSION}")
    view = memoryview(blob)
    end = len(blob)
    n, at = _read_varint(blob, 1)
    out = []
    blocks: list[tuple[float, memoryview]] = []
    for want in (True, need_b, None, hll):
        if want is None:  # the sketch blocks
            k, at = _read_varint(blob, at)
            for _ in range(k):
                if at + 8 > end:
                    raise ChunkError("cut short in a sketch block")
                first = float(np.frombuffer(blob, "<f8", 1, at)[0])
                size, at = _size(blob, at + 8)
                if at + size > end:
                    raise ChunkError("cut short in a sketch block")
                blocks.append((first, view[at : at + size]))
                at += size
            continue
        size, at = _size(blob, at)
        if at + size > end:
            raise ChunkError("cut short in a group")
        out.append(zlib.decompress(view[at : at + size]) if size and want else b"")
        at += size
    if at != end:
        raise ChunkError("bytes after the last group")
    if not out[0] and n:
        raise ChunkError("no timestamps")
    if n > BUCKETS_PER_CHUNK:  # else a few bytes could claim rows enough to fill the memory
        raise ChunkError("more rows than a chunk window holds")
    return n, out[0], out[1], blocks, out[2]


def decode_chunks(
    blobs: Sequence[bytes],
    values: Sequence[str] = (*_A[1:], *_B),
    *,
    sketches: bool = False,
    hll: bool = False,
    since: float = -math.inf,
    until: float = math.inf,
) -> DecodedChunks:
    """The rows of every blob, in blob order: `ts`, the `values` asked for (of count, sum, min,
    max, last, last_ts), and the sketches and HyperLogLogs if asked. Only the groups holding
    those are decompressed, and of the sketches only the blocks overlapping [since, until),
    and of those only the rows in it: a row outside comes back without its sketch (the
    caller keeps the range's rows), and its bins are neither kept nor judged.
    Raises ChunkError for a blob that is not a whole chunk."""
    values = tuple(values)  # read twice where the native decoder leaves the call to numpy's
    want = set(values) | {"ts"}
    module = native.native_module()
    if module is not None:
        out = chunks_native.decode(
            module, blobs, want, sketches=sketches, hll=hll, since=since, until=until
        )
        if out is not None:
            return DecodedChunks(*out)
    return _decode_chunks_python(
        blobs, values, sketches=sketches, hll=hll, since=since, until=until
    )


def _decode_chunks_python(
    blobs: Sequence[bytes],
    values: Sequence[str],
    *,
    sketches: bool,
    hll: bool,
    since: float,
    until: float,
) -> DecodedChunks:
    """decode_chunks with numpy: the reference (and where the native module is not built or
    leaves a call to it, the fallback)."""
    want = set(values) | {"ts"}
    segs = {name: _Segments({}) for name in want}
    sk = {name: _Segments({}) for name in ("has", "zero", "lens", "keys", "counts")}
    hll_segs = _Segments({})
    hll_parts: list[tuple[int, bytes, int, int]] = []
    sizes = np.zeros(len(blobs), dtype=np.int64)
    row = sk_row = n_bins = 0
    need_b = bool(want & set(_B))
    # Group A's columns are parsed up to the last one wanted only (the others are skipped).
    a_names = _A[: max(i for i, name in enumerate(_A) if name in want) + 1]
    a_segs = [segs.get(name) for name in a_names]
    b_segs = [segs.get(name) for name in _B]
    try:
        for c, blob in enumerate(blobs):
            n, a, b, blocks, d = _groups(blob, need_b, hll)
            sizes[c] = n
            at = 0
            for seg in a_segs:
                at = _read_column(a, at, n, seg, row)
            if need_b:
                at = 0
                for seg in b_segs:
                    if b:
                        at = _read_column(b, at, n, seg, row)
                    elif seg is not None:
                        seg.add(0, 0, b, 0, n, row)
            if sketches:
                if len(blocks) != -(-n // SKETCH_BLOCK) and blocks:
                    raise ChunkError("the sketch blocks do not cover the rows")
                covered = 0
                for i, (first, packed) in enumerate(blocks):
                    m = min(SKETCH_BLOCK, n - covered)
                    after = blocks[i + 1][0] if i + 1 < len(blocks) else math.inf
                    if not len(packed) or first >= until or after <= since:
                        sk["has"].add(0, 0, b"", 0, m, row + covered)
                    else:
                        cg = zlib.decompress(packed)
                        s, at = _read_varint(cg, 0)
                        nb, at = _read_varint(cg, at)
                        at = _read_column(cg, at, m, sk["has"], row + covered)
                        at = _read_column(cg, at, s, sk["zero"], sk_row)
                        at = _read_column(cg, at, 2 * s, sk["lens"], 2 * sk_row)
                        at = _read_column(cg, at, nb, sk["keys"], n_bins)
                        _read_column(cg, at, nb, sk["counts"], n_bins)
                        sk_row, n_bins = sk_row + s, n_bins + nb
                    covered += m
                if not blocks:
                    sk["has"].add(0, 0, b"", 0, n, row)
            if hll and d:
                hll_parts.append((row, d, _read_column(d, 0, n, hll_segs, row), n))
            row += n
    except zlib.error as e:
        raise ChunkError(f"damaged: {e}") from None
    cols = {name: _decode_segments(segs[name], row) for name in want}
    empty = np.empty(0, dtype=np.int64)
    flat, sketch_rows = sketch.flat_from_arrays(empty, np.empty(0), np.zeros(1, np.int64),
                                                np.empty(0)), empty  # fmt: skip
    ts = cols.pop("ts")
    if sketches:
        flat, sketch_rows = _flat_sketches(sk, row, sk_row, n_bins, ts, since, until)
    hlls, hll_rows = _hlls(hll_segs, hll_parts, row) if hll else ([], empty)
    chunk = np.repeat(np.arange(len(blobs), dtype=np.int64), sizes)
    return DecodedChunks(ts, chunk, cols, flat, sketch_rows, hlls, hll_rows)


def _flat_sketches(
    sk: dict[str, _Segments], total: int, s: int, n_bins: int, ts: _F64, since: float,
    until: float,
) -> tuple[sketch.FlatBins, _I64]:  # fmt: skip
    has = _decode_segments(sk["has"], total)
    rows = np.flatnonzero(has == 1.0)
    if rows.size != s:
        raise ChunkError("the sketch rows do not match their count")
    zero = _decode_segments(sk["zero"], s)
    lens = _decode_segments(sk["lens"], 2 * s)
    if (np.isnan(lens) | (lens < 0)).any() or int(lens.sum()) != n_bins:
        raise ChunkError("the sketch bins do not match their lengths")
    bounds = np.zeros(2 * s + 1, dtype=np.int64)
    np.cumsum(lens.astype(np.int64), out=bounds[1:])
    keys = _decode_segments(sk["keys"], n_bins)
    counts = _decode_segments(sk["counts"], n_bins)
    inside = (ts[rows] >= since) & (ts[rows] < until)
    if not inside.all():  # the rows outside lose their sketch before any bin is judged
        kept = np.flatnonzero(inside)
        starts, ends = bounds[0:-1:2][kept], bounds[2::2][kept]
        size = ends - starts
        at = np.repeat(starts - np.cumsum(size) + size, size) + np.arange(int(size.sum()))
        keys, counts = keys[at], counts[at]
        rows, zero = rows[kept], zero[kept]
        lens = lens.reshape(-1, 2)[kept].reshape(-1)
        bounds = np.zeros(2 * kept.size + 1, dtype=np.int64)
        np.cumsum(lens.astype(np.int64), out=bounds[1:])
    if np.isnan(keys).any():
        raise ChunkError("a sketch key is missing")
    try:
        flat = sketch.flat_from_arrays(keys.astype(np.int64), counts, bounds, zero)
    except ValueError as e:
        raise ChunkError(f"bad sketch bins: {e}") from None
    return flat, rows


def _hlls(
    segs: _Segments, parts: list[tuple[int, bytes, int, int]], total: int
) -> tuple[list[bytes], _I64]:
    lengths = _decode_segments(segs, total)
    out: list[bytes] = []
    rows: list[int] = []
    for first, data, at, n in parts:
        for i, length in enumerate(lengths[first : first + n].tolist()):
            k = int(length) if length == length else 0
            if k:
                out.append(data[at : at + k])
                rows.append(first + i)
                at += k
        if at != len(data):
            raise ChunkError("the HyperLogLogs do not match their lengths")
    return out, np.array(rows, dtype=np.int64)
