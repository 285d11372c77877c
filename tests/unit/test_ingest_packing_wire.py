"""Packed LogMessages are written as wire bytes directly: the same bytes the protobuf library would give."""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal

import pytest
import zstandard

from candela.ingest.v1 import ingest_service_pb2 as pb
from candela.logs.v1 import log_record_pb2
from candela_ingest.packing import MAX_FRAME_BYTES, pack_batch, read_body
from tests.factories import log_record

pytestmark = [pytest.mark.unit, pytest.mark.wire]

INGESTED_AT = datetime(2026, 3, 7, 23, 59, 58, 123456, tzinfo=UTC)
ORGANIZATIONS = [str(uuid.uuid4()) for _ in range(3)]
# An unknown field (number 999, a string) as a newer proxy might send: kept, as a message copy keeps it.
UNKNOWN_FIELD = b"\xba\x3e\x05hello"


def _item(rng: random.Random, index: int) -> pb.IngestRecord:
    organization_id = rng.choice(ORGANIZATIONS)
    record = log_record(
        request_id=str(uuid.UUID(int=rng.getrandbits(128))),
        organization_id=organization_id.upper() if index % 7 == 0 else organization_id,
        api_key_id=rng.choice(["", str(uuid.uuid4()), str(uuid.uuid4()).upper()]),
        provider="openai",
        model="gpt-4o-mini",
        status_code=200,
        latency_ms=rng.randrange(10**7),
        cost_usd="0.000123",
    )
    if index % 5 == 0:
        record.request_id = record.request_id.upper()
    if index % 3 == 0:
        record.properties["team"] = "search"
        record.usage.prompt_tokens = rng.randrange(10**6)
    if index % 11 == 0:
        record.MergeFromString(UNKNOWN_FIELD)
    record.created_at.FromDatetime(datetime(2026, 3, 6, 1, 2, 3, tzinfo=UTC))
    # Empty bodies, small ones, ones past 16 KiB (offsets and lengths of several varint bytes) and past a
    # frame; incompressible and compressible ones (frames of very different sizes).
    sizes = [0, 1, 127, 128, 1024, 16_383, 16_384, 70_000]
    return pb.IngestRecord(
        record=record,
        request_body=_body(rng, rng.choice(sizes)),
        response_body=_body(rng, rng.choice(sizes)),
    )


_FOUR_LETTERS = bytes(b"ab{}"[value % 4] for value in range(256))


def _body(rng: random.Random, size: int) -> bytes:
    """Random bytes (incompressible) or random text of four letters (compressible ~4x)."""
    data = rng.randbytes(size)
    return data if rng.random() < 0.5 else data.translate(_FOUR_LETTERS)


def _reference_messages(
    records: Sequence[pb.IngestRecord], keys: dict[str, str]
) -> tuple[list[log_record_pb2.LogMessage], dict[str, bytes]]:
    """The LogMessages built with the protobuf library (the straightforward way), and the objects' bytes.

    Each organization's bodies go into frames in order; a frame is closed before a body that would take it
    past MAX_FRAME_BYTES, and its refs get their frame's place once it is compressed."""
    messages = []
    objects: dict[str, bytearray] = {}
    open_frames: dict[str, tuple[bytearray, list[log_record_pb2.BodyRef]]] = {}

    def close(key: str) -> None:
        content, refs = open_frames.pop(key)
        frame = zstandard.ZstdCompressor(level=1, write_checksum=True).compress(bytes(content))
        data = objects.setdefault(key, bytearray())
        for ref in refs:
            ref.frame_offset = len(data)
            ref.frame_length = len(frame)
        data += frame

    for item in records:
        message = log_record_pb2.LogMessage()
        message.ingested_at.FromDatetime(INGESTED_AT)
        message.record.CopyFrom(item.record)
        message.record.request_id = item.record.request_id.lower()
        message.record.organization_id = item.record.organization_id.lower()
        message.record.api_key_id = item.record.api_key_id.lower()
        for body, ref in ((item.request_body, message.request_body), (item.response_body, message.response_body)):
            if not body:
                continue
            key = keys[message.record.organization_id]
            if key in open_frames and len(open_frames[key][0]) + len(body) > MAX_FRAME_BYTES:
                close(key)
            content, refs = open_frames.setdefault(key, (bytearray(), []))
            ref.object_key = key
            ref.offset = len(content)
            ref.length = len(body)
            refs.append(ref)
            content += body
        messages.append(message)
    for key in list(open_frames):
        close(key)
    return messages, {key: bytes(data) for key, data in objects.items()}


def test_messages_are_the_bytes_protobuf_writes() -> None:
    rng = random.Random(4)
    records = [_item(rng, index) for index in range(400)]
    counter = itertools.count(1)
    packed = pack_batch(records, INGESTED_AT, new_object_id=lambda: uuid.UUID(int=next(counter)))

    keys = {o.organization_id: o.key for o in packed.objects}
    expected, expected_objects = _reference_messages(records, keys)
    assert list(packed.values) == [message.SerializeToString() for message in expected]
    assert list(packed.keys) == [message.record.request_id.encode() for message in expected]
    assert {o.key: o.data for o in packed.objects} == expected_objects
    assert packed.organization_ids == {organization_id.lower() for organization_id in ORGANIZATIONS}
    assert packed.messages == tuple(expected)
    assert packed.messages[0].record.request_id == records[0].record.request_id.lower()


def test_every_body_reads_back_from_its_ref() -> None:
    rng = random.Random(9)
    records = [_item(rng, index) for index in range(60)]
    packed = pack_batch(records, INGESTED_AT)
    data = {o.key: o.data for o in packed.objects}
    for item, message in zip(records, packed.messages, strict=True):
        assert message.record.organization_id == item.record.organization_id.lower()
        bodies: tuple[tuple[bytes, Literal["request_body", "response_body"]], ...] = (
            (item.request_body, "request_body"),
            (item.response_body, "response_body"),
        )
        for body, name in bodies:
            assert message.HasField(name) == bool(body)
            if body:
                ref: log_record_pb2.BodyRef = getattr(message, name)
                assert read_body(data[ref.object_key], ref) == body


def test_an_identifier_without_letters_is_kept_as_it_is() -> None:
    record = log_record(
        request_id="12345678-1234-1234-1234-123456789012", organization_id="00000000-0000-0000-0000-000000000001"
    )
    packed = pack_batch([pb.IngestRecord(record=record, request_body=b"x")], INGESTED_AT)
    assert packed.keys == (b"12345678-1234-1234-1234-123456789012",)
    assert packed.messages[0].record == record
    assert packed.objects[0].key.startswith(f"bodies/{record.organization_id}/2026/03/07/")


def test_an_empty_batch_packs_to_nothing() -> None:
    packed = pack_batch([], INGESTED_AT)
    assert (packed.objects, packed.keys, packed.values, packed.organization_ids) == ((), (), (), frozenset())
