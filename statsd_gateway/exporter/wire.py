"""The protobuf wire format, as much of it as the scrape's messages need (protobuf.py).

Contract: a `Message` appends fields in the order it is told, each as protobuf encodes it
(https://protobuf.dev/programming-guides/encoding/): unsigned varints, zigzag varints for the
`sint` types, little-endian doubles, length-delimited strings and sub-messages. Repeated
scalars are written unpacked, one tag per element, as proto2 fields without `packed` are (a
parser accepts either). `delimited()` prefixes a message with its length as a varint, the
stream Prometheus reads (`encoding=delimited`). Nothing here knows which message is which.
"""

from __future__ import annotations

import struct

# Wire types.
VARINT = 0
FIXED64 = 1
LENGTH_DELIMITED = 2

_DOUBLE = struct.Struct("<d")
_UINT64_LIMIT = 1 << 64
_INT64_LIMIT = 1 << 63


def put_varint(out: bytearray, value: int) -> None:
    """An unsigned varint; `value` must be in [0, 2**64)."""
    if not 0 <= value < _UINT64_LIMIT:
        raise OverflowError(f"{value} is not a uint64")
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def zigzag(value: int) -> int:
    """A signed integer as the `sint32`/`sint64` varint encodes it (0, -1, 1, -2 → 0, 1, 2, 3)."""
    if not -_INT64_LIMIT <= value < _INT64_LIMIT:
        raise OverflowError(f"{value} is not an int64")
    return (value << 1) ^ (value >> 63)


class Message:
    """One message's fields, appended in order."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def _tag(self, field: int, wire_type: int) -> None:
        put_varint(self.buf, (field << 3) | wire_type)

    def uint(self, field: int, value: int) -> None:
        """A `uint32`/`uint64` or enum field."""
        self._tag(field, VARINT)
        put_varint(self.buf, value)

    def sint(self, field: int, value: int) -> None:
        """A `sint32`/`sint64` field."""
        self._tag(field, VARINT)
        put_varint(self.buf, zigzag(value))

    def double(self, field: int, value: float) -> None:
        self._tag(field, FIXED64)
        self.buf += _DOUBLE.pack(value)

    def string(self, field: int, value: str) -> None:
        self.length_delimited(field, value.encode("utf-8"))

    def length_delimited(self, field: int, value: bytes | bytearray) -> None:
        """A length-delimited field: bytes, or an encoded sub-message."""
        self._tag(field, LENGTH_DELIMITED)
        put_varint(self.buf, len(value))
        self.buf += value

    def message(self, field: int, value: Message) -> None:
        self.length_delimited(field, value.buf)


def delimited(message: Message) -> bytes:
    """The message prefixed with its length, as a varint."""
    out = bytearray()
    put_varint(out, len(message.buf))
    out += message.buf
    return bytes(out)
