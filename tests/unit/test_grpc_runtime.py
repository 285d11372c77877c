"""The shared gRPC bootstrap: status mapping with details, health driven by readiness, graceful stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from candela.auth.v1 import auth_service_pb2 as pb
from candela.auth.v1 import auth_service_pb2_grpc
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
