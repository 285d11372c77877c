"""Packing a batch's bodies into one S3 object per organization, and the LogMessages that point into them.

An object is a sequence of independent zstd frames, each holding consecutive bodies of the batch (a frame
is closed when the next body would take it past :data:`MAX_FRAME_BYTES`; a bigger body gets a frame of its
own). Concatenated zstd frames are one valid zstd stream, so the object is a plain ``.zst`` file of the
bodies back to back. A :class:`BodyRef` names the body's frame (``frame_offset``, ``frame_length``) and its
place inside the decompressed frame (``offset``, ``length``): a reader fetches the frame with one ranged GET
and decompresses only it. LLM bodies are JSON text: frames of ~64 KiB compress them ~3x (one frame per body
would compress ~1 KiB bodies only ~1.8x, and cost more per body). That costs ~8 us of CPU per log here and
saves more than it costs: SeaweedFS spent ~4x less CPU storing the objects (47 -> 12 ms per 1,000 logs; it
gzipped text itself before, so its disk use barely changes), boto3 ~2 ms less signing and sending them, and
an S3 that stores objects as they come (AWS, MinIO) keeps a third of the bytes.

An organization's data is deleted by removing its ``bodies/<organization_id>/`` prefix. The date in the
key is the day the batch was ingested (not the requests' own days: a batch replayed from a proxy's spool
still packs into one object per organization), so a retention sweep by key date keeps a body at most as
long as the spool delay beyond its row.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import zstandard
from google.protobuf import timestamp_pb2

from candela.ingest.v1 import ingest_service_pb2
from candela.logs.v1 import log_record_pb2
from candela_ingest.wire import logwire, tags
from candela_ingest.wire.validation import EARLIEST_SECONDS, BatchLimits
from candela_ingest.wire.varint import varint
from candela_runtime.limits import MAX_PROMPT_INPUTS_BYTES

BODIES_PREFIX = "bodies"
OBJECT_CONTENT_TYPE = "application/zstd"
"""The packed objects' media type: any zstd tool reads them. (SeaweedFS does not gzip them again either way:
it spent the same CPU on the same bytes sent as application/octet-stream under a .bin key.)"""
MAX_FRAME_BYTES = 64 * 1024
"""Uncompressed bytes past which a frame holds no further body. Frames of several ~1 KiB JSON bodies compress
~3.3x at this size (gains flatten beyond it), and a reader decompresses at most this much besides the
bodies it wants; the proto promises readers at most 1 MiB for a frame holding more than one body."""
COMPRESSION_LEVEL = 1
"""zstd's level. Measured on ~1 KiB JSON bodies in 64 KiB frames: ~5 us per KiB and 3.3x; the faster
(negative) levels saved no CPU there and compressed 2.7-2.9x, level 3 cost 20% more for 3.45x."""

# LogMessage's and BodyRef's fields as wire-format tags (numbers from candela_ingest.wire.tags).
_RECORD_TAG = tags.tag(tags.LogMessage.RECORD, tags.WIRE_LEN)
_REQUEST_BODY_TAG = tags.tag(tags.LogMessage.REQUEST_BODY, tags.WIRE_LEN)
_RESPONSE_BODY_TAG = tags.tag(tags.LogMessage.RESPONSE_BODY, tags.WIRE_LEN)
_INGESTED_AT_TAG = tags.tag(tags.LogMessage.INGESTED_AT, tags.WIRE_LEN)
_OBJECT_KEY_TAG = tags.tag(tags.BodyRef.OBJECT_KEY, tags.WIRE_LEN)
_OFFSET_TAG = tags.tag(tags.BodyRef.OFFSET, tags.WIRE_VARINT)
_LENGTH_TAG = tags.tag(tags.BodyRef.LENGTH, tags.WIRE_VARINT)
_FRAME_OFFSET_TAG = tags.tag(tags.BodyRef.FRAME_OFFSET, tags.WIRE_VARINT)
_FRAME_LENGTH_TAG = tags.tag(tags.BodyRef.FRAME_LENGTH, tags.WIRE_VARINT)


@dataclass(frozen=True)
class PackedObject:
    """One S3 object to upload: the bodies of one organization's records in a batch, as zstd frames."""

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
    """Each serialized LogMessage (byte for byte what ``LogMessage.SerializeToString()`` gives, when its
    record field is what the record's ``SerializeToString()`` gives)."""

    @property
    def messages(self) -> tuple[log_record_pb2.LogMessage, ...]:
        """The LogMessages, parsed back from :attr:`values` (to inspect them; ingest produces the values)."""
        return tuple(log_record_pb2.LogMessage.FromString(value) for value in self.values)


def object_key(organization_id: str, ingested_at: datetime, object_id: uuid.UUID) -> str:
    """``bodies/<organization_id>/<yyyy>/<mm>/<dd>/<object_id>.zst``."""
    return f"{BODIES_PREFIX}/{organization_id}/{ingested_at:%Y/%m/%d}/{object_id}.zst"


