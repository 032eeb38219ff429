"""The C chunk decoder (sg_chunks.c, through store/chunks_native.py) against the numpy reference
(chunks_decode._decode_chunks_python): for any bytes, both raise ChunkError or both give the same
arrays, bit for bit (dtypes, NaN payloads, -0.0), the same sketches and HyperLogLogs.

- Chunks the encoder wrote, from random row batches of every kind (timers with sketches over
  several blocks, empty sketches, gauges, sets' HyperLogLogs, NaN, -0.0, huge, integer and
  fractional values), decoded with random columns, sketches, HyperLogLogs and ranges: the C
  decoder answers itself (never leaves one to the reference).
- Damaged chunks: cut at every position, bits flipped, random bytes, another version.
- Crafted chunks, groups compressed whole but their columns arbitrary (tags, widths, lengths,
  counts, sketch bins, HyperLogLog lengths): past zlib, into every check of the decoder. Where
  the C decoder leaves a blob to the reference (sg_chunks.h's SG_CH_DEFER), decode_chunks answers
  what the reference answers: that is what it means.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statsd_gateway import native, sketch
from statsd_gateway.model import MetricType, RowBatch
from statsd_gateway.store import chunks_decode, chunks_native
from statsd_gateway.store.chunks import (
    BUCKETS_PER_CHUNK,
    SKETCH_BLOCK,
    ChunkError,
    _column,
    _group,
    _varint,
    encode_chunks,
)
from statsd_gateway.store.chunks_decode import DecodedChunks
from tests.conftest import PARITY, require_native_core

MODULE = require_native_core(module=True)

NAMES = ("count", "sum", "min", "max", "last", "last_ts")
INF, NAN = math.inf, math.nan
T0 = 1_700_006_400.0  # a multiple of 6 h
# Values each column may hold: every float the encoder must keep bit for bit.
SPECIAL = [NAN, -0.0, 0.0, 1.0, -1.0, 0.25, -7.5, 1e-300, 5e-324, 1e308, -1e308, INF, -INF,
           2.0**53, 2.0**53 + 2, -(2.0**53), 2.0**53 - 1, 2.0**63, -(2.0**63), 9.2e18, 997.0,
           float(np.float64(np.uint64(0x7FF4000000000001).view(np.float64)))]  # fmt: skip


# ---- what each decoder answers


def arrays_of(d: DecodedChunks) -> list[tuple[str, str, bool, bytes]]:
    """Every array of a result: its name, dtype, writeability and bytes."""
    named = [("ts", d.ts), ("chunk", d.chunk), ("sketch_rows", d.sketch_rows),
             ("hll_rows", d.hll_rows)]  # fmt: skip
    named += [(f"values.{k}", v) for k, v in d.values.items()]
    named += [(f"sketches.{f}", getattr(d.sketches, f)) for f in ("keys", "counts", "bounds",
              "zero", "integral")]  # fmt: skip
    return [(name, a.dtype.str, bool(a.flags.writeable), a.tobytes()) for name, a in named]


def answer(call: Callable[[], DecodedChunks]) -> Any:
    """A result as comparable data, or the name of what it raised."""
    try:
        d = call()
    except ChunkError:
        return "ChunkError"
    except Exception as e:  # what the reference raises past its checks: the same, deferred
        return type(e).__name__
    return (list(d.values), arrays_of(d), d.hlls)


def decode_both(
    blobs: Sequence[bytes],
    values: Sequence[Any] = NAMES,
    *,
    sketches: bool = False,
    hll: bool = False,
    since: float = -INF,
    until: float = INF,
) -> tuple[Any, Any, bool]:
    """(the reference's answer, the C decoder's, whether C left it to the reference)."""
    kw = {"sketches": sketches, "hll": hll, "since": since, "until": until}
    ref = answer(lambda: chunks_decode._decode_chunks_python(blobs, values, **kw))
    assert MODULE is not None
    want = set(values) | {"ts"}
    deferred = False

    def native_call() -> DecodedChunks:
        nonlocal deferred
        got = chunks_native.decode(MODULE, blobs, want, **kw)
        if got is None:  # deferred: decode_chunks then answers what the reference answers
            deferred = True
            return chunks_decode._decode_chunks_python(blobs, values, **kw)
        return DecodedChunks(*got)

    nat = answer(native_call)
    return ref, nat, deferred


def assert_same(blobs: Sequence[bytes], **kw: Any) -> bool:
    """Both decoders agree; returns whether C left the blobs to the reference."""
    ref, nat, deferred = decode_both(blobs, **kw)
    assert nat == ref
    assert ref == "ChunkError" or isinstance(ref, tuple) or deferred, ref
    return deferred


# ---- chunks the encoder writes, from random row batches


def column_values(rng: np.random.Generator, style: str, n: int) -> np.ndarray:
    if style == "nan":
        return np.full(n, NAN)
    if style == "small":
        return rng.integers(0, 256, n).astype(np.float64)
    if style == "ints":
        return rng.integers(-(2**40), 2**40, n).astype(np.float64)
    if style == "wide":  # integers past 2**53: floats to the encoder
        return rng.integers(-(2**62), 2**62, n).astype(np.float64)
    if style == "fraction":
        return rng.random(n) * 1000 - 10
    if style == "const":
        return np.full(n, SPECIAL[int(rng.integers(len(SPECIAL)))])
    if style == "sparse":  # integers with a few NaN
        out = rng.integers(1, 998, n).astype(np.float64)
        out[rng.random(n) < 0.1] = NAN
        return out
    return rng.choice(np.array(SPECIAL), n)  # "special"


STYLES = ("nan", "small", "ints", "wide", "fraction", "const", "sparse", "special")


def sketches_of(rng: np.random.Generator, has: np.ndarray, weighted: bool) -> sketch.FlatBins:
    """Bins for the rows of `has` (some empty: no values), empty bins for the others."""
    n = has.size
    sizes = np.where(has, rng.integers(0, 40, n), 0)
    sizes[has & (rng.random(n) < 0.15)] = 0  # a sketch without a bin
    total = int(sizes.sum())
    kind = rng.random(total)
    values = np.where(
        kind < 0.6, rng.integers(1, 998, total).astype(np.float64),
        np.where(kind < 0.8, -(10.0 ** rng.uniform(-5, 8, total)),
                 np.where(kind < 0.9, 0.0, 10.0 ** rng.uniform(-300, 300, total))),
    )  # fmt: skip
    weights = rng.choice([1.0, 2.0, 0.5, 1 / 0.3, 1e9], total) if weighted else None
    return sketch.bin_flat(values, weights, np.concatenate([[0], np.cumsum(sizes)]))


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[bytes], np.ndarray]:
    """Chunks the encoder writes for a random batch, and the rows' times."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    sizes = draw(st.lists(st.sampled_from([0, 1, 2, 59, 60, 61, 121, 200, 360]), min_size=1,
                          max_size=4))  # fmt: skip
    n = sum(sizes)
    kind = draw(st.sampled_from(["timer", "counter", "gauge", "set", "any"]))
    res = draw(st.sampled_from([10.0, 60.0, 3600.0]))
    ts = T0 + res * np.arange(n)
    if draw(st.integers(0, 9)) == 0:
        ts = column_values(rng, draw(st.sampled_from(STYLES)), n)  # any float is a time
    cols = {name: column_values(rng, draw(st.sampled_from(STYLES)), n) for name in NAMES}
    if kind != "gauge" and kind != "any":
        cols["last"] = cols["last_ts"] = np.full(n, NAN)
    if kind == "set":
        cols["min"] = cols["max"] = np.full(n, NAN)
    sketched = kind in ("timer", "counter", "any")
    has = rng.random(n) < draw(st.sampled_from([1.0, 0.7, 0.1])) if sketched else np.zeros(n, bool)
    flat = sketches_of(rng, has, weighted=draw(st.booleans()))
    hll: list[bytes | None] = [None] * n
    if kind in ("set", "any"):
        for i in np.flatnonzero(rng.random(n) < 0.8).tolist():
            r = rng.random()
            hll[i] = (
                b"" if r < 0.1 else sketch.hll_from_members([f"m{i}", "x"]) if r < 0.2
                else rng.bytes(int(rng.integers(1, 40)))
            )  # fmt: skip
    rows = RowBatch(
        ts=ts, keys=[("default", "m", ())] * n, types=[MetricType.TIMING] * n, **cols,
        sketches=flat, has_sketch=has, hll=hll,
    )  # fmt: skip
    return encode_chunks(rows, np.cumsum([0, *sizes]).tolist()), ts


