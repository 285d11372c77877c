"""Unsigned base-128 varints (LEB128): protobuf's wire format and ClickHouse's Native format write lengths
and counts with the same encoding."""

from __future__ import annotations


def _encode(value: int) -> bytes:
    encoded = bytearray()
    while value >= 0x80:
        encoded.append(value & 0x7F | 0x80)
        value >>= 7
    encoded.append(value)
    return bytes(encoded)


# Varints are looked up rather than computed (several are written for every log): those of one and two
# bytes (lengths of records, bodies and strings are nearly always below 16 KiB) and, for offsets in an
# object of up to 256 MiB, the low 14 bits of a longer one (two 7-bit groups, both marked "more follows").
_TABLE_SIZE = 1 << 14
_VARINTS = tuple(_encode(value) for value in range(_TABLE_SIZE))
_LOW_GROUPS = tuple(bytes((value & 0x7F | 0x80, value >> 7 | 0x80)) for value in range(_TABLE_SIZE))


def varint(value: int) -> bytes:
    """``value`` (not negative) as an unsigned base-128 varint."""
    if value < _TABLE_SIZE:
        return _VARINTS[value]
    if value < _TABLE_SIZE * _TABLE_SIZE:
        return _LOW_GROUPS[value & (_TABLE_SIZE - 1)] + _VARINTS[value >> 14]
    return _encode(value)