_compressors = threading.local()


def _thread_compressor() -> zstandard.ZstdCompressor:
    """This thread's compressor (one is not safe to share between threads, and making one per batch would
    allocate its buffers each time).

    Its frames declare their content size, which bounds what a reader decompresses, and end with a
    checksum of their content, as the zstd tool writes by default: the format alone does not catch a
    changed byte in a stored (incompressible) block, and the checksum costs ~2% of the compression
    (0.2-0.3 ms per 1,000 logs of 2 KiB, within this machine's noise), so a reader never hands out a
    silently altered body and ``zstd -t`` fully checks an object.
    """
    compressor: zstandard.ZstdCompressor | None = getattr(_compressors, "compressor", None)
    if compressor is None:
        compressor = zstandard.ZstdCompressor(level=COMPRESSION_LEVEL, write_checksum=True)
        _compressors.compressor = compressor
    return compressor


_RefSlot = tuple[list[bytes], int, bytes, int, int]
"""Where a BodyRef goes once its frame is known: a LogMessage's fields, the index of the field, the field's
tag, and the body's offset and length inside its frame."""


class _ObjectBuilder:
    """Compresses the bodies of one organization into frames and writes the BodyRefs that point at them.

    A body's ref names its frame, which is known only once the frame is closed: :meth:`add` leaves a
    placeholder in the LogMessage's fields and :meth:`close_frame` fills in those of the frame's bodies.
    """

    def __init__(self, organization_id: str, key: str, compressor: zstandard.ZstdCompressor) -> None:
        self.organization_id = organization_id
        self.key = key
        encoded_key = key.encode()
        self._key_field = _OBJECT_KEY_TAG + varint(len(encoded_key)) + encoded_key
        self._compressor = compressor
        self.frames: list[bytes] = []
        self._size = 0  # bytes of the closed frames: where the open frame will start
        self._bodies: list[bytes] = []  # those of the open frame
        self._frame_size = 0  # uncompressed bytes of the open frame
        self._slots: list[_RefSlot] = []  # the refs of the open frame's bodies

    def add(self, fields: list[bytes], tag: bytes, body: bytes) -> None:
        """Appends ``body`` (not empty) to the open frame, and to ``fields`` a placeholder for the LogMessage
        field ``tag`` holding its BodyRef, written when the frame is closed."""
        length = len(body)
        if self._frame_size and self._frame_size + length > MAX_FRAME_BYTES:
            self.close_frame()
        self._slots.append((fields, len(fields), tag, self._frame_size, length))
        fields.append(b"")
        self._bodies.append(body)
        self._frame_size += length

    def close_frame(self) -> None:
        """Compresses the open frame (if it holds anything) and writes its bodies' BodyRefs."""
        if not self._bodies:
            return
        frame = self._compressor.compress(b"".join(self._bodies))
        frame_offset = self._size
        self.frames.append(frame)
        self._size += len(frame)
        # proto3 leaves zeros out (a first frame's offset, a frame's first body's offset), as
        # SerializeToString() does; fields go in field-number order.
        frame_fields = _FRAME_LENGTH_TAG + varint(len(frame))
        if frame_offset:
            frame_fields = _FRAME_OFFSET_TAG + varint(frame_offset) + frame_fields
        key_field = self._key_field
        for fields, index, tag, offset, length in self._slots:
            ref = b"".join(
                (key_field, _OFFSET_TAG, varint(offset), _LENGTH_TAG, varint(length), frame_fields)
                if offset
                else (key_field, _LENGTH_TAG, varint(length), frame_fields)
            )
            fields[index] = tag + varint(len(ref)) + ref
        self._bodies = []
        self._frame_size = 0
        self._slots = []


class BatchParts(NamedTuple):
    """A validated batch, as :func:`pack_parts` takes it: one item per record in each list, in request order."""

    records: Sequence[bytes]
    """Each LogMessage's record field: its tag, its length and the serialized LogRecord, ids canonical."""
    keys: Sequence[bytes]
    """Each request id in canonical (lower-case) form: the Kafka key."""
    organization_ids: Sequence[str]
    """Each organization id in canonical form."""
    request_bodies: Sequence[bytes]
    response_bodies: Sequence[bytes]
    trace_contexts: Sequence[Mapping[str, str] | None]
    """Each record's trace context (see candela_ingest.propagation); empty or None when it has none."""


