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
from dataclasses import dataclass, field

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError

from candela_runtime.errors import FieldViolation, InvalidArgument

MAX_DEPTH = 100
"""How deep messages may nest: the limit of the protobuf runtime (upb) that parses every request."""
MAX_FIELDS_EXPLAINED = 5_000
"""Fields read to explain a failure; past that the answer is generic, so explaining a 4 MiB request of
tiny fields blocks the event loop for under 10 ms (measured: 6-8 ms)."""

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


def explain(message_type: Descriptor, data: bytes) -> FieldViolation | None:
    """Why ``data`` does not parse as ``message_type``: the first bad field, or None when none is found.

    The bytes are read as upb reads them (unknown fields and mismatched wire types are skipped, groups
    count towards the depth). The field is a path such as ``filter.conditions[0].value``; a message nested
    too deeply is named by the request's top-level field that holds it, since the full path would be a
    hundred levels long.
    """
    frames = [_Frame(message_type, len(data), "", 0)]
    position = fields_seen = 0
    while frames:
        frame = frames[-1]
        if position >= frame.end:
            if frame.is_group:
                return FieldViolation(frame.path, _CORRUPT)  # a group without its END_GROUP
            frames.pop()
            continue
        fields_seen += 1
        if fields_seen > MAX_FIELDS_EXPLAINED:
            return None
        tag, position = _varint(data, position, frame.end)
        if tag is None or not 0 < tag >> 3 <= _MAX_FIELD_NUMBER:
            return FieldViolation(frame.path, _CORRUPT)
        field, path = frame.lookup(tag >> 3)
        wire_type = tag & 7
        if wire_type == _VARINT:
            value, position = _varint(data, position, frame.end)
            if value is None:
                return FieldViolation(path, _CORRUPT)
        elif wire_type in (_FIXED64, _FIXED32):
            position += 8 if wire_type == _FIXED64 else 4
            if position > frame.end:
                return FieldViolation(path, _CORRUPT)
        elif wire_type == _LENGTH_DELIMITED:
            length, position = _varint(data, position, frame.end)
            if length is None or position + length > frame.end:
                return FieldViolation(path, _CORRUPT)
            if field is not None and field.type == FieldDescriptor.TYPE_MESSAGE:
                if frame.depth >= MAX_DEPTH:
                    return _too_deep(path)
                frames.append(_Frame(field.message_type, position + length, path, frame.depth + 1))
                continue  # the sub-message is read next; it ends where its length says
            if field is not None and field.type == FieldDescriptor.TYPE_STRING and not _is_utf8(data, position, length):
                return FieldViolation(path, "is not valid UTF-8 (a string field holds UTF-8 text)")
            position += length
        elif wire_type == _START_GROUP:
            if frame.depth >= MAX_DEPTH:
                return _too_deep(path)
            frames.append(_Frame(None, frame.end, path, frame.depth + 1, is_group=True))
        elif wire_type == _END_GROUP and frame.is_group:
            frames.pop()
        else:
            return FieldViolation(path, _CORRUPT)
    return None


@dataclass
class _Frame:
    """A message (or an unknown group) being read: where it ends, its path and depth, fields seen."""

    message_type: Descriptor | None
    end: int
    path: str
    depth: int
    is_group: bool = False
    seen: dict[int, int] = field(default_factory=dict)

    def lookup(self, number: int) -> tuple[FieldDescriptor | None, str]:
        """The field ``number`` of this message (None when unknown) and its path, indexed when repeated."""
        found = self.message_type.fields_by_number.get(number) if self.message_type is not None else None
        index = self.seen.get(number, 0)
        self.seen[number] = index + 1
        if found is None:
            return None, self.path
        path = f"{self.path}.{found.name}" if self.path else found.name
        return found, f"{path}[{index}]" if found.is_repeated else path


def _varint(data: bytes, position: int, end: int) -> tuple[int | None, int]:
    """The varint at ``position`` and the position after it; None when it runs past ``end`` or 10 bytes."""
    value = shift = 0
    while position < end and shift < 70:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position
    return None, position


def _is_utf8(data: bytes, start: int, length: int) -> bool:
    try:
        data[start : start + length].decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _too_deep(path: str) -> FieldViolation:
    return FieldViolation(path.split(".", 1)[0], f"nests messages more than {MAX_DEPTH} levels deep (protobuf's limit)")
