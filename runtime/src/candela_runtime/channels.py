"""Client channels between services, traced with OpenTelemetry."""

from __future__ import annotations

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors


def internal_channel(address: str) -> grpc.aio.Channel:
    """An insecure (loopback or service-mesh) channel to another Candela service at ``host:port``."""
    return grpc.aio.insecure_channel(
        address,
        interceptors=aio_client_interceptors(),  # type: ignore[no-untyped-call]
        options=[("grpc.keepalive_time_ms", 30_000), ("grpc.max_receive_message_length", 64 * 1024 * 1024)],
    )