@st.composite
def reads(draw: st.DrawFn, ts: np.ndarray) -> dict[str, Any]:
    """The arguments of a read: columns (an unknown one, "ts"), sketches, HLLs, a range."""
    values = draw(st.lists(st.sampled_from([*NAMES, "ts", "bogus"]), max_size=4))
    bound = st.one_of(
        st.sampled_from([-INF, INF, NAN, T0, T0 + 3600.0]),
        st.sampled_from(ts.tolist() or [0.0]).map(lambda t: t + 0.5),
        st.sampled_from(ts.tolist() or [0.0]),
    )
    return {"values": values, "sketches": draw(st.booleans()), "hll": draw(st.booleans()),
            "since": draw(bound), "until": draw(bound)}  # fmt: skip


@settings(PARITY, max_examples=max(PARITY.max_examples // 20, 50))
@given(st.data())
def test_encoded_chunks_decode_as_the_reference(data: st.DataObject) -> None:
    blobs, ts = data.draw(batches())
    for _ in range(3):
        kw = data.draw(reads(ts))
        assert not assert_same(blobs, **kw), "the C decoder left an encoder's chunk to numpy"
    # what the store reads: whole chunks, every column, sketches and HyperLogLogs
    ref, nat, deferred = decode_both(blobs, sketches=True, hll=True)
    assert isinstance(ref, tuple) and nat == ref and not deferred


def test_decode_chunks_runs_the_native_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """decode_chunks calls the module's decoder, which answers (no silent fallback), and its
    arrays are views of the memory C filled; with the pure-Python path forced it does not."""
    assert MODULE is not None
    blobs, _ = _fixed_batch()
    real = MODULE.decode_chunks
    answered: list[bool] = []

    def spy(*args: Any) -> Any:
        out = real(*args)
        answered.append(out is not None)
        return out

    monkeypatch.setattr(MODULE, "decode_chunks", spy)
    d = chunks_decode.decode_chunks(blobs, NAMES, sketches=True, hll=True)
    assert answered == [True]
    assert type(d.ts.base) is MODULE.Buffer and type(d.chunk.base) is MODULE.Buffer
    assert len(d.sketches) and d.hlls
    ref = chunks_decode._decode_chunks_python(blobs, NAMES, sketches=True, hll=True,
                                              since=-INF, until=INF)  # fmt: skip
    assert answer(lambda: d) == answer(lambda: ref)
    monkeypatch.setenv(native.PURE_PYTHON_ENV, "1")
    assert answer(lambda: chunks_decode.decode_chunks(blobs, NAMES, sketches=True, hll=True)) == (
        answer(lambda: ref)
    )
    assert answered == [True]


def _fixed_batch(seed: int = 7) -> tuple[list[bytes], np.ndarray]:
    """A batch of every kind: a timer of 130 rows (3 sketch blocks), a gauge, a set."""
    rng = np.random.default_rng(seed)
    out: list[bytes] = []
    for kind, n in (("timer", 130), ("gauge", 40), ("set", 50)):
        ts = T0 + 60.0 * np.arange(n)
        nan = np.full(n, NAN)
        v = rng.integers(1, 998, n).astype(np.float64)
        v[::7] += 0.25
        has = np.full(n, kind == "timer")
        hll: list[bytes | None] = [None] * n
        if kind == "set":
            hll = [rng.bytes(int(rng.integers(1, 30))) if i % 3 else None for i in range(n)]
        gauge = kind == "gauge"
        rows = RowBatch(
            ts=ts, keys=[("default", kind, ())] * n, types=[MetricType.TIMING] * n,
            count=np.full(n, 3.0), sum=v * 3, min=v - 1, max=v + 1,
            last=v if gauge else nan, last_ts=ts + 3.5 if gauge else nan,
            sketches=sketches_of(rng, has, weighted=False), has_sketch=has, hll=hll,
        )  # fmt: skip
        out += encode_chunks(rows, [0, n])
    return out, T0 + 60.0 * np.arange(130)


def test_blob_containers_and_threads() -> None:
    """A tuple and bytearrays decode natively; a memoryview or a list subclass go to the
    reference (which reads them its own way); several threads decode at once (the GIL let go)."""
    assert MODULE is not None
    blobs, _ = _fixed_batch()
    want = set(NAMES) | {"ts"}
    kw: dict[str, Any] = {"sketches": True, "hll": True, "since": -INF, "until": INF}
    expected = answer(lambda: chunks_decode._decode_chunks_python(blobs, NAMES, **kw))
    for container in (tuple(blobs), [bytearray(b) for b in blobs]):
        got = chunks_native.decode(MODULE, container, want, **kw)
        assert got is not None and answer(lambda g=got: DecodedChunks(*g)) == expected
    assert chunks_native.decode(MODULE, [memoryview(b) for b in blobs], want, **kw) is None

    class Blobs(list[bytes]):
        pass

    assert chunks_native.decode(MODULE, Blobs(blobs), want, **kw) is None
    assert chunks_native.decode(MODULE, blobs, want, **{**kw, "since": 10**400}) is None
    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda _: answer(lambda: chunks_decode.decode_chunks(
            blobs * 20, NAMES, sketches=True, hll=True)), range(8)))  # fmt: skip
    want_many = answer(lambda: chunks_decode._decode_chunks_python(blobs * 20, NAMES, **kw))
    assert all(r == want_many for r in runs)


