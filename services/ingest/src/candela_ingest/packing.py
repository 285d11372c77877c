"""Packing a batch's bodies into one S3 object per organization, and the LogMessages that point into them.

An object is the plain concatenation of its bodies (no framing, no compression), so any body can be read
back with one ranged GET at its :class:`BodyRef`, and an organization's data is deleted by removing its
``bodies/<organization_id>/`` prefix. The date in the key is the day the batch was ingested (not the
requests' own days: a batch replayed from a proxy's spool still packs into one object per organization),
so a retention sweep by key date keeps a body at most as long as the spool delay beyond its row.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from google.protobuf import timestamp_pb2

from candela.ingest.v1 import ingest_service_pb2
from candela.logs.v1 import log_record_pb2

BODIES_PREFIX = "bodies"

# LogMessage's fields (candela/logs/v1/log_record.proto) as wire-format tags: field number << 3 | 2, the
# length-delimited wire type of a message or string field.
_RECORD_TAG = b"\x0a"  # LogMessage.record = 1
_REQUEST_BODY_TAG = b"\x12"  # LogMessage.request_body = 2
_RESPONSE_BODY_TAG = b"\x1a"  # LogMessage.response_body = 3
_INGESTED_AT_TAG = b"\x22"  # LogMessage.ingested_at = 4
_OBJECT_KEY_TAG = b"\x0a"  # BodyRef.object_key = 1
_OFFSET_TAG = b"\x10"  # BodyRef.offset = 2, a varint
_LENGTH_TAG = b"\x18"  # BodyRef.length = 3, a varint


@dataclass(frozen=True)
class PackedObject:
    """One S3 object to upload: the bodies of one organization's records in a batch."""

    organization_id: str
    key: str
    data: bytes


@dataclass(frozen=True)
class PackedBatch:
    """The objects to upload for a batch, and one serialized LogMessage and its Kafka key per record (in
    request order)."""

    objects: tuple[PackedObject, ...]
    organization_ids: frozenset[str]
    """The organizations of the batch's records (canonical form)."""
    keys: tuple[bytes, ...]
    """Each message's Kafka key: its request id in canonical (lower-case) form."""
    values: tuple[bytes, ...]
    """Each serialized LogMessage, byte for byte what ``LogMessage.SerializeToString()`` gives."""

    @property
    def messages(self) -> tuple[log_record_pb2.LogMessage, ...]:
        """The LogMessages, parsed back from :attr:`values` (to inspect them; ingest produces the values)."""
        return tuple(log_record_pb2.LogMessage.FromString(value) for value in self.values)


def object_key(organization_id: str, ingested_at: datetime, object_id: uuid.UUID) -> str:
    """``bodies/<organization_id>/<yyyy>/<mm>/<dd>/<object_id>.bin``."""
    return f"{BODIES_PREFIX}/{organization_id}/{ingested_at:%Y/%m/%d}/{object_id}.bin"


def _encode_varint(value: int) -> bytes:
    """``value`` (not negative) as a protobuf base-128 varint."""
    encoded = bytearray()
    while value >= 0x80:
        encoded.append(value & 0x7F | 0x80)
        value >>= 7
    encoded.append(value)
    return bytes(encoded)


# Varints are looked up rather than computed (several are written for every log): those of one and two
# bytes (lengths of records, bodies and BodyRefs are nearly always below 16 KiB) and, for the offsets in an
# object of up to 256 MiB, the low 14 bits of a longer one (two 7-bit groups, both marked "more follows").
_VARINT_TABLE_SIZE = 1 << 14
_VARINTS = tuple(_encode_varint(value) for value in range(_VARINT_TABLE_SIZE))
_LOW_GROUPS = tuple(bytes((value & 0x7F | 0x80, value >> 7 | 0x80)) for value in range(_VARINT_TABLE_SIZE))


def _varint(value: int) -> bytes:
    """``value`` (not negative) as a protobuf base-128 varint."""
    if value < _VARINT_TABLE_SIZE:
        return _VARINTS[value]
    if value < _VARINT_TABLE_SIZE * _VARINT_TABLE_SIZE:
        return _LOW_GROUPS[value & (_VARINT_TABLE_SIZE - 1)] + _VARINTS[value >> 14]
    return _encode_varint(value)


