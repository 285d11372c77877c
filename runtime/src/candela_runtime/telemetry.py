"""OpenTelemetry set-up: a tracer provider per service, exported over OTLP when configured.

The exporter follows the SDK's own ``OTEL_*`` variables: with ``OTEL_EXPORTER_OTLP_ENDPOINT`` set spans go
there in batches; without it spans are still created (so logs carry trace ids and context propagates
through every hop) but not exported.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Telemetry:
    """The service's tracer provider; ``shutdown()`` flushes pending spans (call it last)."""

    provider: TracerProvider

    def shutdown(self) -> None:
        """Flushes and stops span export."""
        self.provider.shutdown()


def setup_telemetry(service_name: str, extra_processor: SpanProcessor | None = None) -> Telemetry:
    """Installs the global tracer provider for ``service_name``."""
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        logger.info("exporting spans to %s", os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"])
    if extra_processor is not None:
        provider.add_span_processor(extra_processor)
    trace.set_tracer_provider(provider)
    return Telemetry(provider)
