"""Reading bodies out of packed objects: which reads share one ranged GET, and how a frame is decoded."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime

import pytest
import zstandard

from candela.logs.v1 import log_record_pb2
from candela_ingest.packing import pack_batch
from candela_query.body_reader import (
    MAX_GAP_BYTES,
    MAX_SHARED_FRAME_BYTES,
    CorruptBodyObject,
    body_from,
    covering_range,
    frame_content,
    pair_from,
)
from candela_query.row_reads import BodyLocation
from tests.factories import ingest_record

pytestmark = pytest.mark.unit

ORG = str(uuid.uuid4())


def _location(ref: log_record_pb2.BodyRef) -> BodyLocation:
    """A BodyRef as the query service reads it back from its row."""
    return BodyLocation(ref.object_key, ref.offset, ref.length, ref.frame_offset, ref.frame_length)


def _packed(pairs: list[tuple[bytes, bytes]]) -> tuple[bytes, list[tuple[BodyLocation, BodyLocation]]]:
    """The object ingest packs for one organization's ``pairs`` of bodies, and each pair's locations."""
    records = []
    for request_body, response_body in pairs:
        created_at = datetime(2026, 3, 6, tzinfo=UTC)
        records.append(
            ingest_record(
                organization_id=ORG, created_at=created_at, request_body=request_body, response_body=response_body
            )
        )
    packed = pack_batch(records, datetime(2026, 3, 7, tzinfo=UTC))
    [packed_object] = packed.objects
    return packed_object.data, [
        (_location(message.request_body), _location(message.response_body)) for message in packed.messages
    ]


def _read(data: bytes, location: BodyLocation) -> bytes:
    """What one ranged GET of the location's stored bytes gives, then the body."""
    return body_from(location, data[location.stored_start :][: location.stored_length], location.stored_start)


_WORDS = ("the", "model", "answer", "user", "system", "content", "prompt", "cost", "token", "reason", "result")


def _chat_pairs(count: int, seed: int = 1) -> list[tuple[bytes, bytes]]:
    """``count`` (request, response) pairs of JSON chat bodies of 0.3-1.5 KiB, whose texts differ."""
    rng = random.Random(seed)

    def body(key: str) -> bytes:
        return json.dumps({key: [{"content": " ".join(rng.choices(_WORDS, k=rng.randint(50, 250)))}]}).encode()

    return [(body("messages"), body("choices")) for _ in range(count)]


# --- uncompressed objects (written before frames) ----------------------------------------------------------


def test_adjacent_bodies_of_one_object_are_read_in_one_range() -> None:
    request, response = BodyLocation("org/a.bin", 100, 40), BodyLocation("org/a.bin", 140, 60)
    assert covering_range(request, response) == BodyLocation("org/a.bin", 100, 100)
    assert covering_range(response, request) == BodyLocation("org/a.bin", 100, 100)


def test_a_small_gap_is_read_and_dropped_a_large_one_is_not() -> None:
    request = BodyLocation("org/a.bin", 0, 10)
    assert covering_range(request, BodyLocation("org/a.bin", 10 + MAX_GAP_BYTES, 5)) == BodyLocation(
        "org/a.bin", 0, 15 + MAX_GAP_BYTES
    )
    assert covering_range(request, BodyLocation("org/a.bin", 11 + MAX_GAP_BYTES, 5)) is None


def test_bodies_in_different_objects_or_empty_ones_are_read_apart() -> None:
    assert covering_range(BodyLocation("org/a.bin", 0, 10), BodyLocation("org/b.bin", 10, 10)) is None
    assert covering_range(BodyLocation("org/a.bin", 0, 0), BodyLocation("org/a.bin", 0, 10)) is None


def test_an_uncompressed_body_is_its_byte_range() -> None:
    data = b"0123456789abcdef"
    request, response = BodyLocation("org/a.bin", 2, 3), BodyLocation("org/a.bin", 5, 4)
    assert _read(data, request) == b"234"
    covering = covering_range(request, response)
    assert covering is not None
    assert pair_from(request, response, data[covering.offset :][: covering.length], covering.offset) == (
        b"234",
        b"5678",
    )


# --- compressed objects --------------------------------------------------------------------------------------


