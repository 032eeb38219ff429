"""DDV1, the storage format of one sketch: :func:`encode` and :func:`decode`.

Every field is an unsigned LEB128 varint, signed values zigzag-encoded::

    version(=1) flags mapping_id(=1) zero_count
    n_pos { zz(key - prev_key) count } * n_pos     # prev_key starts at 0, keys increasing
    n_neg { zz(key - prev_key) count } * n_neg     # prev_key restarts at 0; keys of |v|

flags bit0: zero_count and every count are IEEE-754 float64 little-endian (8 bytes) instead of
varints; set when any of them is non-integral or >= 2**53. Other flag bits are reserved and
rejected by :func:`decode`.

Contract:
- ``decode(encode(b)) == b`` bit for bit; :func:`encode` is canonical (one blob per sketch), and
  :func:`decode` also accepts valid non-canonical blobs (over-long varints up to 9 bytes).
- :func:`decode` raises ``ValueError`` on a wrong version, flags or mapping, or a malformed blob.
- These are the per-blob reference for the vectorised codec (``_codec_flat``), which falls back
  to them for the blobs it does not handle itself.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from statsd_gateway.sketch._bins import (
    _EMPTY,
    _F64,
    _I64,
    Bins,
    _readonly_f64,
    _readonly_i64,
)
from statsd_gateway.sketch._mapping import MAPPING_ID

FORMAT: str = "DDV1"

_VERSION = 1
_FLAG_FLOAT = 0x01
_INT_LIMIT = 2.0**53  # counts at or above this are stored as float64
_KEY_LIMIT = 1 << 31  # sanity bound for decoded keys (real keys lie within about ±35,500)


def _put_varint(out: bytearray, x: int) -> None:
    while x >= 0x80:
        out.append((x & 0x7F) | 0x80)
        x >>= 7
    out.append(x)


def _zigzag_deltas(keys: _I64) -> _I64:
    d = np.diff(keys, prepend=np.int64(0))
    zz: _I64 = (d << 1) ^ (d >> 63)
    return zz


def _is_integral(c: _F64) -> bool:
    return bool(((c == np.floor(c)) & (c < _INT_LIMIT)).all())


def encode(b: Bins) -> bytes:
    """Serialise as DDV1 (see the module docstring)."""
    integral = (
        b.zero == math.floor(b.zero)
        and b.zero < _INT_LIMIT
        and _is_integral(b.pos_counts)
        and _is_integral(b.neg_counts)
    )
    out = bytearray((_VERSION, 0 if integral else _FLAG_FLOAT, MAPPING_ID))
    if integral:
        _put_varint(out, int(b.zero))
        for keys, counts in ((b.pos_keys, b.pos_counts), (b.neg_keys, b.neg_counts)):
            _put_varint(out, keys.size)
            if keys.size == 0:
                continue
            pairs = np.empty(2 * keys.size, dtype=np.int64)
            pairs[0::2] = _zigzag_deltas(keys)
            pairs[1::2] = counts
            if int(pairs.max()) < 0x80:  # typical: every varint is one byte
                out += pairs.astype(np.uint8).tobytes()
            else:
                for x in pairs.tolist():
                    if x < 0x80:
                        out.append(x)
                    else:
                        _put_varint(out, x)
    else:
        out += struct.pack("<d", b.zero)
        for keys, counts in ((b.pos_keys, b.pos_counts), (b.neg_keys, b.neg_counts)):
            _put_varint(out, keys.size)
            for zz, c in zip(_zigzag_deltas(keys).tolist(), counts.tolist(), strict=True):
                _put_varint(out, zz)
                out += struct.pack("<d", c)
    return bytes(out)


class _Reader:
    """Sequential varint/float64 reader that raises ValueError on truncation."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def varint(self) -> int:
        data, pos, x, shift = self.data, self.pos, 0, 0
        while True:
            if pos >= len(data):
                raise ValueError("DDV1 blob truncated (in a varint)")
            byte = data[pos]
            pos += 1
            x |= (byte & 0x7F) << shift
            if byte < 0x80:
                self.pos = pos
                return x
            shift += 7
            if shift > 56:
                raise ValueError("DDV1 blob has an overlong varint")

    def float64(self) -> float:
        if self.pos + 8 > len(self.data):
            raise ValueError("DDV1 blob truncated (in a float64)")
        (x,) = struct.unpack_from("<d", self.data, self.pos)
        self.pos += 8
        return float(x)


