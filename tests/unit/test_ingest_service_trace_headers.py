"""A log's Kafka trace headers are what the W3C propagator makes of its context, whichever path computed them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from candela.ingest.v1 import ingest_service_pb2 as pb
from candela_ingest.propagation import KafkaHeaders, record_headers

pytestmark = pytest.mark.unit

FALLBACK: KafkaHeaders = [("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"


def _through_the_propagator(trace_context: dict[str, str]) -> KafkaHeaders:
    """The headers as the propagator alone makes them: extract the context, inject it again."""
    w3c = TraceContextTextMapPropagator()
    span_context = trace.get_current_span(w3c.extract(trace_context)).get_span_context()
    if not span_context.is_valid:
        return FALLBACK
    carrier: dict[str, str] = {}
    w3c.inject(carrier, context=trace.set_span_in_context(trace.NonRecordingSpan(span_context)))
    return [(key, value.encode()) for key, value in carrier.items()]


CASES = [
    {},
    {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-01"},
    {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-00"},
    {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-ff"},
    {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-01", "baggage": "user=1"},
    {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-01", "tracestate": "vendor=value,other=x"},
    {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-01", "tracestate": ""},
    {"traceparent": f"00-{'0' * 32}-{SPAN_ID}-01"},
    {"traceparent": f"00-{TRACE_ID}-{'0' * 16}-01"},
    {"traceparent": f"00-{TRACE_ID.upper()}-{SPAN_ID}-01"},
    {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-01-extra"},
    {"traceparent": f"01-{TRACE_ID}-{SPAN_ID}-01-future"},
    {"traceparent": f"ff-{TRACE_ID}-{SPAN_ID}-01"},
    {"traceparent": f" \t00-{TRACE_ID}-{SPAN_ID}-01\t "},
    {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-01\n"},
    {"traceparent": f"00-{TRACE_ID[:-1]}-{SPAN_ID}-01"},
    {"traceparent": ""},
    {"tracestate": "vendor=value"},
    {"unrelated": "value"},
]


@pytest.mark.parametrize("trace_context", CASES)
def test_headers_are_the_propagators(trace_context: dict[str, str]) -> None:
    # Given as the request carries it: a protobuf map, not a dict.
    item = pb.IngestRecord(trace_context=trace_context)
    assert record_headers(item.trace_context, FALLBACK) == _through_the_propagator(trace_context)


HEX = "0123456789abcdefABCDEF"


@given(
    version=st.sampled_from(["00", "01", "ff", "0g"]),
    trace_id=st.text(HEX, min_size=31, max_size=33) | st.just("0" * 32),
    span_id=st.text(HEX, min_size=15, max_size=17) | st.just("0" * 16),
    flags=st.text(HEX, min_size=1, max_size=3),
    tail=st.sampled_from(["", "-x", " ", "\n"]),
)
def test_any_traceparent_gives_the_propagators_headers(
    version: str, trace_id: str, span_id: str, flags: str, tail: str
) -> None:
    trace_context = {"traceparent": f"{version}-{trace_id}-{span_id}-{flags}{tail}"}
    assert record_headers(trace_context, FALLBACK) == _through_the_propagator(trace_context)
