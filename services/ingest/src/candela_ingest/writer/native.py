"""ClickHouse's Native format for insert blocks, built a whole column at a time in C-level operations.

clickhouse-driver encodes an insert value by value in Python (about 12 us of CPU per row of the requests
table, a fifth of the writer's CPU per log). Here each column is a few passes of C code over its list:
``struct`` packing for numbers, one ``binascii.unhexlify`` for all the UUIDs of a column, joins for
strings and arrays, and a column that holds one value throughout (an empty field, a flag, a model) is
that value's bytes repeated. A column's encoding is chosen by its ClickHouse type as the server names it in the
insert's sample block, so a column added to a table needs no change here; a type not handled here
(Nullable, LowCardinality on modern servers, Map, ...) is left to the driver's own encoder for that column.

Nothing is converted silently: a value its column's type cannot hold raises ValueError, TypeError,
OverflowError or struct.error (as the driver's encoder does), which the writer treats as data the store
rejects. Strings are str (UTF-8 on the wire), UUIDs their canonical 36-character text, DateTime epoch
seconds, decimals :class:`~decimal.Decimal` (or int) with no more places than the column's scale.
"""

from __future__ import annotations

import functools
import io
import re
import struct
import sys
from array import array
from collections.abc import Callable, Iterable, Sequence
from decimal import MAX_EMAX, MIN_EMIN, Context, Decimal
from itertools import accumulate, chain, repeat
from operator import itemgetter
from typing import Any

from clickhouse_driver.bufferedwriter import CompressedBufferedWriter
from clickhouse_driver.columns.service import write_column
from clickhouse_driver.defines import BUFFER_SIZE

from candela_ingest.wire.validation import is_canonical_uuid, uuid_bytes
from candela_ingest.wire.varint import varint

Encoder = Callable[[Sequence[Any]], bytes]
"""A column's values -> their Native-format bytes."""

ColumnFallback = Callable[[str, str, Sequence[Any]], bytes]
"""(column name, ClickHouse type, values) -> bytes, for the types :func:`column_encoder` does not handle."""


class ColumnValueError(ValueError):
    """A value that its column cannot hold; says which column (the cause is the encoder's own error)."""


def column_encoder(column_type: str) -> Encoder | None:
    """The encoder of a ClickHouse type (as the server names it), or None for a type not handled here."""
    return _encoder(column_type)


def encode_block(
    columns_with_types: Sequence[tuple[str, str]],
    columns: Sequence[Sequence[Any]],
    fallback: ColumnFallback,
    *,
    block_info: bool,
    custom_serialization: bool,
) -> bytes:
    """One block of ``columns`` (parallel to ``columns_with_types``, the server's sample block), as
    clickhouse-driver's BlockOutputStream writes it.

    ``block_info`` and ``custom_serialization`` say whether the connection's protocol revision carries the
    block's info header and a serialization-kind byte per column (a Native file has neither).
    """
    if len(columns) != len(columns_with_types):
        raise ValueError(f"expected {len(columns_with_types)} columns, got {len(columns)}")
    rows = len(columns[0]) if columns else 0
    if any(len(column) != rows for column in columns):
        raise ValueError(f"columns of different lengths: {sorted({len(column) for column in columns})}")
    parts = [_BLOCK_INFO if block_info else b"", varint(len(columns)), varint(rows)]
    for (name, column_type), values in zip(columns_with_types, columns, strict=True):
        parts += (_binary_string(name), _binary_string(column_type))
        if custom_serialization:
            parts.append(b"\x00")  # the plain (not sparse) serialization
        encoder = _encoder(column_type)
        if encoder is None:
            parts.append(fallback(name, column_type, values))
            continue
        try:
            parts.append(encoder(values))
        except (ValueError, TypeError, OverflowError, struct.error) as err:
            raise ColumnValueError(f"column {name} ({column_type}): {err!r}") from err
    return b"".join(parts)


def driver_encoding(context: Any, column_name: str, column_type: str, values: Sequence[Any]) -> bytes:
    """The Native bytes of one column as clickhouse-driver's own ``write_column`` makes them.

    ``context`` is the connection's (settings and server info steer some types, e.g. a DateTime's zone).
    The driver converts some values in place, so it is given a copy of ``values``.
    """
    collected = io.BytesIO()
    # The driver's column writers need its buffered writer; this one hands each full buffer to ``write``.
    writer = CompressedBufferedWriter(collected, BUFFER_SIZE)
    write_column(context, column_name, column_type, list(values), writer)
    writer.flush()
    return collected.getvalue()


# --- the block's framing ---------------------------------------------------------------------------------

# BlockInfo as the driver writes it: field 1 (is_overflows) = 0, field 2 (bucket_num) = -1, then 0.
_BLOCK_INFO = b"\x01\x00\x02\xff\xff\xff\xff\x00"