class _ObjectBuilder:
    """Accumulates the bodies of one organization and hands out the BodyRefs that point at them."""

    def __init__(self, organization_id: str, key: str) -> None:
        self.organization_id = organization_id
        self.key = key
        encoded_key = key.encode()
        self._key_field = _OBJECT_KEY_TAG + _varint(len(encoded_key)) + encoded_key
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, tag: bytes, body: bytes) -> bytes:
        """Appends ``body`` (not empty); returns the LogMessage field ``tag`` holding its BodyRef, serialized."""
        offset = self.size
        length = len(body)
        self.parts.append(body)
        self.size = offset + length
        # proto3 leaves a zero offset out, as SerializeToString() does.
        ref = b"".join(
            (self._key_field, _OFFSET_TAG, _varint(offset), _LENGTH_TAG, _varint(length))
            if offset
            else (self._key_field, _LENGTH_TAG, _varint(length))
        )
        return tag + _varint(len(ref)) + ref


def _canonical_copy(
    record: log_record_pb2.LogRecord, request_id: str, organization_id: str, api_key_id: str
) -> log_record_pb2.LogRecord:
    """A copy of ``record`` with its identifiers replaced by their canonical forms (the request is not
    modified)."""
    copy = log_record_pb2.LogRecord()
    copy.CopyFrom(record)
    copy.request_id = request_id
    copy.organization_id = organization_id
    copy.api_key_id = api_key_id
    return copy


def pack_batch(
    records: Sequence[ingest_service_pb2.IngestRecord],
    ingested_at: datetime,
    new_object_id: Callable[[], uuid.UUID] = uuid.uuid4,
) -> PackedBatch:
    """Packs the bodies of validated ``records`` and serializes their LogMessages.

    Identifiers are lower-cased to their canonical form, so a request id is the same Kafka key and
    the same ClickHouse value however the client spelled it. Empty bodies get no BodyRef.

    This runs for every log, so a LogMessage is not built as a message: its serialization is the
    concatenation of its fields' (the record serialized as received when its identifiers are already
    canonical, BodyRefs written directly, the batch's one ``ingested_at``), in field-number order as
    ``SerializeToString()`` writes them.
    """
    builders: dict[str, _ObjectBuilder] = {}
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(ingested_at)
    serialized_stamp = stamp.SerializeToString()
    ingested_at_field = _INGESTED_AT_TAG + _varint(len(serialized_stamp)) + serialized_stamp
    organization_ids: set[str] = set()
    keys: list[bytes] = []
    values: list[bytes] = []
    for item in records:
        record = item.record
        request_id = record.request_id
        organization_id = record.organization_id
        api_key_id = record.api_key_id
        # islower() is False for an identifier without letters too: only a needless (and rare) copy.
        if not (request_id.islower() and organization_id.islower() and (api_key_id.islower() or not api_key_id)):
            request_id, organization_id = request_id.lower(), organization_id.lower()
            record = _canonical_copy(record, request_id, organization_id, api_key_id.lower())
        organization_ids.add(organization_id)
        serialized = record.SerializeToString()
        fields = [_RECORD_TAG, _varint(len(serialized)), serialized]
        request_body = item.request_body
        response_body = item.response_body
        if request_body or response_body:
            builder = builders.get(organization_id)
            if builder is None:
                key = object_key(organization_id, ingested_at, new_object_id())
                builder = builders[organization_id] = _ObjectBuilder(organization_id, key)
            if request_body:
                fields.append(builder.add(_REQUEST_BODY_TAG, request_body))
            if response_body:
                fields.append(builder.add(_RESPONSE_BODY_TAG, response_body))
        fields.append(ingested_at_field)
        keys.append(request_id.encode())
        values.append(b"".join(fields))
    objects = tuple(
        PackedObject(organization_id=builder.organization_id, key=builder.key, data=b"".join(builder.parts))
        for builder in builders.values()
    )
    return PackedBatch(
        objects=objects, organization_ids=frozenset(organization_ids), keys=tuple(keys), values=tuple(values)
    )


def read_body(data: bytes, ref: log_record_pb2.BodyRef) -> bytes:
    """The body ``ref`` points at inside a packed object's bytes."""
    return data[ref.offset : ref.offset + ref.length]
