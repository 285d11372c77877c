"""IngestService in-process (port 0) with in-memory stores: credential, validation, ordering, failures."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from prometheus_client import REGISTRY

from candela.ingest.v1 import ingest_service_pb2 as pb
from candela.ingest.v1 import ingest_service_pb2_grpc
from candela.logs.v1 import log_record_pb2
from candela_ingest.kafka import KafkaUnavailable, OutgoingMessage
from candela_ingest.packing import PackedObject, read_body
from candela_ingest.service import SERVICE_NAME, IngestServicer, add_to_server
from candela_ingest.wire.validation import BatchLimits
from candela_runtime.errors import Unavailable, bad_request_violations, rpc_error_status
from candela_runtime.grpc_server import GrpcServer, create_grpc_server
from candela_runtime.security import service_metadata
from tests.factories import ingest_record

pytestmark = pytest.mark.unit

TOKEN = "unit-test-token"
TOPIC = "candela.logs.v1"


@dataclass
class FakeStores:
    """Records what the servicer stored, in order; can fail or stall on demand."""

    events: list[str] = field(default_factory=list)
    objects: dict[str, bytes] = field(default_factory=dict)
    sent: list[OutgoingMessage] = field(default_factory=list)
    s3_fails: bool = False
    kafka_fails: bool = False
    stall_s: float = 0.0

    async def put_objects(self, objects: Sequence[PackedObject]) -> None:
        await asyncio.sleep(self.stall_s)
        if self.s3_fails:
            raise Unavailable("S3 PUT failed: connection refused")
        self.events.append("s3")
        self.objects.update({o.key: o.data for o in objects})

    async def send_all(self, topic: str, messages: Sequence[OutgoingMessage]) -> None:
        assert topic == TOPIC
        if self.kafka_fails:
            raise KafkaUnavailable("no broker")
        self.events.append("kafka")
        self.sent.extend(messages)


@dataclass(frozen=True)
class Running:
    stores: FakeStores
    server: GrpcServer
    stub: ingest_service_pb2_grpc.IngestServiceAsyncStub


@pytest.fixture
async def ingest() -> AsyncIterator[Running]:
    stores = FakeStores()
    servicer = IngestServicer(
        bodies=stores,
        messages=stores,
        topic=TOPIC,
        service_token=TOKEN,
        limits=BatchLimits(
            max_batch_records=100,
            max_record_bytes=64 * 1024,
            max_metadata_bytes=8192,
            max_clock_skew=timedelta(hours=1),
        ),
        store_timeout_s=0.5,
    )
    server = await create_grpc_server(
        host="127.0.0.1",
        port=0,
        service_names=[SERVICE_NAME],
        registrars=[lambda s: add_to_server(servicer, s)],
    )
    await server.set_serving()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield Running(stores, server, ingest_service_pb2_grpc.IngestServiceStub(channel))
    await server.stop(0)


def _item(organization_id: str, body: bytes = b"request", answer: bytes = b"response") -> pb.IngestRecord:
    return ingest_record(
        organization_id=organization_id, created_at=datetime.now(UTC), request_body=body, response_body=answer
    )


def _batches_read(reader: str) -> float:
    return REGISTRY.get_sample_value("candela_ingest_batches_read_total", {"reader": reader}) or 0.0


async def test_a_batch_is_stored_in_s3_then_kafka(ingest: Running) -> None:
    org = str(uuid.uuid4())
    items = [_item(org, f"q{i}".encode(), f"a{i}".encode()) for i in range(5)]
    read_in_c = _batches_read("c")
    response = await ingest.stub.Ingest(pb.IngestRequest(records=items), metadata=service_metadata(TOKEN))

    assert response.accepted_count == 5
    assert _batches_read("c") == read_in_c + 1
    assert ingest.stores.events == ["s3", "kafka"], "bodies are durable before the metadata is published"
    assert len(ingest.stores.objects) == 1
    for item, sent in zip(items, ingest.stores.sent, strict=True):
        assert sent.key == item.record.request_id.encode()
        message = log_record_pb2.LogMessage.FromString(sent.value)
        data = ingest.stores.objects[message.request_body.object_key]
        assert read_body(data, message.request_body) == item.request_body
        assert read_body(data, message.response_body) == item.response_body


async def test_the_service_credential_is_required(ingest: Running) -> None:
    request = pb.IngestRequest(records=[_item(str(uuid.uuid4()))])
    for metadata in ((), service_metadata("wrong-token")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await ingest.stub.Ingest(request, metadata=metadata)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert ingest.stores.events == []


async def test_a_bad_batch_is_refused_whole_with_field_violations(ingest: Running) -> None:
    org = str(uuid.uuid4())
    bad = _item(org)
    bad.record.request_id = "42"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ingest.stub.Ingest(
            pb.IngestRequest(records=[_item(org), _item(org), bad]), metadata=service_metadata(TOKEN)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_error_status(caught.value)
    assert status is not None
    assert [v.field for v in bad_request_violations(status)] == ["records[2].record.request_id"]
    assert ingest.stores.events == []


@pytest.mark.parametrize("failing", ["s3", "kafka", "slow"])
async def test_store_failures_are_unavailable(ingest: Running, failing: str) -> None:
    ingest.stores.s3_fails = failing == "s3"
    ingest.stores.kafka_fails = failing == "kafka"
    ingest.stores.stall_s = 2.0 if failing == "slow" else 0.0
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ingest.stub.Ingest(pb.IngestRequest(records=[_item(str(uuid.uuid4()))]), metadata=service_metadata(TOKEN))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "kafka" not in ingest.stores.events


async def test_bytes_that_are_no_ingest_request_are_refused_as_invalid(ingest: Running) -> None:
    # Ingest takes its request as bytes; what the protobuf runtime cannot parse is the caller's error.
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{ingest.server.port}")
    call = channel.unary_unary(
        f"/{SERVICE_NAME}/Ingest", request_serializer=lambda data: data, response_deserializer=lambda data: data
    )
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(b"\x0a\x05\x0a\x03abc", metadata=service_metadata(TOKEN))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid IngestRequest" in (caught.value.details() or "")
    assert ingest.stores.events == []


async def test_ids_in_upper_case_are_stored_in_their_canonical_form(ingest: Running) -> None:
    org = str(uuid.uuid4())
    items = [_item(org), _item(org.upper())]
    items[1].record.request_id = items[1].record.request_id.upper()
    read_by_runtime = _batches_read("runtime")
    await ingest.stub.Ingest(pb.IngestRequest(records=items), metadata=service_metadata(TOKEN))
    assert _batches_read("runtime") == read_by_runtime + 1, "ids not in canonical form: the exact path"
    records = [log_record_pb2.LogMessage.FromString(sent.value).record for sent in ingest.stores.sent]
    assert [record.organization_id for record in records] == [org, org]
    assert [sent.key for sent in ingest.stores.sent] == [item.record.request_id.lower().encode() for item in items]
    assert len(ingest.stores.objects) == 1, "one organization, one object"