def _binary_string(text: str) -> bytes:
    encoded = text.encode()
    return varint(len(encoded)) + encoded


# --- encoders --------------------------------------------------------------------------------------------

# struct codes, little-endian with standard sizes: struct refuses a value out of the type's range or of
# another kind (struct.error, OverflowError), and packs a column as fast as array does, faster for signed
# and small integers.
_INTEGERS = {
    "Int8": "b",
    "Int16": "h",
    "Int32": "i",
    "Int64": "q",
    "UInt8": "B",
    "UInt16": "H",
    "UInt32": "I",
    "UInt64": "Q",
}
# struct refuses a value too large for a Float32, where array("f") would make it infinite.
_FLOATS = {"Float32": "f", "Float64": "d"}
_SECONDS = "I"  # a DateTime is seconds since the epoch as a UInt32
_OFFSETS = "Q"  # an array's offsets are UInt64


def _repeated(values: Sequence[Any]) -> bool:
    """Whether every value equals the first: most of a log's optional fields are empty, and many columns
    of a batch hold one value (a flag, a model, an organization).

    Checked at both ends first, so a column that varies costs two comparisons, not a pass.
    """
    return bool(values) and values[0] == values[-1] and values.count(values[0]) == len(values)


def _encode_integers(code: str, values: Sequence[Any]) -> bytes:
    """Integers packed with one struct code; a column of one value packs it once (so a value merely
    equal to it, 1.0 among 1s, is packed as that int: the same number)."""
    if _repeated(values):
        return struct.pack("<" + code, values[0]) * len(values)
    return struct.pack(f"<{len(values)}{code}", *values)


def _encode_floats(code: str, values: Sequence[Any]) -> bytes:
    """Floats packed with one struct code (never as repeats: 0.0 == -0.0, but their bytes differ)."""
    return struct.pack(f"<{len(values)}{code}", *values)


def _string_bytes(text: str) -> bytes:
    """One string as the Native format writes it: its UTF-8 length (a varint), then its bytes."""
    encoded = str.encode(text)  # TypeError for a value that is no str
    return varint(len(encoded)) + encoded


def _encode_strings(values: Sequence[Any]) -> bytes:
    """Strings, each as its UTF-8 length (a varint) and bytes."""
    count = len(values)
    if _repeated(values):
        return _string_bytes(values[0]) * count
    # The lengths as characters, interleaved with the strings: when the result is ASCII (every string
    # ASCII and shorter than 128, so its length is one byte) the column is one join and one copy.
    lengths = list(map(len, values))
    if len("".join(values)) < sys.maxunicode:  # so that every length is a character; TypeError if no str
        interleaved: list[str] = [""] * (2 * count)
        interleaved[0::2] = map(chr, lengths)
        interleaved[1::2] = values
        combined = "".join(interleaved)
        if combined.isascii():
            return combined.encode("ascii")
    encoded = list(map(str.encode, values))
    lengths = list(map(len, encoded))
    varints = {length: varint(length) for length in set(lengths)}  # few distinct lengths in a column
    parts: list[bytes] = [b""] * (2 * count)
    parts[0::2] = map(varints.__getitem__, lengths)
    parts[1::2] = encoded
    return b"".join(parts)


def _encode_fixed_strings(size: int, values: Sequence[Any]) -> bytes:
    """Strings' UTF-8 bytes, each padded with zeros to ``size``; a longer one is refused, never cut."""
    count = len(values)
    if not values:
        return b""
    if count > 1 and _repeated(values):
        return _encode_fixed_strings(size, values[:1]) * count
    encoded = list(map(str.encode, values))  # TypeError for a value that is no str
    longest = max(map(len, encoded))
    if longest > size:
        raise ValueError(f"a string of {longest} bytes does not fit FixedString({size})")
    return b"".join(map(bytes.ljust, encoded, repeat(size, count), repeat(b"\x00", count)))


_HALVES = next(code for code in "BHILQ" if array(code).itemsize == 8)


def _encode_uuids(values: Sequence[Any]) -> bytes:
    """Canonical UUID strings (any case) as ClickHouse stores a UUID: two little-endian UInt64 halves.

    The whole column is parsed at once (:func:`~candela_ingest.wire.validation.uuid_bytes`); reversing each
    8-byte half of the big-endian UUID bytes gives the two little-endian UInt64s.
    """
    count = len(values)
    if count > 1 and _repeated(values):
        return _encode_uuids(values[:1]) * count
    raw = uuid_bytes(values)  # TypeError for a value that is no str (a uuid.UUID included: give its text)
    if raw is None:
        raise _not_uuid(values)
    halves = array(_HALVES, raw)
    halves.byteswap()  # whatever the machine's order: each 8-byte half reversed, in memory
    return halves.tobytes()


