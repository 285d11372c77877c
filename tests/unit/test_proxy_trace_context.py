"""A log carries its request's trace context: captured by the proxy, kept through the on-disk spool, made
the parent (first request) and links (the others) of the span that ships a batch; ingest puts it on the
Kafka message, and the writer's batch span continues it the same way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from candela.ingest.v1 import ingest_service_pb2, ingest_service_pb2_grpc
from candela_ingest.propagation import batch_context, inject_headers, record_headers
from candela_proxy import record, shipping
from candela_proxy.shipping import MAX_LINKS, LogShipper, batch_trace
from tests.factories import ingest_record

pytestmark = pytest.mark.unit


def _span_context(trace_id: int, span_id: int) -> SpanContext:
    return SpanContext(trace_id=trace_id, span_id=span_id, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))


def _traceparent(trace_id: int, span_id: int) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-01"


def _record(request_id: str, trace_context: dict[str, str] | None = None) -> ingest_service_pb2.IngestRecord:
    return ingest_record(request_id=request_id, trace_context=trace_context)


def propagate_all() -> dict[str, str]:
    """What the global propagator (trace context and baggage) would send from the current context."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def _ids(span_context: SpanContext) -> tuple[int, int]:
    return span_context.trace_id, span_context.span_id


def test_the_proxy_captures_the_llm_span_context_and_never_baggage() -> None:
    context = baggage.set_baggage(
        "user-secret", "do-not-ship", trace.set_span_in_context(NonRecordingSpan(_span_context(7, 9)))
    )
    token = otel_context.attach(context)
    try:
        assert propagate_all() != {"traceparent": _traceparent(7, 9)}, "the context does carry baggage"
        captured = record._request_trace_context()
    finally:
        otel_context.detach(token)
    assert captured == {"traceparent": _traceparent(7, 9)}
    assert record._request_trace_context() == {}, "outside a span there is nothing to carry"


def test_a_batch_ships_under_its_first_traced_request_and_links_the_others() -> None:
    batch = [
        _record("untraced"),
        _record("first", {"traceparent": _traceparent(1, 11)}),
        _record("garbage", {"traceparent": "00-not-a-context"}),
        _record("second", {"traceparent": _traceparent(2, 22), "tracestate": "vendor=x"}),
        _record("first-again", {"traceparent": _traceparent(1, 11)}),
    ]
    traced = batch_trace(batch)
    assert traced is not None
    parent, links = traced
    assert _ids(trace.get_current_span(parent).get_span_context()) == (1, 11)
    assert [_ids(link.context) for link in links] == [(2, 22)]
    assert links[0].context.trace_state.get("vendor") == "x"


def test_a_batch_of_untraced_records_makes_no_span() -> None:
    assert batch_trace([_record("a"), _record("b", {"traceparent": "garbage"})]) is None


def test_links_are_bounded() -> None:
    batch = [_record(str(index), {"traceparent": _traceparent(index + 1, index + 1)}) for index in range(500)]
    traced = batch_trace(batch)
    assert traced is not None
    assert len(traced[1]) == MAX_LINKS


def test_ingest_puts_the_record_context_on_its_message_and_falls_back_to_the_call() -> None:
    call = inject_headers(trace.set_span_in_context(NonRecordingSpan(_span_context(5, 55))))
    own = record_headers({"traceparent": _traceparent(3, 33), "baggage": "k=v"}, call)
    assert own == [("traceparent", _traceparent(3, 33).encode())], "only W3C trace context, never baggage"
    assert record_headers({}, call) == call
    assert record_headers({"traceparent": "00-broken"}, call) == call


def test_the_writer_batch_continues_the_first_traced_message() -> None:
    first = [("traceparent", _traceparent(1, 11).encode())]
    second = [("traceparent", _traceparent(2, 22).encode())]
    parent, links = batch_context([(), first, second, first])
    assert _ids(trace.get_current_span(parent).get_span_context()) == (1, 11)
    assert [_ids(link.context) for link in links] == [(2, 22)]
    empty_parent, no_links = batch_context([(), None])
    assert not trace.get_current_span(empty_parent).get_span_context().is_valid
    assert no_links == []


# --- The real LogShipper through its spool, against an in-process IngestService. ---


class Ingest(ingest_service_pb2_grpc.IngestServiceServicer):
    """Refuses (UNAVAILABLE) until ``available``; then keeps every record it is sent."""

    def __init__(self) -> None:
        self.available = False
        self.received: list[ingest_service_pb2.IngestRecord] = []

    async def Ingest(
        self, request: ingest_service_pb2.IngestRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingest_service_pb2.IngestResponse:
        if not self.available:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "down for the test")
        self.received.extend(request.records)
        return ingest_service_pb2.IngestResponse(accepted_count=len(request.records))


@pytest.fixture
async def ingest() -> AsyncIterator[tuple[Ingest, int]]:
    # The generated base answers UNIMPLEMENTED for UpdateLogs, which the shipper never calls.
    servicer = Ingest()  # type: ignore[abstract]
    server = grpc.aio.server()
    ingest_service_pb2_grpc.add_IngestServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, port
    finally:
        await server.stop(None)


@pytest.fixture
def exported(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """The shipper's spans, captured by a provider of the test's own (the global one is left alone)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(shipping, "tracer", provider.get_tracer("candela.proxy"))
    yield exporter
    provider.shutdown()


async def _until(condition: Any, what: str, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_contexts_survive_the_spool_and_the_replayed_batch_is_traced(
    ingest: tuple[Ingest, int], exported: InMemorySpanExporter, tmp_path: Path
) -> None:
    servicer, port = ingest
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    shipper = LogShipper(
        channel,
        "service-token",
        queue_size=100,
        batch_size=10,
        max_batch_bytes=1 << 20,
        flush_interval_s=0.05,
        spool_dir=tmp_path / "spool",
        send_timeout_s=1.0,
    )
    first = {"traceparent": _traceparent(0xA1, 0x1A), "tracestate": "candela=1"}
    second = {"traceparent": _traceparent(0xB2, 0x2B)}
    shipper.start()
    try:
        shipper.submit(_record("one", first))
        shipper.submit(_record("two", second))
        await _until(lambda: shipper.spool_bytes > 0, "the batch to reach the spool")
        servicer.available = True
        await _until(lambda: len(servicer.received) == 2, "the spool replay")
    finally:
        await shipper.stop(5.0)
        await channel.close(None)

    assert [dict(item.trace_context) for item in servicer.received] == [first, second]
    spans: tuple[ReadableSpan, ...] = exported.get_finished_spans()
    assert {span.name for span in spans} == {"send ingest"}
    assert spans[0].status.status_code == trace.StatusCode.ERROR, "the refused send is recorded as failed"
    delivered = spans[-1]
    assert delivered.status.status_code == trace.StatusCode.UNSET
    assert delivered.kind == trace.SpanKind.PRODUCER
    assert delivered.parent is not None
    assert _ids(delivered.parent) == (0xA1, 0x1A)
    assert delivered.context is not None
    assert delivered.context.trace_id == 0xA1
    assert [_ids(link.context) for link in delivered.links] == [(0xB2, 0x2B)]
    assert delivered.attributes is not None
    assert delivered.attributes["messaging.batch.message_count"] == 2
