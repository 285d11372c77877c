"""The shared gRPC bootstrap: status mapping with details, health driven by readiness, graceful stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from candela.auth.v1 import auth_service_pb2 as pb
from candela.auth.v1 import auth_service_pb2_grpc
from candela.query.v1 import query_service_pb2 as query_pb
from candela_runtime.decoding import MAX_DEPTH, explain, undecodable
from candela_runtime.errors import FieldViolation, InvalidArgument, NotFound, bad_request_violations, rpc_error_status
from candela_runtime.grpc_server import GrpcServer, create_grpc_server

pytestmark = pytest.mark.unit

SERVICE = "candela.auth.v1.AuthService"


class _ScriptedServicer(auth_service_pb2_grpc.AuthServiceServicer):
    """Answers CreateOrganization according to the requested name (sets ``slow_started`` when the slow
    call has begun)."""

    def __init__(self, slow_started: asyncio.Event) -> None:
        self.slow_started = slow_started

    async def CreateOrganization(
        self, request: pb.CreateOrganizationRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.CreateOrganizationResponse:
        if request.name == "invalid":
            raise InvalidArgument("the request is invalid", [FieldViolation("name", "is reserved")])
        if request.name == "missing":
            raise NotFound("organization 'missing' does not exist")
        if request.name == "crash":
            raise RuntimeError("secret internal detail")
        if request.name == "slow":
            self.slow_started.set()
            await asyncio.sleep(0.5)
        return pb.CreateOrganizationResponse(organization=pb.Organization(name=request.name))


@pytest.fixture
def slow_started() -> asyncio.Event:
    return asyncio.Event()


@pytest.fixture
async def server(slow_started: asyncio.Event) -> AsyncIterator[GrpcServer]:
    # Only CreateOrganization is scripted; the generated base answers UNIMPLEMENTED for the rest.
    servicer = _ScriptedServicer(slow_started)  # type: ignore[abstract]
    started = await create_grpc_server(
        host="127.0.0.1",
        port=0,
        service_names=[SERVICE],
        registrars=[lambda s: auth_service_pb2_grpc.add_AuthServiceServicer_to_server(servicer, s)],
    )
    yield started
    await started.server.stop(None)


@pytest.fixture
async def channel(server: GrpcServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as opened:
        yield opened


async def _create(channel: grpc.aio.Channel, name: str) -> pb.CreateOrganizationResponse:
    stub = auth_service_pb2_grpc.AuthServiceStub(channel)
    return await stub.CreateOrganization(pb.CreateOrganizationRequest(name=name), timeout=5)


async def test_invalid_argument_carries_field_violations(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _create(channel, "invalid")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_error_status(caught.value)
    assert status is not None
    assert bad_request_violations(status) == [FieldViolation("name", "is reserved")]


async def test_not_found_keeps_its_message(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _create(channel, "missing")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "organization 'missing' does not exist"


async def test_unexpected_errors_are_internal_without_their_text(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _create(channel, "crash")
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "secret internal detail" not in (caught.value.details() or "")
    assert "trace id" in (caught.value.details() or "")


def _handled(method: str, code: str) -> float:
    value = REGISTRY.get_sample_value("candela_grpc_server_handled_total", {"grpc_method": method, "grpc_code": code})
    return value or 0.0


async def test_every_call_is_counted_by_method_and_code(channel: grpc.aio.Channel) -> None:
    method = f"/{SERVICE}/CreateOrganization"
    before = {code: _handled(method, code) for code in ("OK", "INVALID_ARGUMENT", "INTERNAL")}
    await _create(channel, "fine")
    await _create(channel, "fine too")
    for name in ("invalid", "crash"):
        with pytest.raises(grpc.aio.AioRpcError):
            await _create(channel, name)

    def counted() -> dict[str, float]:
        return {code: _handled(method, code) - before[code] for code in before}

    # An abort sends the status before the server's interceptors finish: the client can see the error a
    # loop step before the call is counted.
    for _ in range(100):
        if sum(counted().values()) >= 4:
            break
        await asyncio.sleep(0.01)
    assert counted() == {"OK": 2, "INVALID_ARGUMENT": 1, "INTERNAL": 1}
    latency_count = REGISTRY.get_sample_value("candela_grpc_server_handling_seconds_count", {"grpc_method": method})
    assert latency_count is not None
    assert latency_count >= 4


async def test_health_follows_readiness_and_shutdown(
    server: GrpcServer, channel: grpc.aio.Channel, slow_started: asyncio.Event
) -> None:
    health = health_pb2_grpc.HealthStub(channel)

    async def status(service: str) -> int:
        response = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(response.status)

    assert await status("") == health_pb2.HealthCheckResponse.NOT_SERVING
    await server.set_serving()
    assert await status("") == health_pb2.HealthCheckResponse.SERVING
    assert await status(SERVICE) == health_pb2.HealthCheckResponse.SERVING

    in_flight = asyncio.create_task(_create(channel, "slow"))
    await asyncio.wait_for(slow_started.wait(), 5)
    stopping = asyncio.create_task(server.stop(grace_s=5))
    await asyncio.sleep(0.05)
    assert await _answer_or_unavailable(health) in {health_pb2.HealthCheckResponse.NOT_SERVING, "unavailable"}
    # The call that was in flight when shutdown began still completes.
    assert (await in_flight).organization.name == "slow"
    await stopping


async def _answer_or_unavailable(health: health_pb2_grpc.HealthStub) -> int | str:
    try:
        response = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
    except grpc.aio.AioRpcError as err:
        return "unavailable" if err.code() == grpc.StatusCode.UNAVAILABLE else err.code().name
    return int(response.status)


async def _raw_violations(channel: grpc.aio.Channel, method: str, payload: bytes) -> list[FieldViolation]:
    call = channel.unary_unary(f"/{SERVICE}/{method}", request_serializer=bytes, response_deserializer=bytes)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(payload, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    status = rpc_error_status(caught.value)
    assert status is not None
    assert f"the request is not a valid {method}Request" in status.message
    return bad_request_violations(status)


async def test_bytes_that_do_not_parse_are_invalid_argument_naming_the_field(channel: grpc.aio.Channel) -> None:
    """grpcio answers UNKNOWN when a request does not parse; it is the caller's mistake."""
    corrupt = FieldViolation("", "truncated or corrupt bytes (not a valid protobuf encoding)")
    assert await _raw_violations(channel, "CreateOrganization", b"\x00") == [corrupt]
    # name (field 1) says 5 bytes follow, 2 do.
    assert await _raw_violations(channel, "CreateOrganization", b"\x0a\x05ab") == [
        FieldViolation("name", "truncated or corrupt bytes (not a valid protobuf encoding)")
    ]
    assert await _raw_violations(channel, "CreateOrganization", b"\x0a\x02\xff\xfe") == [
        FieldViolation("name", "is not valid UTF-8 (a string field holds UTF-8 text)")
    ]
    # UpdateOrganizationRequest.organization (2) .name (2): the path names the nested field.
    assert await _raw_violations(channel, "UpdateOrganization", b"\x12\x03\x12\x01\xc3") == [
        FieldViolation("organization.name", "is not valid UTF-8 (a string field holds UTF-8 text)")
    ]
    # The servicer was never called with something it cannot read: the next call is served as usual.
    assert (await _create(channel, "fine")).organization.name == "fine"


