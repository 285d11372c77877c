"""OpenTelemetry context in Kafka headers: ingest puts each log's own request context on its message, the
writers continue it.

One request is one trace although its log travels later and in batches: the proxy records the LLM
span's W3C context with the log (``IngestRecord.trace_context``), ingest copies it into the message's
headers, and a writer's batch span takes the first traced message's context as its parent and links to
the others (the OpenTelemetry messaging conventions for batch receiving). A log without a context (the
proxy does not trace) carries the ingest call's own context instead, as before.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

KafkaHeaders = list[tuple[str, bytes]]
# Headers that carry the W3C trace context (the default propagator's fields).
_TRACE_FIELDS = frozenset({"traceparent", "tracestate", "baggage"})
MAX_LINKS = 128
# A record's context is caller input: only W3C trace context is taken from it, and only when it parses.
_W3C = TraceContextTextMapPropagator()
_PLAIN_TRACEPARENT = re.compile("00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_INVALID_TRACE_ID = "0" * 32
_INVALID_SPAN_ID = "0" * 16


def inject_headers(context: Context | None = None) -> KafkaHeaders:
    """Kafka headers carrying ``context`` (the current one by default); empty when nothing is traced."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return [(key, value.encode()) for key, value in carrier.items()]


def record_headers(trace_context: Mapping[str, str] | None, fallback: KafkaHeaders) -> KafkaHeaders:
    """Kafka headers carrying a log's own request context; ``fallback`` when it carries none that is valid."""
    if not trace_context:
        return fallback
    if "tracestate" not in trace_context:
        traceparent = trace_context.get("traceparent")
        # The common case, checked without the propagator (this runs for every traced log): a version-00
        # traceparent exactly as the propagator writes it, so extracting and injecting it gives it back.
        if traceparent is not None and (match := _PLAIN_TRACEPARENT.fullmatch(traceparent)) is not None:
            if match[1] == _INVALID_TRACE_ID or match[2] == _INVALID_SPAN_ID:
                return fallback
            return [("traceparent", traceparent.encode())]
    span_context = trace.get_current_span(_W3C.extract(trace_context)).get_span_context()
    if not span_context.is_valid:
        return fallback
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=trace.set_span_in_context(trace.NonRecordingSpan(span_context)))
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
    # The messages of one Ingest call usually share their headers: each distinct set is parsed once.
    seen_headers: set[tuple[tuple[str, bytes], ...]] = set()
    links: list[trace.Link] = []
    for headers in headers_of_messages:
        distinct = tuple(headers or ())
        if distinct in seen_headers:
            continue
        seen_headers.add(distinct)
        span_context = trace.get_current_span(extract_context(distinct)).get_span_context()
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


def batch_context(
    headers_of_messages: Iterable[Sequence[tuple[str, bytes]] | None],
) -> tuple[Context, list[trace.Link]]:
    """The parent and links of a span over a batch: the first traced message's context is the parent (so a
    lone request's log stays in its trace), and every other distinct upstream span is a link.

    With no traced message at all, the parent is an empty context: the batch span starts its own trace
    rather than joining whatever context the consuming task happens to run in.
    """
    links = links_from(headers_of_messages)
    if not links:
        return otel_context.Context(), []
    parent = trace.set_span_in_context(trace.NonRecordingSpan(links[0].context), otel_context.Context())
    return parent, links[1:]
