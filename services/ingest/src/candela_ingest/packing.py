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


@dataclass(frozen=True)
class PackedObject:
    """One S3 object to upload: the bodies of one organization's records in a batch."""

    organization_id: str
    key: str
    data: bytes


@dataclass(frozen=True)
class PackedBatch:
    """The objects to upload for a batch, and one LogMessage per record (in request order)."""

    objects: tuple[PackedObject, ...]
    messages: tuple[log_record_pb2.LogMessage, ...]


def object_key(organization_id: str, ingested_at: datetime, object_id: uuid.UUID) -> str:
    """``bodies/<organization_id>/<yyyy>/<mm>/<dd>/<object_id>.bin``."""
    return f"{BODIES_PREFIX}/{organization_id}/{ingested_at:%Y/%m/%d}/{object_id}.bin"


class _ObjectBuilder:
    """Accumulates the bodies of one organization and hands out their offsets."""

    def __init__(self, organization_id: str, key: str) -> None:
        self.organization_id = organization_id
        self.key = key
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, body: bytes, ref: log_record_pb2.BodyRef) -> None:
        """Appends ``body`` and points ``ref`` (a field of the message being built) at it."""
        ref.object_key = self.key
        ref.offset = self.size
        ref.length = len(body)
        self.parts.append(body)
        self.size += len(body)


def pack_batch(
    records: Sequence[ingest_service_pb2.IngestRecord],
    ingested_at: datetime,
    new_object_id: Callable[[], uuid.UUID] = uuid.uuid4,
) -> PackedBatch:
    """Packs the bodies of validated ``records`` and builds their LogMessages.

    Identifiers are lower-cased to their canonical form, so a request id is the same Kafka key and
    the same ClickHouse value however the client spelled it. Empty bodies get no BodyRef.
    """
    builders: dict[str, _ObjectBuilder] = {}
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(ingested_at)
    messages = []
    for item in records:
        # Built in place (one copy of the record, no intermediate messages): this runs for every log.
        message = log_record_pb2.LogMessage()
        message.ingested_at.CopyFrom(stamp)
        record = message.record
        record.CopyFrom(item.record)
        record.request_id = record.request_id.lower()
        record.organization_id = record.organization_id.lower()
        record.api_key_id = record.api_key_id.lower()
        for body, target in ((item.request_body, message.request_body), (item.response_body, message.response_body)):
            if not body:
                continue
            builder = builders.get(record.organization_id)
            if builder is None:
                key = object_key(record.organization_id, ingested_at, new_object_id())
                builder = builders[record.organization_id] = _ObjectBuilder(record.organization_id, key)
            builder.add(body, target)
        messages.append(message)
    objects = tuple(
        PackedObject(organization_id=builder.organization_id, key=builder.key, data=b"".join(builder.parts))
        for builder in builders.values()
    )
    return PackedBatch(objects=objects, messages=tuple(messages))


def read_body(data: bytes, ref: log_record_pb2.BodyRef) -> bytes:
    """The body ``ref`` points at inside a packed object's bytes."""
    return data[ref.offset : ref.offset + ref.length]