def test_arrays_past_a_mapping() -> None:
    """Arrays of tens of MB (the C decoder grows them by mremap past 1 MB) as the reference's."""
    blobs, _ = _fixed_batch()
    many = blobs * 600  # 132,000 rows, 1.2 M sketch bins
    assert not assert_same(many, values=("sum", "last"), sketches=True, hll=True)


# ---- damaged chunks

OPTIONS: list[dict[str, Any]] = [
    {"values": NAMES, "sketches": True, "hll": True},
    {"values": ("sum",)},
    {"values": ("min", "last_ts"), "sketches": True, "since": T0 + 3600.0, "until": T0 + 7200.0},
]


def test_cut_short_at_every_position() -> None:
    blobs, _ = _fixed_batch(3)
    for blob in blobs:
        for i in range(len(blob)):
            for kw in OPTIONS:
                assert_same([blob[:i]], **kw)
            if i % 7 == 0:  # after a whole chunk, and with bytes after the last group
                assert_same([blobs[0], blob[:i]], **OPTIONS[0])
                assert_same([blob + blob[: i + 1]], **OPTIONS[0])


def test_flipped_bits_random_bytes_and_other_versions() -> None:
    blobs, _ = _fixed_batch(5)
    rng = np.random.default_rng(11)
    cases = max(PARITY.max_examples // 5, 200)
    for _ in range(cases):
        blob = bytearray(blobs[int(rng.integers(len(blobs)))])
        for _ in range(int(rng.integers(1, 4))):
            at = int(rng.integers(len(blob)))
            blob[at] ^= 1 << int(rng.integers(8))
        assert_same([bytes(blob)], **OPTIONS[int(rng.integers(len(OPTIONS)))])
    for _ in range(cases):
        noise = bytearray(rng.bytes(int(rng.integers(0, 60))))
        if noise and rng.random() < 0.7:
            noise[0] = 1
        assert_same([bytes(noise)], **OPTIONS[int(rng.integers(len(OPTIONS)))])
    for version in (0, 2, 0x81, 0xFF):
        for kw in OPTIONS:
            assert decode_both([bytes([version]) + blobs[0][1:]], **kw)[:2] == ("ChunkError",) * 2


# ---- crafted chunks: whole zlib groups, arbitrary columns


def often(draw: st.DrawFn, usual: Any, *others: Any) -> Any:
    """`usual` four times in five, else one of the others."""
    return draw(st.sampled_from([usual] * (4 * len(others)) + list(others)))


def varints(draw: st.DrawFn, consistent: int) -> bytes:
    """A count: the consistent one, or near it, or one past any memory."""
    return _varint(often(draw, consistent, consistent + 1, max(consistent - 1, 0), 0, 2**40,
                         2**63, 2**70 - 1))  # fmt: skip


@st.composite
def crafted_column(draw: st.DrawFn, x: np.ndarray) -> bytes:
    """The column of x as the encoder writes it, or damaged: another tag or width, cut short
    or longer, all NaN, the values as floats or as integers of any width."""
    how = often(draw, "as is", "nan", "floats", "ints", "tag", "width", "short", "long")
    col = _column(x)
    if how == "nan":
        return b"\x00"
    if how == "floats":
        bits = np.ascontiguousarray(x, dtype=np.float64).view(np.uint64)
        xor = bits.copy()
        xor[1:] ^= bits[:-1]
        return b"\x02" + xor.astype("<u8").view(np.uint8).reshape(-1, 8).T.tobytes()
    if how == "ints":
        tag, width = draw(st.sampled_from([1, 3])), draw(st.sampled_from([1, 2, 4, 8]))
        with np.errstate(invalid="ignore"):
            z = np.nan_to_num(x).astype(np.int64).view(np.uint64) * np.uint64(2)
        return bytes((tag, width)) + z.astype(f"<u{width}").tobytes()
    if how == "tag":
        return bytes([draw(st.sampled_from([1, 2, 3, 4, 0x80]))]) + col[1:]
    if how == "width":
        return col[:1] + bytes([draw(st.sampled_from([0, 3, 16]))]) + col[2:]
    if how == "short":
        return col[: draw(st.integers(0, max(len(col) - 1, 0)))]
    if how == "long":
        return col + bytes(draw(st.integers(1, 9)))
    return col


def zgroup(draw: st.DrawFn, body: bytes) -> bytes:
    """A group of these bytes: compressed (maybe with bytes after the stream, which zlib
    ignores), absent, or an empty stream."""
    how = often(draw, "z", "tail", "absent", "empty")
    if how == "absent":
        return b"\x00"
    packed = zlib.compress(body if how != "empty" else b"", 1)
    if how == "tail":
        packed += b"\x01\x02"
    return _varint(len(packed)) + packed


@st.composite
def crafted(draw: st.DrawFn) -> bytes:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.sampled_from([0, 1, 3, 59, 60, 61, 130]))
    ts = T0 + 60.0 * np.arange(n)
    a = [draw(crafted_column(ts))]
    a += [draw(crafted_column(column_values(rng, draw(st.sampled_from(STYLES)), n)))
          for _ in range(4)]  # fmt: skip
    b = [draw(crafted_column(column_values(rng, "special", n))) for _ in range(2)]
    blocks = []
    n_blocks = -(-n // SKETCH_BLOCK)
    k = draw(st.sampled_from([n_blocks, n_blocks, n_blocks, 0, n_blocks + 1]))
    for i in range(k):
        m = max(min(SKETCH_BLOCK, n - i * SKETCH_BLOCK), 0)
        has = (rng.random(m) < 0.5).astype(np.float64)
        if draw(st.integers(0, 5)) == 0:
            has[: min(m, 2)] = draw(st.sampled_from([2.0, NAN, -0.0]))
        s = int((has == 1.0).sum())
        lens = rng.integers(0, 4, 2 * s).astype(np.float64)
        if draw(st.integers(0, 4)) == 0:  # what float lengths do to the reference's sum
            lens[: min(2 * s, 2)] = draw(st.sampled_from([0.5, 1.25, INF, -1.0, NAN, 2.0**60]))
        nb = int(np.nan_to_num(lens, posinf=0).clip(0, 9).sum())
        keys = np.concatenate([np.cumsum(rng.integers(1, 5, int(x))) for x in lens.clip(0, 9)
                               if x == x] or [np.empty(0)]).astype(np.float64)  # fmt: skip
        keys = keys[:nb] if keys.size >= nb else np.pad(keys, (0, nb - keys.size))
        if draw(st.integers(0, 5)) == 0:
            keys[:1] = draw(st.sampled_from([NAN, 2.0**63, -INF, 0.5, 1e19]))
        counts = rng.choice([1.0, 2.0, 0.5, 7.0], nb)
        if draw(st.integers(0, 6)) == 0:
            counts[:1] = draw(st.sampled_from([0.0, -1.0, NAN, INF]))
        zero = rng.choice([0.0, 1.0, 2.5], s)
        if draw(st.integers(0, 6)) == 0:
            zero[:1] = draw(st.sampled_from([-1.0, NAN]))
        head = varints(draw, s) + varints(draw, nb)
        cols = [draw(crafted_column(x)) for x in (has, zero, lens, keys, counts)]
        first = float(T0 + 3600.0 * i) if draw(st.integers(0, 5)) else draw(
            st.sampled_from([NAN, INF, -INF]))  # fmt: skip
        body = zgroup(draw, head + b"".join(cols)) if draw(st.integers(0, 9)) else b"\x00"
        blocks.append(np.float64(first).astype("<f8").tobytes() + body)
    regs = [rng.bytes(int(x)) for x in rng.integers(0, 4, n)]
    lengths = np.array([len(r) for r in regs], dtype=np.float64)
    if n and draw(st.integers(0, 4)) == 0:
        lengths[int(rng.integers(n))] = draw(st.sampled_from([NAN, INF, -3.0, 0.5, 2.75, 1e30]))
    d = draw(crafted_column(lengths)) + b"".join(regs) + bytes(draw(st.sampled_from([0, 0, 1])))
    groups = [zgroup(draw, b"".join(a)), zgroup(draw, b"".join(b)), varints(draw, len(blocks)),
              *blocks, zgroup(draw, d) if draw(st.booleans()) else b"\x00"]  # fmt: skip
    return b"\x01" + varints(draw, n) + b"".join(groups)


@settings(PARITY, max_examples=max(PARITY.max_examples // 20, 50))
@given(st.lists(crafted(), min_size=1, max_size=3), st.data())
def test_crafted_chunks_decode_as_the_reference(blobs: list[bytes], data: st.DataObject) -> None:
    ts = T0 + 60.0 * np.arange(130)
    for _ in range(2):
        assert_same(blobs, **data.draw(reads(ts)))


# ---- what the C decoder leaves to the reference (sg_chunks.h, SG_CH_DEFER)


def chunk(n: int, a: list[bytes], *, blocks: Sequence[bytes] = (), d: bytes | None = None,
          nblocks: int | None = None, pad: bool = True) -> bytes:  # fmt: skip
    """A chunk of these columns (group A, compressed even if all NaN; `pad`: NaN columns after
    them to five), sketch blocks and group D, compressed whole."""
    packed = zlib.compress(b"".join(a) + b"\x00" * (5 - len(a) if pad else 0))
    return b"".join([b"\x01", _varint(n), _varint(len(packed)), packed, b"\x00",
                     _varint(len(blocks) if nblocks is None else nblocks), *blocks,
                     _group([d]) if d is not None else b"\x00"])  # fmt: skip


def block(first: float, s: int, nb: int, cols: list[np.ndarray]) -> bytes:
    head = np.float64(first).astype("<f8").tobytes()
    return head + _group([_varint(s) + _varint(nb), *(_column(x) for x in cols)])


def f64(*x: float) -> np.ndarray:
    return np.array(x, dtype=np.float64)


def one_sketch(lens: np.ndarray, keys: np.ndarray) -> bytes:
    """A chunk of one row whose sketch has these store lengths and keys (a count of 1 each)."""
    cols = [f64(1), f64(0), lens, keys, np.ones(keys.size)]
    return chunk(1, [_column(f64(T0))], blocks=[block(T0, 1, 1, cols)])


def two_hlls(lengths: np.ndarray, regs: bytes) -> bytes:
    return chunk(2, [_column(f64(T0, T0 + 1))], d=_column(lengths) + regs)


DEFERRED = {
    # a store's length infinite: int(lens.sum()) raises OverflowError
    "infinite store": (one_sketch(f64(INF, 0), f64(3)), "OverflowError"),
    # fractional lengths whose sum truncates to the bins: the reference keeps them
    "fractional stores": (one_sketch(f64(1.25, 0.5), f64(3)), "ok"),
    # a key past int64: the reference's cast warns, which the suite makes an error
    "key past int64": (one_sketch(f64(1, 0), f64(2.0**64)), "RuntimeWarning"),
    # HyperLogLog lengths: negative (Python's slices), infinite (int() raises)
    "negative HLL": (two_hlls(f64(-2, 4), b"ab"), "ok"),
    "infinite HLL": (two_hlls(f64(INF, 1), b"a"), "OverflowError"),
}


@pytest.mark.parametrize("case", list(DEFERRED))
def test_what_the_reference_decides(case: str) -> None:
    blob, what = DEFERRED[case]
    ref, nat, deferred = decode_both([blob], sketches=True, hll=True)
    assert deferred and nat == ref
    assert (isinstance(ref, tuple) and what == "ok") or ref == what, ref


def test_a_chunk_of_more_rows_than_a_window_is_refused_by_both() -> None:
    """A few bytes claiming more rows than a chunk window holds are ChunkError in both decoders
    (they would otherwise get arrays of that many rows: memory, not an answer); a whole window's
    rows decode in both, C answering itself."""
    full = chunk(BUCKETS_PER_CHUNK, [_column(T0 + np.arange(float(BUCKETS_PER_CHUNK)))])
    assert not assert_same([full])
    for n in (BUCKETS_PER_CHUNK + 1, 2**23, 2**63):
        blob = chunk(n, [b"\x00"])  # NaN times: no payload, however many rows
        assert len(blob) < 32
        ref, nat, deferred = decode_both([blob])
        assert ref == nat == "ChunkError" and not deferred


def test_edges_the_c_decoder_answers_itself() -> None:
    """Absent groups, empty streams, bytes after a stream, every width, tags 0 to 3."""
    ts = _column(f64(T0, T0 + 60, T0 + 120))
    empty_block = [np.zeros(60)] + [f64()] * 4  # one block for 61 rows: too few
    cases = [
        chunk(0, [_column(f64())]),
        chunk(10, [b"\x00"]),  # ten rows of NaN times: a chunk like any other
        chunk(3, [ts], pad=False),  # only ts: the columns after it unread
        chunk(3, [ts, b"\x01\x08" + bytes(24), b"\x03\x02" + bytes(6), b"\x02" + bytes(24)]),
        chunk(3, [ts, b"\x05"], pad=False),  # an unknown tag, read only when asked for
        chunk(3, [ts, b"\x01"], pad=False),  # an integer column cut before its width
        chunk(3, [ts] + [_column(f64(2.0**62, -(2.0**62), 3))] * 4),
        chunk(3, [ts, b"\x01\x01\xff\xff\xff", b"\x01\x08" + b"\xff" * 24], pad=False),  # wraps
        b"\x01\x00" + _varint(len(zlib.compress(b""))) + zlib.compress(b"") + b"\x00\x00\x00",
        b"\x01\x00\x00\x00\x00\x00",  # no group A, no rows
        chunk(61, [_column(T0 + np.arange(61.0))], nblocks=0),
        chunk(61, [_column(T0 + np.arange(61.0))], blocks=[block(T0, 0, 0, empty_block)]),
    ]
    for blob in cases:
        for kw in (*OPTIONS, {"values": ("count", "max")}):
            assert not assert_same([blob], **kw)
        assert not assert_same([blob, blob], **OPTIONS[0])
