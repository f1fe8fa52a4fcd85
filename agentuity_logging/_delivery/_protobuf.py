"""A minimal protobuf wire-format writer and reader.

Loki's ``PushRequest`` and OTLP's ``ExportLogsServiceRequest`` are small, fixed schemas;
writing their few fields by hand keeps the ``protobuf`` runtime (and its version skew with
other libraries in the user's environment) out of our dependencies. Only what those two
messages need is here: varints, fixed64, doubles and length-delimited fields.

See https://protobuf.dev/programming-guides/encoding/ for the format.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

__all__ = [
    "FIXED32",
    "FIXED64",
    "LEN",
    "VARINT",
    "field_bytes",
    "field_double",
    "field_fixed64",
    "field_string",
    "field_varint",
    "iter_fields",
    "varint",
]

VARINT = 0
FIXED64 = 1
LEN = 2
FIXED32 = 5

_UINT64_MASK = (1 << 64) - 1
_DOUBLE = struct.Struct("<d")
_FIXED64 = struct.Struct("<Q")
_FIXED32 = struct.Struct("<I")
# Tags of small field numbers are hot (every entry writes several); precompute them.
_TAGS: dict[tuple[int, int], bytes] = {}


def varint(value: int) -> bytes:
    """Base-128 varint; negative numbers as 64-bit two's complement (int64 semantics)."""
    if 0 <= value < 0x80:
        return bytes((value,))
    value &= _UINT64_MASK
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    key = (number, wire_type)
    tag = _TAGS.get(key)
    if tag is None:
        tag = _TAGS[key] = varint((number << 3) | wire_type)
    return tag


def field_varint(number: int, value: int) -> bytes:
    """A varint field (int32/int64/uint64/bool/enum); zero still written (callers skip it)."""
    return _tag(number, VARINT) + varint(value)


def field_fixed64(number: int, value: int) -> bytes:
    """A fixed64 field (OTLP timestamps in nanoseconds)."""
    return _tag(number, FIXED64) + _FIXED64.pack(value & _UINT64_MASK)


def field_double(number: int, value: float) -> bytes:
    """A double field (IEEE 754, little endian)."""
    return _tag(number, FIXED64) + _DOUBLE.pack(value)


def field_bytes(number: int, data: bytes) -> bytes:
    """A length-delimited field: bytes, or an already encoded embedded message."""
    return _tag(number, LEN) + varint(len(data)) + data


def field_string(number: int, text: str) -> bytes:
    """A string field; ``text`` must be encodable as UTF-8 (callers pass cleaned text)."""
    return field_bytes(number, text.encode("utf-8"))


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result & _UINT64_MASK, pos
        shift += 7
        if shift >= 70:
            raise ValueError("varint too long")


def iter_fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield ``(field number, wire type, value)`` for each field of one message.

    Varint and fixed values come as ints, length-delimited ones as bytes (decode nested
    messages by calling this again). Raises ``ValueError`` on malformed input.
    """
    pos = 0
    end = len(data)
    while pos < end:
        key, pos = _read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        value: int | bytes
        if wire_type == VARINT:
            value, pos = _read_varint(data, pos)
        elif wire_type == FIXED64:
            if pos + 8 > end:
                raise ValueError("truncated fixed64")
            (value,) = _FIXED64.unpack_from(data, pos)
            pos += 8
        elif wire_type == LEN:
            size, pos = _read_varint(data, pos)
            if pos + size > end:
                raise ValueError("truncated length-delimited field")
            value = bytes(data[pos : pos + size])
            pos += size
        elif wire_type == FIXED32:
            if pos + 4 > end:
                raise ValueError("truncated fixed32")
            (value,) = _FIXED32.unpack_from(data, pos)
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
        yield number, wire_type, value
