"""Packing a batch's bodies into one object per organization: keys, refs, and reading bodies back."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime
from typing import Literal

import pytest

from candela.ingest.v1 import ingest_service_pb2 as pb
from candela.logs.v1 import log_record_pb2
from candela_ingest.packing import object_key, pack_batch, read_body

pytestmark = pytest.mark.unit

INGESTED_AT = datetime(2026, 3, 7, 23, 59, 58, 123456, tzinfo=UTC)
ORG_A = str(uuid.uuid4())
ORG_B = str(uuid.uuid4())


def _item(organization_id: str, request_body: bytes, response_body: bytes) -> pb.IngestRecord:
    record = log_record_pb2.LogRecord(request_id=str(uuid.uuid4()), organization_id=organization_id)
    record.created_at.FromDatetime(datetime(2026, 3, 6, tzinfo=UTC))
    return pb.IngestRecord(record=record, request_body=request_body, response_body=response_body)


def _ids() -> itertools.count[int]:
    return itertools.count(1)


def test_object_key_layout() -> None:
    object_id = uuid.UUID(int=7)
    assert object_key(ORG_A, INGESTED_AT, object_id) == f"bodies/{ORG_A}/2026/03/07/{object_id}.bin"


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
        f"bodies/{ORG_A}/2026/03/07/{uuid.UUID(int=1)}.bin",
        f"bodies/{ORG_B}/2026/03/07/{uuid.UUID(int=2)}.bin",
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
            assert read_body(data[ref.object_key], ref) == body
    # Objects hold exactly their organization's bodies, back to back.
    bodies_of_a = [i.request_body + i.response_body for i in items if i.record.organization_id == ORG_A]
    assert data[packed.objects[0].key] == b"".join(bodies_of_a)


def test_a_batch_without_bodies_uploads_nothing() -> None:
    packed = pack_batch([_item(ORG_A, b"", b""), _item(ORG_B, b"", b"")], INGESTED_AT)
    assert packed.objects == ()
    assert all(not m.HasField("request_body") and not m.HasField("response_body") for m in packed.messages)


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
