"""An OTLP/gRPC trace and metrics receiver run by a test: the real processes export their spans and metrics
to it, the test reads the span tree and the metric points back (the collector a user would run, reduced to
what a test needs to look at)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

SpanKind = trace_pb2.Span.SpanKind


@dataclass(frozen=True)
class ReceivedSpan:
    """One exported span, with ids as lowercase hex (as in a `traceparent`)."""

    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    status_code: int = 0
    """`Status.StatusCode` (0 unset, 1 ok, 2 error)."""
    events: tuple[dict[str, Any], ...] = field(default=())
    """The attributes of each event (e.g. a recorded exception's message)."""
    links: tuple[tuple[str, str], ...] = field(default=())
    """(trace id, span id) of each linked span."""


def _value(value: common_pb2.AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(item) for item in value.array_value.values]
    if which == "kvlist_value":
        return {item.key: _value(item.value) for item in value.kvlist_value.values}
    return getattr(value, which) if which else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


class SpanReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every span exported to it, whatever the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[ReceivedSpan] = []
        self.endpoint = ""
        self.metrics = MetricReceiver()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received = []
        for resource_spans in request.resource_spans:
            service = str(_attributes(resource_spans.resource.attributes).get("service.name", ""))
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            service=service,
                            name=span.name,
                            kind=span.kind,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes=_attributes(span.attributes),
                            status_code=span.status.code,
                            events=tuple(_attributes(event.attributes) for event in span.events),
                            links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links),
                        )
                    )
        with self._lock:
            self._spans.extend(received)
        return trace_service_pb2.ExportTraceServiceResponse()

    @property
    def spans(self) -> list[ReceivedSpan]:
        """Every span received so far."""
        with self._lock:
            return list(self._spans)

    def wait_for(
        self, description: str, predicate: Callable[[list[ReceivedSpan]], bool], timeout_s: float = 30.0
    ) -> list[ReceivedSpan]:
        """Polls until ``predicate`` holds for the spans received; fails the test saying what was missing."""
        deadline = time.monotonic() + timeout_s
        while True:
            spans = self.spans
            if predicate(spans):
                return spans
            if time.monotonic() > deadline:
                seen = sorted({(span.service, span.name) for span in spans})
                raise AssertionError(f"no {description} within {timeout_s}s; spans seen: {seen}")
            time.sleep(0.1)


@dataclass(frozen=True)
class ReceivedHistogramPoint:
    """One exported histogram data point (cumulative: each export repeats the totals so far)."""

    service: str
    metric: str
    unit: str
    attributes: dict[str, Any]
    count: int
    sum: float
    explicit_bounds: tuple[float, ...]


class MetricReceiver(metrics_service_pb2_grpc.MetricsServiceServicer):
    """Keeps every histogram point exported to it, whatever the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._points: list[ReceivedHistogramPoint] = []

    def Export(
        self, request: metrics_service_pb2.ExportMetricsServiceRequest, context: grpc.ServicerContext
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        received = []
        for resource_metrics in request.resource_metrics:
            service = str(_attributes(resource_metrics.resource.attributes).get("service.name", ""))
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.WhichOneof("data") != "histogram":
                        continue
                    for point in metric.histogram.data_points:
                        received.append(
                            ReceivedHistogramPoint(
                                service=service,
                                metric=metric.name,
                                unit=metric.unit,
                                attributes=_attributes(point.attributes),
                                count=point.count,
                                sum=point.sum,
                                explicit_bounds=tuple(point.explicit_bounds),
                            )
                        )
        with self._lock:
            self._points.extend(received)
        return metrics_service_pb2.ExportMetricsServiceResponse()

    @property
    def points(self) -> list[ReceivedHistogramPoint]:
        """Every point received so far."""
        with self._lock:
            return list(self._points)

    def wait_for(
        self, description: str, predicate: Callable[[ReceivedHistogramPoint], bool], timeout_s: float = 30.0
    ) -> ReceivedHistogramPoint:
        """The latest point for which ``predicate`` holds, polling until one arrives."""
        deadline = time.monotonic() + timeout_s
        while True:
            matching = [point for point in self.points if predicate(point)]
            if matching:
                return matching[-1]
            if time.monotonic() > deadline:
                seen = sorted({(point.service, point.metric) for point in self.points})
                raise AssertionError(f"no {description} within {timeout_s}s; metrics seen: {seen}")
            time.sleep(0.1)


@contextmanager
def otlp_receiver() -> Iterator[SpanReceiver]:
    """A receiver listening on 127.0.0.1 (a free port); its ``endpoint`` is the OTLP endpoint URL, and its
    ``metrics`` the metrics sent there."""
    receiver = SpanReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)  # type: ignore[no-untyped-call]
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(receiver.metrics, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    receiver.endpoint = f"http://127.0.0.1:{port}"
    try:
        yield receiver
    finally:
        server.stop(grace=None)
