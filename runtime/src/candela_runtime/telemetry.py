"""OpenTelemetry set-up: a tracer provider and a meter provider per service, exported over OTLP when configured.

The exporters follow the SDK's own ``OTEL_*`` variables: with ``OTEL_EXPORTER_OTLP_ENDPOINT`` set spans go
there in batches and metrics every ``OTEL_METRIC_EXPORT_INTERVAL`` ms; without it spans are still created
(so logs carry trace ids and context propagates through every hop) but not exported, and the meter provider
is the API's no-op one.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Telemetry:
    """The service's tracer and meter providers; ``shutdown()`` flushes pending spans and metrics (call it
    last)."""

    provider: TracerProvider
    meter_provider: MeterProvider | None = None

    def shutdown(self) -> None:
        """Flushes and stops span and metric export."""
        self.provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()


def setup_telemetry(service_name: str, extra_processor: SpanProcessor | None = None) -> Telemetry:
    """Installs the global tracer provider for ``service_name``, and its meter provider when exporting."""
    resource = Resource.create({"service.name": service_name})
    provider = TracerProvider(resource=resource)
    meter_provider: MeterProvider | None = None
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        meter_provider = MeterProvider(
            resource=resource, metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())]
        )
        metrics.set_meter_provider(meter_provider)
        logger.info("exporting spans and metrics to %s", os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"])
    if extra_processor is not None:
        provider.add_span_processor(extra_processor)
    trace.set_tracer_provider(provider)
    return Telemetry(provider, meter_provider)
