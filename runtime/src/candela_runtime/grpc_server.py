"""gRPC server bootstrap shared by every service: health, reflection, interceptors, ordered shutdown.

A service builds its servicers, then :func:`create_grpc_server` binds them with the standard health
service (NOT_SERVING until the service calls :meth:`GrpcServer.set_serving` after its own readiness
checks), server reflection, OpenTelemetry tracing and the error mapping of :mod:`candela_runtime.errors`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

from candela_runtime.decoding import UndecodableRequest, tolerant_deserializer
from candela_runtime.errors import CandelaError
from candela_runtime.metrics import MetricsInterceptor
from candela_runtime.workers import is_grpc_worker

logger = logging.getLogger(__name__)

Registrar = Callable[[grpc.aio.Server], None]


@functools.lru_cache(maxsize=1024)
def _request_type(method: str) -> Descriptor | None:
    """The request message of ``/package.Service/Method``, from the default descriptor pool."""
    service_name, _, method_name = method.lstrip("/").partition("/")
    try:
        found: Descriptor = (
            descriptor_pool.Default().FindServiceByName(service_name).FindMethodByName(method_name).input_type
        )
    except (KeyError, AttributeError):
        return None
    return found


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Turns :class:`CandelaError` into its status with details; anything else into a logged INTERNAL.

    Request bytes that do not parse are the caller's mistake too: INVALID_ARGUMENT naming the field (see
    :mod:`candela_runtime.decoding`), before the servicer runs (for a request stream, when the servicer
    reaches the bad message). Every kind of RPC is covered: unary, and a stream of requests, of responses
    or both, whether the servicer yields its responses or writes them to its context.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        deserializer = handler.request_deserializer
        if deserializer is not None:
            deserializer = tolerant_deserializer(deserializer, _request_type(method))
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def guarded(request: Any, context: Any) -> Any:
                async with _mapped_errors(context, method):
                    return await inner(_decoded(request), context)

            return grpc.unary_unary_rpc_method_handler(
                guarded, request_deserializer=deserializer, response_serializer=handler.response_serializer
            )
        if handler.stream_unary is not None:
            inner_stream_unary = handler.stream_unary

            async def guarded_stream_unary(requests: AsyncIterator[Any], context: Any) -> Any:
                async with _mapped_errors(context, method):
                    return await inner_stream_unary(_decoded_stream(requests), context)

            return grpc.stream_unary_rpc_method_handler(
                guarded_stream_unary,
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _guarded_responses(handler.unary_stream, method, _decoded),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _guarded_responses(handler.stream_stream, method, _decoded_stream),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


@contextlib.asynccontextmanager
async def _mapped_errors(context: Any, method: str) -> AsyncIterator[None]:
    """Ends the call with the status of what its body raised (an abort passes through as it is)."""
    try:
        yield
    except grpc.aio.AbortError:
        raise
    except CandelaError as err:
        await context.abort_with_status(rpc_status.to_status(err.to_status()))
    except Exception:
        # Our own fault: keep the traceback in our logs, give the caller a trace id to quote.
        logger.exception("unhandled error in %s", method)
        trace_id = format(trace.get_current_span().get_span_context().trace_id, "032x")
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error (trace id {trace_id})")


def _decoded(request: Any) -> Any:
    """The request, or its INVALID_ARGUMENT raised when its bytes did not parse."""
    if isinstance(request, UndecodableRequest):
        raise request.error
    return request


async def _decoded_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """The requests of a stream, raising the INVALID_ARGUMENT of the first whose bytes did not parse."""
    async for request in requests:
        yield _decoded(request)


def _guarded_responses(
    inner: Callable[[Any, Any], Any], method: str, decode: Callable[[Any], Any]
) -> Callable[[Any, Any], Any]:
    """A response-streaming handler of the same kind as ``inner`` (grpc accepts a coroutine that writes to
    its context, like the health service's Watch, or a generator of responses), its errors mapped."""
    if inspect.iscoroutinefunction(inner):

        async def writing(request: Any, context: Any) -> None:
            async with _mapped_errors(context, method):
                await inner(decode(request), context)

        return writing

    async def yielding(request: Any, context: Any) -> AsyncIterator[Any]:
        async with _mapped_errors(context, method):
            responses = inner(decode(request), context)
            if isinstance(responses, AsyncIterable):
                async for response in responses:
                    yield response
            else:
                for response in responses:
                    yield response

    return yielding


@dataclass(frozen=True)
class GrpcServer:
    """A started gRPC server, its bound port and the health service that gates its traffic."""

    server: grpc.aio.Server
    port: int
    health: health_aio.HealthServicer
    service_names: tuple[str, ...]

    async def set_serving(self) -> None:
        """Reports SERVING for the whole server and each service: call once dependencies are ready."""
        for name in ("", *self.service_names):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace_s: float) -> None:
        """Reports NOT_SERVING, refuses new calls and lets in-flight ones finish within ``grace_s``."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)


async def create_grpc_server(
    *,
    host: str,
    port: int,
    service_names: Sequence[str],
    registrars: Sequence[Registrar],
    interceptors: Sequence[Any] = (),
    options: Sequence[tuple[str, Any]] = (),
) -> GrpcServer:
    """Binds and starts a server on ``host:port`` (port 0 picks a free one); health starts NOT_SERVING.

    ``options`` are grpc channel arguments, e.g. ``("grpc.max_receive_message_length", n)``.
    """
    # Health checks are not traced: they are noise, and the tracing interceptor cannot wrap the health
    # service's Watch (a coroutine that writes to its context rather than an async generator).
    tracing = aio_server_interceptor(filter_=filters.negate(filters.health_check()))  # type: ignore[no-untyped-call]
    server = grpc.aio.server(
        interceptors=[tracing, MetricsInterceptor(), ErrorMappingInterceptor(), *interceptors],
        # One process per port, unless it is one of several workers of a service (candela_runtime.workers).
        options=[("grpc.so_reuseport", 1 if is_grpc_worker() else 0), *options],
    )
    for register in registrars:
        register(server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    for name in ("", *service_names):
        await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    logger.info("gRPC server listening on %s:%d", host, bound)
    return GrpcServer(server=server, port=bound, health=health, service_names=tuple(service_names))
