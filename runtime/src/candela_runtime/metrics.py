"""Prometheus metrics shared by every service: per-RPC counts, errors and latency, and the scrape endpoint.

Metrics live in prometheus_client's process-wide registry, as that library intends; a service adds its
own counters next to these. The scrape endpoint is started by :func:`candela_runtime.lifecycle.run`
when ``CANDELA_METRICS_PORT`` is set.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Counter, Histogram

GRPC_HANDLED = Counter(
    "candela_grpc_server_handled",
    "gRPC calls completed, by method and status code.",
    ["grpc_method", "grpc_code"],
)
GRPC_LATENCY = Histogram(
    "candela_grpc_server_handling_seconds",
    "Time to handle a gRPC call, by method.",
    ["grpc_method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

STORE_MEMBER_FAILURES = Counter(
    "candela_store_member_failures",
    "Calls a member of a store could not take (refused, reset, timed out), by store and member "
    "(host:port): the service moved to another member (candela_runtime.failover).",
    ["store", "member"],
)

STORE_MEMBER_FAILBACKS = Counter(
    "candela_store_member_failbacks",
    "Times a service moved back to a member of a store configured before the one it used, once that member "
    "answered again after its rest, by store and member (host:port) (candela_runtime.failover).",
    ["store", "member"],
)


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts every unary call by method and final status code, and times it."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        method = handler_call_details.method

        async def measured(request: Any, context: Any) -> Any:
            started = time.perf_counter()
            code = "OK"
            try:
                return await inner(request, context)
            except grpc.aio.AbortError:
                code = context.code().name if context.code() is not None else "UNKNOWN"
                raise
            except BaseException:
                code = "UNKNOWN"
                raise
            finally:
                GRPC_LATENCY.labels(method).observe(time.perf_counter() - started)
                GRPC_HANDLED.labels(method, code).inc()

        return grpc.unary_unary_rpc_method_handler(
            measured,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