def _varint_stream(data: bytes, start: int) -> list[int]:
    """All varints of data[start:]; raises ValueError if the last one is cut short."""
    tail = data[start:]
    if tail.isascii():  # every byte < 0x80: one varint per byte
        return list(tail)
    out: list[int] = []
    x = shift = 0
    for byte in tail:
        if byte < 0x80:
            out.append(x | (byte << shift))
            x = shift = 0
        else:
            x |= (byte & 0x7F) << shift
            shift += 7
            if shift > 56:
                raise ValueError("DDV1 blob has an overlong varint")
    if shift:
        raise ValueError("DDV1 blob truncated (in a varint)")
    return out


def _store_from(zz: list[int], counts: list[float] | list[int]) -> tuple[_I64, _F64]:
    if not zz:
        return _EMPTY.pos_keys, _EMPTY.pos_counts
    z = np.array(zz, dtype=np.int64)
    d = (z >> 1) ^ -(z & 1)
    if (d[1:] <= 0).any():
        raise ValueError("DDV1 keys are not strictly increasing")
    if (np.abs(d) >= _KEY_LIMIT).any():
        raise ValueError("DDV1 key out of range")
    keys = np.cumsum(d)
    if np.abs(keys[-1]) >= _KEY_LIMIT:
        raise ValueError("DDV1 key out of range")
    c = np.array(counts, dtype=np.float64)
    if not (np.isfinite(c) & (c > 0)).all():
        raise ValueError("DDV1 counts must be finite and > 0")
    return _readonly_i64(keys), _readonly_f64(c)


def decode(blob: bytes) -> Bins:
    """Parse a DDV1 blob. ValueError on a wrong version, flags or mapping, or a malformed blob."""
    data = bytes(blob)
    if len(data) < 4:
        raise ValueError(f"DDV1 blob too short ({len(data)} bytes)")
    if data[0] != _VERSION:
        raise ValueError(f"unsupported sketch blob version {data[0]} (expected {_VERSION})")
    flags = data[1]
    if flags & ~_FLAG_FLOAT:
        raise ValueError(f"unsupported DDV1 flags 0x{flags:02x}")
    if data[2] != MAPPING_ID:
        raise ValueError(f"unsupported sketch mapping id {data[2]} (expected {MAPPING_ID})")
    r = _Reader(data)
    r.pos = 3
    if flags & _FLAG_FLOAT:
        zero = r.float64()
        stores: list[tuple[_I64, _F64]] = []
        for _ in range(2):
            n = r.varint()
            if n * 9 > len(data) - r.pos:
                raise ValueError("DDV1 blob truncated (bin count exceeds the data)")
            zz: list[int] = []
            fc: list[float] = []
            for _ in range(n):
                zz.append(r.varint())
                fc.append(r.float64())
            stores.append(_store_from(zz, fc))
        if r.pos != len(data):
            raise ValueError("DDV1 blob has trailing bytes")
    else:
        zero = float(r.varint())
        vals = _varint_stream(data, r.pos)
        stores = []
        p = 0
        for _ in range(2):
            if p >= len(vals):
                raise ValueError("DDV1 blob truncated (missing store)")
            n = vals[p]
            end = p + 1 + 2 * n
            if end > len(vals):
                raise ValueError("DDV1 blob truncated (bin count exceeds the data)")
            stores.append(_store_from(vals[p + 1 : end : 2], vals[p + 2 : end : 2]))
            p = end
        if p != len(vals):
            raise ValueError("DDV1 blob has trailing bytes")
    if not (math.isfinite(zero) and zero >= 0):
        raise ValueError("DDV1 zero count must be finite and >= 0")
    (pk, pc), (nk, nc) = stores
    if zero == 0 and pk.size == 0 and nk.size == 0:
        return _EMPTY
    return Bins(pk, pc, nk, nc, zero)
