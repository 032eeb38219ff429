"""Export of a sketch: the DDSketch protobuf for the API (:func:`to_proto`) and a
``ddsketch.DDSketch`` for tests and reference (:func:`to_ddsketch`).

Contract: this is the only module that imports ``ddsketch``, lazily, in :func:`to_ddsketch`.
:func:`to_proto` is hand-written (no protobuf dependency) and readable by ddsketch's
``from_proto``.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

import numpy as np

from statsd_gateway.sketch._bins import _F64, _I64, Bins
from statsd_gateway.sketch._codec import _put_varint
from statsd_gateway.sketch._mapping import GAMMA, RELATIVE_ACCURACY

if TYPE_CHECKING:
    import ddsketch


def to_ddsketch(b: Bins) -> ddsketch.DDSketch:
    """A ``ddsketch.DDSketch`` with exactly these bins (sum/min/max unknown).

    No runtime caller: the reference through which the tests check our bins and quantiles
    against ddsketch's own.
    """
    from ddsketch import DDSketch

    s = DDSketch(RELATIVE_ACCURACY)
    for k, c in zip(b.pos_keys.tolist(), b.pos_counts.tolist(), strict=True):
        s._store.add(k, c)
    for k, c in zip(b.neg_keys.tolist(), b.neg_counts.tolist(), strict=True):
        s._negative_store.add(k, c)
    s._zero_count = b.zero
    s._count = s._negative_store.count + s._zero_count + s._store.count
    return s


def _proto_store(keys: _I64, counts: _F64) -> bytes:
    """DDSketch ``Store`` message: trimmed contiguousBinCounts (field 2) + index offset (3)."""
    if keys.size == 0:
        return b""
    lo = int(keys[0])
    dense = np.zeros(int(keys[-1]) - lo + 1, dtype="<f8")
    dense[keys - lo] = counts
    payload = dense.tobytes()
    out = bytearray(b"\x12")
    _put_varint(out, len(payload))
    out += payload
    out.append(0x18)
    _put_varint(out, (lo << 1) ^ (lo >> 63))
    return bytes(out)


def to_proto(b: Bins) -> bytes:
    """Serialise as a ``DDSketch`` protobuf message (DataDog sketches-proto schema).

    Hand-written (no protobuf dependency): mapping {gamma, indexOffset 0, interpolation NONE},
    positive/negative stores as trimmed ``contiguousBinCounts`` (the only store encoding that
    ``ddsketch``'s ``from_proto`` reads), zeroCount. The dense range covers min..max key, so a
    sketch spanning many orders of magnitude gives a large message.
    """
    out = bytearray()
    mapping = b"\x09" + struct.pack("<d", GAMMA) + b"\x11" + struct.pack("<d", 0.0)
    for field, msg in ((1, mapping), (2, _proto_store(b.pos_keys, b.pos_counts))):
        out.append((field << 3) | 2)
        _put_varint(out, len(msg))
        out += msg
    neg = _proto_store(b.neg_keys, b.neg_counts)
    out.append((3 << 3) | 2)
    _put_varint(out, len(neg))
    out += neg
    out.append((4 << 3) | 1)
    out += struct.pack("<d", b.zero)
    return bytes(out)