def test_every_body_reads_back_from_its_frame_alone_and_in_pairs() -> None:
    pairs = _chat_pairs(200)
    data, locations = _packed(pairs)
    shared = adjacent = 0
    for (request_body, response_body), (request, response) in zip(pairs, locations, strict=True):
        assert _read(data, request) == request_body
        assert _read(data, response) == response_body
        covering = covering_range(request, response)
        assert covering is not None, "a request's two bodies are always read with one GET"
        if request.frame_offset == response.frame_offset:
            shared += 1
            assert covering == BodyLocation(request.object_key, request.frame_offset, request.frame_length)
        else:
            adjacent += 1
            assert request.frame_offset + request.frame_length == response.frame_offset
            assert covering.length == request.frame_length + response.frame_length
        stored = data[covering.offset :][: covering.length]
        assert pair_from(request, response, stored, covering.offset) == (request_body, response_body)
    assert shared > 0, "some pairs share a frame"
    assert adjacent > 0, "some pairs straddle two frames"


def test_bodies_of_frames_far_apart_are_read_apart() -> None:
    rng = random.Random(2)
    big = rng.randbytes(MAX_GAP_BYTES + 1)
    data, locations = _packed([(b'{"first": 1}', big), (b'{"last": 2}', b"")])
    first = locations[0][0]
    last = locations[1][0]
    assert covering_range(first, last) is None
    assert (_read(data, first), _read(data, last)) == (b'{"first": 1}', b'{"last": 2}')


def _frame(content: bytes) -> bytes:
    """One frame as ingest writes it: level 1, content size and checksum declared."""
    return zstandard.ZstdCompressor(level=1, write_checksum=True).compress(content)


def _frame_location(frame: bytes, offset: int, length: int, frame_offset: int = 0) -> BodyLocation:
    return BodyLocation("org/a.zst", offset, length, frame_offset, len(frame))


def test_a_frame_without_its_content_size_is_refused() -> None:
    frame = zstandard.ZstdCompressor(level=1, write_checksum=True, write_content_size=False).compress(b"hello world")
    with pytest.raises(CorruptBodyObject, match="declares -1 bytes"):
        _read(frame, _frame_location(frame, 0, 5))


def test_a_body_past_its_frame_content_is_refused() -> None:
    frame = _frame(b"hello world")
    assert _read(frame, _frame_location(frame, 6, 5)) == b"world"
    with pytest.raises(CorruptBodyObject, match="declares 11 bytes of content; 12 are needed"):
        _read(frame, _frame_location(frame, 6, 6))


def test_a_frame_declaring_more_than_one_body_or_the_shared_bound_is_refused() -> None:
    one_big_body = _frame(b"x" * (MAX_SHARED_FRAME_BYTES + 10))
    assert len(_read(one_big_body, _frame_location(one_big_body, 0, MAX_SHARED_FRAME_BYTES + 10))) == (
        MAX_SHARED_FRAME_BYTES + 10
    )
    with pytest.raises(CorruptBodyObject, match="are needed"):
        _read(one_big_body, _frame_location(one_big_body, 0, 10))
    within_bound = _frame(b"y" * MAX_SHARED_FRAME_BYTES)
    assert _read(within_bound, _frame_location(within_bound, 5, 10)) == b"y" * 10


def test_bytes_that_are_no_whole_frame_are_refused() -> None:
    frame = _frame(random.Random(3).randbytes(5000))
    with pytest.raises(CorruptBodyObject, match="no zstd frame header"):
        frame_content(b"not a zstd frame at all", 5)
    with pytest.raises(CorruptBodyObject, match="does not decode"):
        frame_content(frame[:-10], 5)
    with pytest.raises(CorruptBodyObject, match="does not decode"):
        frame_content(frame + b"\x00", 5)
    # Random bytes are stored as they are (a raw block): only the frame's checksum tells a changed byte.
    corrupted = bytearray(frame)
    corrupted[len(frame) // 2] ^= 0xFF
    with pytest.raises(CorruptBodyObject, match="checksum"):
        frame_content(bytes(corrupted), 5)


def test_an_object_that_ends_inside_a_frame_is_refused() -> None:
    frame = _frame(b"hello world")
    location = _frame_location(frame, 0, 5, frame_offset=100)
    with pytest.raises(CorruptBodyObject, match="ends inside a frame"):
        body_from(location, frame[:-1], 100)
