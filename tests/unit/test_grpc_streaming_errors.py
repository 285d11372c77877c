"""The error mapping on streaming RPCs: a domain error raised while streaming ends the call with its status
and details, whichever side streams and whether the servicer yields its responses or writes them."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from candela.auth.v1 import auth_service_pb2 as pb
from candela_runtime.errors import (
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    bad_request_violations,
    rpc_error_status,
)
from candela_runtime.grpc_server import ErrorMappingInterceptor, GrpcServer, create_grpc_server

pytestmark = pytest.mark.unit

SERVICE = "candela.test.Streams"
Request = pb.CreateOrganizationRequest
Response = pb.CreateOrganizationResponse


def _answer(name: str) -> Response:
    return Response(organization=pb.Organization(name=name))


def _fail_for(name: str) -> None:
    """Raises what a request named ``name`` asks for; any other name passes."""
    if name == "invalid":
        raise InvalidArgument("the request is invalid", [FieldViolation("name", "is reserved")])
    if name == "missing":
        raise NotFound("organization 'missing' does not exist")
    if name == "forbidden":
        raise PermissionDenied("this API key lacks the ADMIN scope")
    if name == "crash":
        raise RuntimeError("secret internal detail")


async def _yielding(request: Request, context: Any) -> AsyncIterator[Response]:
    """unary-stream, as a generator: two answers, then what the request asks for."""
    yield _answer("first")
    yield _answer("second")
    _fail_for(request.name)


async def _writing(request: Request, context: Any) -> None:
    """unary-stream, as a coroutine writing to its context (like the health service's Watch)."""
    await context.write(_answer("first"))
    _fail_for(request.name)
    await context.write(_answer("second"))


async def _gathering(requests: AsyncIterator[Request], context: Any) -> Response:
    """stream-unary: the names joined, failing at the first request that asks for it."""
    names = []
    async for request in requests:
        _fail_for(request.name)
        names.append(request.name)
    return _answer(",".join(names))


async def _echoing(requests: AsyncIterator[Request], context: Any) -> AsyncIterator[Response]:
    """stream-stream: each name echoed, failing at the first request that asks for it."""
    async for request in requests:
        _fail_for(request.name)
        yield _answer(request.name)


def _register(server: grpc.aio.Server) -> None:
    handlers = {
        "Yielding": grpc.unary_stream_rpc_method_handler(
            _yielding, request_deserializer=Request.FromString, response_serializer=Response.SerializeToString
        ),
        "Writing": grpc.unary_stream_rpc_method_handler(
            _writing, request_deserializer=Request.FromString, response_serializer=Response.SerializeToString
        ),
        "Gathering": grpc.stream_unary_rpc_method_handler(
            _gathering, request_deserializer=Request.FromString, response_serializer=Response.SerializeToString
        ),
        "Echoing": grpc.stream_stream_rpc_method_handler(
            _echoing, request_deserializer=Request.FromString, response_serializer=Response.SerializeToString
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


@pytest.fixture
async def server() -> AsyncIterator[GrpcServer]:
    started = await create_grpc_server(host="127.0.0.1", port=0, service_names=[SERVICE], registrars=[_register])
    yield started
    await started.server.stop(None)


@pytest.fixture
async def channel(server: GrpcServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as opened:
        yield opened


@pytest.fixture
async def bare_channel() -> AsyncIterator[grpc.aio.Channel]:
    """A channel to a server with the error mapping alone: the tracing interceptor of a full server expects
    a generator of responses, so only the health service (not traced) may write to its context."""
    server = grpc.aio.server(interceptors=[ErrorMappingInterceptor()])
    _register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as opened:
        yield opened
    await server.stop(None)


@pytest.fixture(params=["Yielding", "Writing"])
def response_stream(request: pytest.FixtureRequest) -> tuple[grpc.aio.Channel, str]:
    """A unary-stream method of each kind, and the channel to call it on."""
    method: str = request.param
    name = "channel" if method == "Yielding" else "bare_channel"
    return request.getfixturevalue(name), method


def _serializer(request: bytes | Request) -> bytes:
    """A request as bytes; bytes pass as they are (to send what does not parse)."""
    return request if isinstance(request, bytes) else request.SerializeToString()


async def _stream_out(channel: grpc.aio.Channel, method: str, request: bytes | Request) -> list[str]:
    """Calls a unary-stream method; the names received, or the error raised after them."""
    call = channel.unary_stream(
        f"/{SERVICE}/{method}", request_serializer=_serializer, response_deserializer=Response.FromString
    )
    return [response.organization.name async for response in call(request, timeout=5)]


async def _stream_in(channel: grpc.aio.Channel, names: list[bytes | Request]) -> Response:
    call = channel.stream_unary(
        f"/{SERVICE}/Gathering", request_serializer=_serializer, response_deserializer=Response.FromString
    )
    response: Response = await call(iter(names), timeout=5)
    return response


async def _receive(responses: AsyncIterable[Response], received: list[str]) -> None:
    """Appends each name received to ``received`` until the stream ends (or fails)."""
    async for response in responses:
        received.append(response.organization.name)


def _violations(error: grpc.aio.AioRpcError) -> list[FieldViolation]:
    status = rpc_error_status(error)
    assert status is not None, "the status carries its details"
    return bad_request_violations(status)


async def test_a_response_stream_ends_with_the_domain_errors_status_and_details(
    response_stream: tuple[grpc.aio.Channel, str],
) -> None:
    channel, method = response_stream
    assert await _stream_out(channel, method, Request(name="fine")) == ["first", "second"]
    received: list[str] = []
    call = channel.unary_stream(
        f"/{SERVICE}/{method}", request_serializer=_serializer, response_deserializer=Response.FromString
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _receive(call(Request(name="invalid"), timeout=5), received)
    assert received == (["first", "second"] if method == "Yielding" else ["first"]), "what was sent arrives"
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _violations(caught.value) == [FieldViolation("name", "is reserved")]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _stream_out(channel, method, Request(name="missing"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "organization 'missing' does not exist"


async def test_an_unexpected_error_in_a_response_stream_is_internal_without_its_text(
    response_stream: tuple[grpc.aio.Channel, str],
) -> None:
    channel, method = response_stream
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _stream_out(channel, method, Request(name="crash"))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "secret internal detail" not in (caught.value.details() or "")
    assert "trace id" in (caught.value.details() or "")


async def test_a_request_that_does_not_parse_never_reaches_the_response_stream(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _stream_out(channel, "Yielding", b"\x0a\x02\xff\xfe")  # name: not UTF-8
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _violations(caught.value) == [
        FieldViolation("", "truncated or corrupt bytes (not a valid protobuf encoding)")
    ], "a method outside the descriptor pool gets the generic violation"


async def test_a_request_stream_ends_with_the_domain_errors_status(channel: grpc.aio.Channel) -> None:
    assert (await _stream_in(channel, [Request(name="a"), Request(name="b")])).organization.name == "a,b"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _stream_in(channel, [Request(name="a"), Request(name="forbidden"), Request(name="b")])
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.details() == "this API key lacks the ADMIN scope"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _stream_in(channel, [Request(name="a"), b"\x00"])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, "a bad message mid-stream is the caller's"


async def test_a_bidirectional_stream_ends_with_the_domain_errors_status(channel: grpc.aio.Channel) -> None:
    call = channel.stream_stream(
        f"/{SERVICE}/Echoing", request_serializer=_serializer, response_deserializer=Response.FromString
    )
    names = [Request(name="a"), Request(name="b"), Request(name="invalid"), Request(name="c")]
    received: list[str] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _receive(call(iter(names), timeout=5), received)
    assert received == ["a", "b"]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _violations(caught.value) == [FieldViolation("name", "is reserved")]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _receive(call(iter([Request(name="crash")]), timeout=5), [])
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "secret internal detail" not in (caught.value.details() or "")


async def test_the_health_watch_a_writing_stream_still_streams(server: GrpcServer, channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
    await server.set_serving()
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()


async def test_reflection_a_bidirectional_stream_still_answers(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    answers = [answer async for answer in stub.ServerReflectionInfo(requests, timeout=5)]
    assert SERVICE in {service.name for service in answers[0].list_services_response.service}