def batch_parts(records: Sequence[ingest_service_pb2.IngestRecord]) -> BatchParts:
    """The parts of parsed and validated ``records``, identifiers lower-cased to their canonical form (so a
    request id is the same Kafka key and the same ClickHouse value however the client spelled it).

    A record whose identifiers are already canonical is serialized as it is; others are copied first (the
    request is not modified).
    """
    serialized_records, keys, organization_ids = [], [], []
    for item in records:
        record = item.record
        request_id = record.request_id
        organization_id = record.organization_id
        api_key_id = record.api_key_id
        # islower() is False for an identifier without letters too: only a needless (and rare) copy.
        if not (request_id.islower() and organization_id.islower() and (api_key_id.islower() or not api_key_id)):
            request_id, organization_id = request_id.lower(), organization_id.lower()
            copy = log_record_pb2.LogRecord()
            copy.CopyFrom(record)
            copy.request_id, copy.organization_id, copy.api_key_id = request_id, organization_id, api_key_id.lower()
            record = copy
        serialized = record.SerializeToString()
        serialized_records.append(_RECORD_TAG + varint(len(serialized)) + serialized)
        keys.append(request_id.encode())
        organization_ids.append(organization_id)
    return BatchParts(
        serialized_records,
        keys,
        organization_ids,
        [item.request_body for item in records],
        [item.response_body for item in records],
        [item.trace_context for item in records],
    )


def wire_batch_parts(data: bytes, limits: BatchLimits, latest_created_at: datetime) -> BatchParts | None:
    """The parts of a serialized IngestRequest, read in C, when every record surely passes
    :func:`~candela_ingest.wire.validation.validate_ingest_request` (with ``latest_created_at`` its ``now`` plus
    the allowed clock skew) with its identifiers already canonical; None otherwise, which means "parse and
    check it exactly", not "invalid".

    The records are passed on as received: the same LogRecords as :func:`batch_parts` serializes (the
    bytes may differ, e.g. in the order of map entries).
    """
    parts = logwire.ingest_request(
        data,
        limits.max_batch_records,
        limits.max_record_bytes,
        # A record whose metadata could hold prompt inputs above their bound takes the exact checks.
        min(limits.max_metadata_bytes, MAX_PROMPT_INPUTS_BYTES),
        EARLIEST_SECONDS,
        int(latest_created_at.timestamp()),
    )
    return None if parts is None else BatchParts(*parts)


def pack_batch(
    records: Sequence[ingest_service_pb2.IngestRecord],
    ingested_at: datetime,
    new_object_id: Callable[[], uuid.UUID] = uuid.uuid4,
) -> PackedBatch:
    """Packs validated ``records`` (see :func:`batch_parts` and :func:`pack_parts`)."""
    return pack_parts(batch_parts(records), ingested_at, new_object_id)


def pack_parts(
    parts: BatchParts,
    ingested_at: datetime,
    new_object_id: Callable[[], uuid.UUID] = uuid.uuid4,
) -> PackedBatch:
    """Packs the bodies of a validated batch and serializes its LogMessages. Empty bodies get no BodyRef.

    This runs for every log, so a LogMessage is not built as a message: its serialization is the
    concatenation of its fields' (the record field, BodyRefs written directly once their frames are closed,
    the batch's one ``ingested_at``), in field-number order as ``SerializeToString()`` writes them.
    """
    builders: dict[str, _ObjectBuilder] = {}
    compressor = _thread_compressor()
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(ingested_at)
    serialized_stamp = stamp.SerializeToString()
    ingested_at_field = _INGESTED_AT_TAG + varint(len(serialized_stamp)) + serialized_stamp
    messages: list[list[bytes]] = []
    for record, organization_id, request_body, response_body in zip(
        parts.records, parts.organization_ids, parts.request_bodies, parts.response_bodies, strict=True
    ):
        fields = [record]
        if request_body or response_body:
            builder = builders.get(organization_id)
            if builder is None:
                key = object_key(organization_id, ingested_at, new_object_id())
                builder = builders[organization_id] = _ObjectBuilder(organization_id, key, compressor)
            if request_body:
                builder.add(fields, _REQUEST_BODY_TAG, request_body)
            if response_body:
                builder.add(fields, _RESPONSE_BODY_TAG, response_body)
        fields.append(ingested_at_field)
        messages.append(fields)
    for builder in builders.values():
        builder.close_frame()
    objects = tuple(
        PackedObject(organization_id=builder.organization_id, key=builder.key, data=b"".join(builder.frames))
        for builder in builders.values()
    )
    return PackedBatch(
        objects=objects,
        organization_ids=frozenset(parts.organization_ids),
        keys=tuple(parts.keys),
        values=tuple(map(b"".join, messages)),
    )


def read_body(data: bytes, ref: log_record_pb2.BodyRef) -> bytes:
    """The body ``ref`` points at inside a packed object's bytes (of either layout, framed or not)."""
    if ref.frame_length:
        data = zstandard.ZstdDecompressor().decompress(
            data[ref.frame_offset : ref.frame_offset + ref.frame_length], allow_extra_data=False
        )
    return data[ref.offset : ref.offset + ref.length]
