"""Requests whose bytes do not parse: a deserializer that never raises, and which field was wrong.

grpcio answers UNKNOWN when a request deserializer raises, yet bytes that are not the method's message
(truncated or corrupt, a string field that is not UTF-8, messages nested deeper than protobuf's limit) are
the caller's mistake. :func:`tolerant_deserializer` hands the handler an :class:`UndecodableRequest`
instead, carrying the INVALID_ARGUMENT to answer; :func:`explain` walks the wire format to name the field.
The REST gateway meets the same case: Envoy's transcoder does not check UTF-8, so a path parameter such
as ``GET /v1/request/%ff%fe`` reaches the service as a string field holding bytes ``ff fe``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError

from candela_runtime.errors import FieldViolation, InvalidArgument

MAX_DEPTH = 100
"""How deep messages may nest: the limit of the protobuf runtime (upb) that parses every request."""
MAX_FIELDS_EXPLAINED = 10_000
"""Fields walked to explain a failure; past that the answer is generic, so explaining a 4 MiB request of
tiny fields blocks the event loop for ~15 ms at most."""

_VARINT, _FIXED64, _LENGTH_DELIMITED, _START_GROUP, _END_GROUP, _FIXED32 = range(6)
_MAX_FIELD_NUMBER = 2**29 - 1
_CORRUPT = "truncated or corrupt bytes (not a valid protobuf encoding)"


@dataclass(frozen=True)
class UndecodableRequest:
    """Stands in for a request whose bytes did not parse; ``error`` is the answer the caller gets."""

    error: InvalidArgument


def tolerant_deserializer(
    deserializer: Callable[[bytes], object], message_type: Descriptor | None
) -> Callable[[bytes], object]:
    """``deserializer``, returning an :class:`UndecodableRequest` where it would raise ``DecodeError``."""

    def deserialize(data: bytes) -> object:
        try:
            return deserializer(data)
        except DecodeError:
            return UndecodableRequest(undecodable(message_type, data))

    return deserialize


def undecodable(message_type: Descriptor | None, data: bytes) -> InvalidArgument:
    """The INVALID_ARGUMENT for ``data`` that does not parse as ``message_type``, naming the bad field."""
    name = message_type.name if message_type is not None else "the method's request message"
    violation = explain(message_type, data) if message_type is not None else None
    if violation is None:
        violation = FieldViolation("", _CORRUPT)
    where = f"{violation.field}: " if violation.field else ""
    return InvalidArgument(f"the request is not a valid {name}: {where}{violation.description}", [violation])


class _Problem(Exception):
    """Found: the walk stops at the first problem."""

    def __init__(self, violation: FieldViolation | None) -> None:
        super().__init__()
        self.violation = violation


def explain(message_type: Descriptor, data: bytes) -> FieldViolation | None:
    """Why ``data`` does not parse as ``message_type``: the first bad field, or None when none is found.

    The field is a path such as ``filter.conditions[0].value``; a message nested too deeply is named by
    the request's top-level field that holds it, since the full path would be a hundred levels long.
    """
    walker = _Walker(data)
    try:
        walker.message(message_type, 0, len(data), "", 0)
    except _Problem as problem:
        return problem.violation
    return None


class _Walker:
    """Reads the wire format as upb does (unknown fields and mismatched wire types are skipped)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.fields_seen = 0

    def varint(self, position: int, end: int, path: str) -> tuple[int, int]:
        value = shift = 0
        while True:
            if position >= end or shift >= 70:
                raise _Problem(FieldViolation(path, _CORRUPT))
            byte = self.data[position]
            position += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value, position

    def message(self, message_type: Descriptor | None, position: int, end: int, path: str, depth: int) -> int:
        """Walks one message (or group, when ``message_type`` is None and it ends at an END_GROUP tag)."""
        seen: dict[int, int] = {}
        while position < end:
            self.fields_seen += 1
            if self.fields_seen > MAX_FIELDS_EXPLAINED:
                raise _Problem(None)
            tag, position = self.varint(position, end, path)
            number, wire_type = tag >> 3, tag & 7
            if not 0 < number <= _MAX_FIELD_NUMBER:
                raise _Problem(FieldViolation(path, _CORRUPT))
            field = message_type.fields_by_number.get(number) if message_type is not None else None
            index = seen.get(number, 0)
            seen[number] = index + 1
            field_path = path
            if field is not None:
                field_path = f"{path}.{field.name}" if path else field.name
                if field.is_repeated:
                    field_path = f"{field_path}[{index}]"
            if wire_type == _VARINT:
                _, position = self.varint(position, end, field_path)
            elif wire_type in (_FIXED64, _FIXED32):
                position += 8 if wire_type == _FIXED64 else 4
                if position > end:
                    raise _Problem(FieldViolation(field_path, _CORRUPT))
            elif wire_type == _LENGTH_DELIMITED:
                length, position = self.varint(position, end, field_path)
                if position + length > end:
                    raise _Problem(FieldViolation(field_path, _CORRUPT))
                self.value(field, position, position + length, field_path, depth)
                position += length
            elif wire_type == _START_GROUP:
                position = self.group(position, end, field_path, depth)
            elif wire_type == _END_GROUP and message_type is None:
                return position
            else:
                raise _Problem(FieldViolation(field_path, _CORRUPT))
        if message_type is None:
            raise _Problem(FieldViolation(path, _CORRUPT))  # a group without its END_GROUP
        return position

    def group(self, position: int, end: int, path: str, depth: int) -> int:
        self.check_depth(path, depth + 1)
        return self.message(None, position, end, path, depth + 1)

    def value(self, field: FieldDescriptor | None, start: int, end: int, path: str, depth: int) -> None:
        """Checks a length-delimited value of a known field (strings, messages); skips the rest."""
        if field is None:
            return
        if field.type == FieldDescriptor.TYPE_STRING:
            try:
                self.data[start:end].decode("utf-8")
            except UnicodeDecodeError:
                raise _Problem(FieldViolation(path, "is not valid UTF-8 (a string field holds UTF-8 text)")) from None
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            self.check_depth(path, depth + 1)
            self.message(field.message_type, start, end, path, depth + 1)

    @staticmethod
    def check_depth(path: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            top = path.split(".", 1)[0]
            raise _Problem(FieldViolation(top, f"nests messages more than {MAX_DEPTH} levels deep (protobuf's limit)"))
