"""Packing a batch's bodies into one object per organization: keys, zstd frames, refs, reading bodies back."""

from __future__ import annotations

import itertools
import json
import random
import uuid
from datetime import UTC, datetime
from typing import Literal

import pytest
import zstandard

from candela.ingest.v1 import ingest_service_pb2 as pb
from candela.logs.v1 import log_record_pb2
from candela_ingest.packing import MAX_FRAME_BYTES, object_key, pack_batch, read_body
from tests.factories import ingest_record

pytestmark = [pytest.mark.unit, pytest.mark.wire]

INGESTED_AT = datetime(2026, 3, 7, 23, 59, 58, 123456, tzinfo=UTC)
ORG_A = str(uuid.uuid4())
ORG_B = str(uuid.uuid4())
KiB = 1024


def _item(organization_id: str, request_body: bytes, response_body: bytes) -> pb.IngestRecord:
    created_at = datetime(2026, 3, 6, tzinfo=UTC)
    return ingest_record(
        organization_id=organization_id, created_at=created_at, request_body=request_body, response_body=response_body
    )


def _ids() -> itertools.count[int]:
    return itertools.count(1)


def _chat_bodies(rng: random.Random, count: int) -> list[tuple[bytes, bytes]]:
    """``count`` (request, response) pairs of ~1 KiB JSON each, whose texts differ."""
    words = ("the", "model", "answer", "user", "system", "content", "prompt", "cost", "token", "reason", "result")
    pairs = []
    for index in range(count):
        question = " ".join(rng.choices(words, k=rng.randint(100, 180)))
        answer = " ".join(rng.choices(words, k=rng.randint(100, 180)))
        request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question}]}
        response = {"id": f"chatcmpl-{index}", "choices": [{"message": {"role": "assistant", "content": answer}}]}
        pairs.append((json.dumps(request).encode(), json.dumps(response).encode()))
    return pairs


def _frames(data: bytes) -> list[tuple[int, int, bytes]]:
    """An object's zstd frames as (offset, length, content), found by decoding it one frame at a time."""
    frames = []
    offset = 0
    while offset < len(data):
        decoder = zstandard.ZstdDecompressor().decompressobj()
        content = decoder.decompress(data[offset:])
        assert decoder.eof, "the object ends inside a frame"
        assert zstandard.get_frame_parameters(data[offset:]).has_checksum
        length = len(data) - offset - len(decoder.unused_data)
        frames.append((offset, length, content))
        offset += length
    return frames


def _whole(data: bytes) -> bytes:
    """The object decompressed as one zstd stream, as any zstd tool reads a .zst file."""
    return zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True).read()


def _refs(message: log_record_pb2.LogMessage) -> list[log_record_pb2.BodyRef]:
    """The message's BodyRefs, the request's first."""
    return [getattr(message, name) for name in ("request_body", "response_body") if message.HasField(name)]


def test_object_key_layout() -> None:
    object_id = uuid.UUID(int=7)
    assert object_key(ORG_A, INGESTED_AT, object_id) == f"bodies/{ORG_A}/2026/03/07/{object_id}.zst"


def test_round_trip_one_object_per_organization() -> None:
    items = [
        _item(ORG_A, b'{"messages": [1]}', b'{"choices": ["a"]}'),
        _item(ORG_B, b"b-request", b"b-response \xf0\x9f\x94\xa5"),
        _item(ORG_A, b"second request of A", b""),
        _item(ORG_A, b"", b"only a response"),
        _item(ORG_B, b"", b""),
    ]
    counter = _ids()
    packed = pack_batch(items, INGESTED_AT, new_object_id=lambda: uuid.UUID(int=next(counter)))

    assert [o.organization_id for o in packed.objects] == [ORG_A, ORG_B]
    assert [o.key for o in packed.objects] == [
        f"bodies/{ORG_A}/2026/03/07/{uuid.UUID(int=1)}.zst",
        f"bodies/{ORG_B}/2026/03/07/{uuid.UUID(int=2)}.zst",
    ]
    data = {o.key: o.data for o in packed.objects}
    assert len(packed.messages) == len(items)
    for item, message in zip(items, packed.messages, strict=True):
        assert message.record.request_id == item.record.request_id
        assert message.ingested_at.ToDatetime(tzinfo=UTC) == INGESTED_AT
        bodies: tuple[tuple[bytes, Literal["request_body", "response_body"]], ...] = (
            (item.request_body, "request_body"),
            (item.response_body, "response_body"),
        )
        for body, field in bodies:
            if not body:
                assert not message.HasField(field), "an empty body has no ref"
                continue
            ref: log_record_pb2.BodyRef = getattr(message, field)
            assert ref.object_key.startswith(f"bodies/{item.record.organization_id}/")
            assert ref.frame_length > 0, "every new body is in a frame"
            assert read_body(data[ref.object_key], ref) == body
    # Each object is a zstd stream of exactly its organization's bodies, back to back.
    for organization_id, packed_object in zip((ORG_A, ORG_B), packed.objects, strict=True):
        bodies_of_organization = [
            i.request_body + i.response_body for i in items if i.record.organization_id == organization_id
        ]
        assert _whole(packed_object.data) == b"".join(bodies_of_organization)


