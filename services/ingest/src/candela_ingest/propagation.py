"""OpenTelemetry context in Kafka headers: ingest injects it into each message, the writers link to it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from opentelemetry import propagate, trace
from opentelemetry.context import Context

KafkaHeaders = list[tuple[str, bytes]]
# Headers that carry the W3C trace context (the default propagator's fields).
_TRACE_FIELDS = frozenset({"traceparent", "tracestate", "baggage"})
MAX_LINKS = 128


def inject_headers(context: Context | None = None) -> KafkaHeaders:
    """Kafka headers carrying ``context`` (the current one by default); empty when nothing is traced."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return [(key, value.encode()) for key, value in carrier.items()]


def extract_context(headers: Sequence[tuple[str, bytes]] | None) -> Context:
    """The context a message's headers carry (an empty one when they carry none)."""
    carrier = {
        key: value.decode("utf-8", errors="replace") for key, value in headers or () if key.lower() in _TRACE_FIELDS
    }
    return propagate.extract(carrier)


def links_from(headers_of_messages: Iterable[Sequence[tuple[str, bytes]] | None]) -> list[trace.Link]:
    """One span link per distinct upstream span among the messages (at most :data:`MAX_LINKS`)."""
    seen: set[tuple[int, int]] = set()
    links: list[trace.Link] = []
    for headers in headers_of_messages:
        span_context = trace.get_current_span(extract_context(headers)).get_span_context()
        if not span_context.is_valid:
            continue
        identity = (span_context.trace_id, span_context.span_id)
        if identity in seen:
            continue
        seen.add(identity)
        links.append(trace.Link(span_context))
        if len(links) >= MAX_LINKS:
            break
    return links