def _not_uuid(values: Sequence[Any]) -> ValueError:
    """The error naming the first value that is no canonical UUID (only on the error path)."""
    bad = next((value for value in values if not is_canonical_uuid(value)), None)
    return ValueError(f"not a UUID (8-4-4-4-12 hex digits): {bad!r}")


# Exact for any value a 64-bit decimal can hold: scaling never rounds such a value, and the traps are off,
# so an absurd value becomes a non-finite or fractional result (refused below), never an ArithmeticError
# the writer would take for an outage.
_EXACT = Context(prec=80, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[])
_DECIMAL_TYPES = (Decimal, int)


def _decimal_units(precision: int, scale: int, value: Decimal | int) -> int:
    """``value`` in units of 10**-scale; refused if it has more places or more digits than the type."""
    if type(value) not in _DECIMAL_TYPES:
        raise TypeError(f"a decimal column holds {value!r}")
    units = Decimal(value).scaleb(scale, _EXACT)
    if not units.is_finite() or units != units.to_integral_value(context=_EXACT):
        raise ValueError(f"{value!r} has more than {scale} decimal places")
    if units and units.adjusted() >= precision:  # by its exponent: int() of 1E+999999 would take seconds
        raise ValueError(f"{value!r} does not fit Decimal({precision}, {scale})")
    return int(units)


def _encode_decimals(precision: int, scale: int, code: str, values: Sequence[Any]) -> bytes:
    """Decimals as their integer count of 10**-scale units (packed with ``code``).

    Each distinct value is converted once: a batch repeats few costs, and a conversion costs a few us.
    Values are Decimals or ints; equal values count as one (a set keeps one of them), so a float equal to
    a Decimal of the column is stored as that Decimal, exactly its value (on its own it is refused).
    """
    count = len(values)
    if _repeated(values):
        return struct.pack("<" + code, _decimal_units(precision, scale, values[0])) * count
    units = {value: _decimal_units(precision, scale, value) for value in set(values)}
    return struct.pack(f"<{count}{code}", *map(units.__getitem__, values))


_FIRST = itemgetter(0)


def _encode_arrays(element: Encoder, values: Sequence[Any]) -> bytes:
    """Arrays (lists) as the running total of their lengths (UInt64 offsets), then all their elements
    as one column of the element type."""
    count = len(values)
    if not values:
        return b""
    if values[0] == [] and _repeated(values):
        return bytes(8 * count)  # every offset 0, no elements
    # list.__len__ refuses anything but a list: a str would otherwise be taken apart into characters.
    lengths = list(map(list.__len__, values))
    size = lengths[0]
    offsets: Iterable[int]
    if lengths.count(size) == count:
        # One length throughout (one attempt, one property per log): the offsets are a range.
        offsets = range(size, size * count + 1, size)
        elements = list(map(_FIRST, values)) if size == 1 else list(chain.from_iterable(values))
    else:
        offsets = accumulate(lengths)
        elements = list(chain.from_iterable(values))
    return struct.pack(f"<{count}{_OFFSETS}", *offsets) + element(elements)


_FIXED_STRING = re.compile(r"FixedString\((\d+)\)")
_DATETIME = re.compile(r"DateTime(?:\('[^']*'\))?")
_DECIMAL = re.compile(r"Decimal\((\d+), *(\d+)\)")
_INT64_DIGITS = 18  # Decimal(P, S) with P <= 18 is an Int64 (P <= 9: an Int32); wider ones are left to the driver


@functools.lru_cache(maxsize=256)
def _encoder(column_type: str) -> Encoder | None:
    """The encoder of a type (parsed once per type: a batch asks for every column's)."""
    if column_type == "String":
        return _encode_strings
    if column_type == "UUID":
        return _encode_uuids
    if column_type in _INTEGERS:
        return functools.partial(_encode_integers, _INTEGERS[column_type])
    if column_type in _FLOATS:
        return functools.partial(_encode_floats, _FLOATS[column_type])
    if _DATETIME.fullmatch(column_type):
        return functools.partial(_encode_integers, _SECONDS)
    if match := _FIXED_STRING.fullmatch(column_type):
        return functools.partial(_encode_fixed_strings, int(match[1]))
    if (match := _DECIMAL.fullmatch(column_type)) and int(match[1]) <= _INT64_DIGITS:
        precision, scale = int(match[1]), int(match[2])
        code = _INTEGERS["Int32"] if precision <= 9 else _INTEGERS["Int64"]
        return functools.partial(_encode_decimals, precision, scale, code)
    if column_type.startswith("Array(") and column_type.endswith(")"):
        element = _encoder(column_type[len("Array(") : -1])
        return None if element is None else functools.partial(_encode_arrays, element)
    return None