def _nest(levels: int) -> bytes:
    """A QueryRequestsRequest with ``levels`` filters nested in ``filter.all``, as bytes."""
    inner = b""
    for _ in range(levels):
        inner = b"\x4a" + _varint(len(inner)) + inner
    return b"\x0a" + _varint(len(inner)) + inner


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _parses(message_type: type[Message], data: bytes) -> bool:
    try:
        message_type.FromString(data)
    except DecodeError:
        return False
    return True


def test_the_explanation_agrees_with_the_protobuf_runtime_on_nesting() -> None:
    request = query_pb.QueryRequestsRequest
    assert _parses(request, _nest(99))
    assert explain(request.DESCRIPTOR, _nest(99)) is None
    assert not _parses(request, _nest(100))
    assert explain(request.DESCRIPTOR, _nest(100)) == FieldViolation(
        "filter", f"nests messages more than {MAX_DEPTH} levels deep (protobuf's limit)"
    )


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.binary(max_size=200), st.integers(0, 199), st.binary(max_size=3))
def test_the_explanation_never_faults_a_request_that_parses(garbage: bytes, cut: int, junk: bytes) -> None:
    """Whatever the bytes, explaining never raises; bytes protobuf parses are never blamed."""
    valid = query_pb.QueryRequestsRequest(
        filter=query_pb.RequestFilter(model="gpt", all=[query_pb.RequestFilter(user_id="é")]), limit=3
    ).SerializeToString()
    for data in (garbage, valid[:cut] + junk + valid[cut:], valid + garbage):
        violation = explain(query_pb.QueryRequestsRequest.DESCRIPTOR, data)
        if _parses(query_pb.QueryRequestsRequest, data):
            assert violation is None, (data, violation)
        else:
            assert undecodable(query_pb.QueryRequestsRequest.DESCRIPTOR, data).violations