def test_frames_hold_consecutive_bodies_up_to_the_limit() -> None:
    pairs = _chat_bodies(random.Random(3), 300)
    packed = pack_batch([_item(ORG_A, request, response) for request, response in pairs], INGESTED_AT)
    [packed_object] = packed.objects
    bodies = [body for pair in pairs for body in pair]
    frames = _frames(packed_object.data)

    assert len(frames) > 1
    # The frames hold the bodies in order, each frame whole ones; a frame is closed only before a body that
    # would take it past the limit.
    remaining = iter(bodies)
    groups: list[list[bytes]] = []
    for _, _, content in frames:
        group: list[bytes] = []
        while sum(map(len, group)) < len(content):
            group.append(next(remaining))
        assert b"".join(group) == content
        groups.append(group)
    assert next(remaining, None) is None
    for group, following in itertools.pairwise(groups):
        assert sum(map(len, group)) <= MAX_FRAME_BYTES
        assert sum(map(len, group)) + len(following[0]) > MAX_FRAME_BYTES
    # Every ref names its frame exactly and the body's place inside it.
    frame_at = {offset: (length, content) for offset, length, content in frames}
    refs = [ref for message in packed.messages for ref in _refs(message)]
    assert len(refs) == len(bodies)
    for ref, body in zip(refs, bodies, strict=True):
        length, content = frame_at[ref.frame_offset]
        assert ref.frame_length == length
        assert content[ref.offset : ref.offset + ref.length] == body
    # JSON text of ~1 KiB bodies compresses well in frames of several bodies.
    assert len(packed_object.data) * 2.5 < sum(map(len, bodies))


def test_a_body_bigger_than_a_frame_gets_a_frame_of_its_own() -> None:
    rng = random.Random(5)
    small, big, last = rng.randbytes(KiB), rng.randbytes(MAX_FRAME_BYTES + 1), rng.randbytes(KiB)
    packed = pack_batch([_item(ORG_A, small, big), _item(ORG_A, last, b"")], INGESTED_AT)
    [packed_object] = packed.objects
    frames = _frames(packed_object.data)

    assert [content for _, _, content in frames] == [small, big, last]
    refs = [ref for message in packed.messages for ref in _refs(message)]
    assert [(ref.frame_offset, ref.frame_length, ref.offset, ref.length) for ref in refs] == [
        (offset, length, 0, len(content)) for offset, length, content in frames
    ]
    assert [read_body(packed_object.data, ref) for ref in refs] == [small, big, last]


def test_a_frame_filled_exactly_to_the_limit_takes_no_further_body() -> None:
    half = MAX_FRAME_BYTES // 2
    items = [_item(ORG_A, b"a" * half, b"b" * half), _item(ORG_A, b"c", b"")]
    [packed_object] = pack_batch(items, INGESTED_AT).objects
    assert [content for _, _, content in _frames(packed_object.data)] == [b"a" * half + b"b" * half, b"c"]


def test_each_organization_gets_its_own_frames() -> None:
    pairs = _chat_bodies(random.Random(8), 120)
    items = [_item((ORG_A, ORG_B)[index % 2], *pair) for index, pair in enumerate(pairs)]
    counter = _ids()
    packed = pack_batch(items, INGESTED_AT, new_object_id=lambda: uuid.UUID(int=next(counter)))

    for organization_id, packed_object in zip((ORG_A, ORG_B), packed.objects, strict=True):
        assert packed_object.organization_id == organization_id
        expected = b"".join(
            i.request_body + i.response_body for i in items if i.record.organization_id == organization_id
        )
        assert b"".join(content for _, _, content in _frames(packed_object.data)) == expected
    data = {o.key: o.data for o in packed.objects}
    for item, message in zip(items, packed.messages, strict=True):
        [request, response] = _refs(message)
        assert request.object_key == response.object_key
        assert request.object_key.startswith(f"bodies/{item.record.organization_id}/")
        assert read_body(data[request.object_key], request) == item.request_body
        assert read_body(data[response.object_key], response) == item.response_body


def test_a_batch_without_bodies_uploads_nothing() -> None:
    packed = pack_batch([_item(ORG_A, b"", b""), _item(ORG_B, b"", b"")], INGESTED_AT)
    assert packed.objects == ()
    assert all(not m.HasField("request_body") and not m.HasField("response_body") for m in packed.messages)


def test_an_uncompressed_object_of_before_frames_still_reads_back() -> None:
    ref = log_record_pb2.BodyRef(object_key=f"bodies/{ORG_A}/2026/03/07/old.bin", offset=3, length=4)
    assert read_body(b"abcdefgh", ref) == b"defg"


def test_identifiers_are_canonicalised_and_input_untouched() -> None:
    item = _item(ORG_A.upper(), b"x", b"")
    item.record.request_id = item.record.request_id.upper()
    packed = pack_batch([item], INGESTED_AT)
    message = packed.messages[0]
    assert message.record.request_id == item.record.request_id.lower()
    assert message.record.organization_id == ORG_A
    assert packed.objects[0].key.startswith(f"bodies/{ORG_A}/")
    assert item.record.organization_id == ORG_A.upper(), "the request is not modified"


def test_each_batch_gets_fresh_object_names() -> None:
    first = pack_batch([_item(ORG_A, b"x", b"")], INGESTED_AT)
    second = pack_batch([_item(ORG_A, b"x", b"")], INGESTED_AT)
    assert first.objects[0].key != second.objects[0].key
