"""The GenAI semantic-convention span attributes and client metrics of one proxied call."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from candela.logs.v1 import log_record_pb2
from candela_proxy.exchange import Exchange
from candela_proxy.genai_telemetry import GenAIMetrics, annotate_span, common_attributes, provider_name
from candela_proxy.headers import CandelaHeaders
from candela_proxy.providers import Provider, resolve_route
from candela_proxy.response_usage import facts_from_json

pytestmark = pytest.mark.unit

ANSWER = {
    "id": "chatcmpl-abc",
    "object": "chat.completion",
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "length"}],
    "usage": {"prompt_tokens": 11, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 3}},
}
BODY = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "hi"}],
    "temperature": 0.2,
    "top_p": 1,
    "max_completion_tokens": 4,
    "seed": 7,
    "stop": "END",
    "n": True,  # not an integer: left out
}


def _exchange(
    target_url: str = "", options: CandelaHeaders | None = None, **record_fields: Any
) -> tuple[Exchange, Any]:
    route = resolve_route("/v1/chat/completions", "", "https://api.openai.com/v1", "https://api.anthropic.com")
    assert route is not None
    exchange = Exchange(
        request_id="r-1",
        started_at_us=0,
        started=time.perf_counter() - 0.25,
        route=route,
        options=options or CandelaHeaders(),
        organization_id="org",
        api_key_id="key",
        model="gpt-4o-mini",
        document=BODY,
        target_url=target_url,
    )
    exchange.facts = facts_from_json(Provider.OPENAI, orjson.dumps(ANSWER))
    record = log_record_pb2.LogRecord(
        request_id="r-1",
        provider="openai",
        path="/v1/chat/completions",
        status_code=200,
        latency_ms=250,
        target_url=target_url,
        session_id="conversation-1",
        attempts=[log_record_pb2.UpstreamAttempt(status_code=200)],
        **record_fields,
    )
    return exchange, record


def test_the_span_carries_the_current_genai_attributes_and_no_deprecated_ones() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    exchange, record = _exchange()
    with provider.get_tracer("test").start_as_current_span("chat gpt-4o-mini") as span:
        annotate_span(span, exchange, record, common_attributes(exchange, record))
    attributes = dict(exporter.get_finished_spans()[0].attributes or {})
    assert "gen_ai.system" not in attributes
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert attributes["gen_ai.response.model"] == "gpt-4o-mini-2024-07-18"
    assert attributes["gen_ai.response.id"] == "chatcmpl-abc"
    assert attributes["gen_ai.response.finish_reasons"] == ("length",)
    assert attributes["gen_ai.request.temperature"] == 0.2
    assert attributes["gen_ai.request.top_p"] == 1.0
    assert attributes["gen_ai.request.max_tokens"] == 4
    assert attributes["gen_ai.request.seed"] == 7
    assert attributes["gen_ai.request.stop_sequences"] == ("END",)
    assert attributes["gen_ai.request.stream"] is False
    assert "gen_ai.request.choice.count" not in attributes
    assert (attributes["gen_ai.usage.input_tokens"], attributes["gen_ai.usage.output_tokens"]) == (11, 4)
    assert attributes["gen_ai.usage.cache_read.input_tokens"] == 3
    assert attributes["gen_ai.conversation.id"] == "conversation-1"
    assert (attributes["server.address"], attributes["server.port"]) == ("api.openai.com", 443)
    assert "error.type" not in attributes


@pytest.mark.parametrize(
    ("target_url", "named", "expected"),
    [
        ("", "", "openai"),
        ("https://api.groq.com/openai", "", "groq"),
        ("https://my-resource.openai.azure.com/openai", "", "azure.ai.openai"),
        ("https://generativelanguage.googleapis.com/v1beta/openai", "", "gcp.gemini"),
        ("https://bedrock-runtime.us-east-1.amazonaws.com", "", "aws.bedrock"),
        ("https://api.x.ai", "", "x_ai"),
        ("https://api.mistral.ai", "", "mistral_ai"),
        ("https://llm.internal.example:8000", "", "llm.internal.example:8000"),
        ("https://llm.internal.example:8000", "Mistral", "mistral_ai"),
    ],
)
def test_provider_names_follow_the_spec_values(target_url: str, named: str, expected: str) -> None:
    exchange, record = _exchange(target_url, CandelaHeaders(target_url=target_url, target_provider=named))
    record.provider = "llm.internal.example:8000" if target_url else "openai"
    assert provider_name(exchange, record) == expected


def _points(reader: InMemoryMetricReader) -> dict[str, list[HistogramDataPoint]]:
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, list[HistogramDataPoint]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found[metric.name] = [p for p in metric.data.data_points if isinstance(p, HistogramDataPoint)]
    return found


def test_client_metrics_count_tokens_by_type_and_the_duration() -> None:
    reader = InMemoryMetricReader()
    metrics = GenAIMetrics(MeterProvider(metric_readers=[reader]).get_meter("test"))
    exchange, record = _exchange()
    metrics.record(exchange, record, common_attributes(exchange, record))
    hit, hit_record = _exchange(cache_hit=True)
    metrics.record(hit, hit_record, common_attributes(hit, hit_record))  # a cache hit called no provider: not counted

    points = _points(reader)
    tokens = {p.attributes["gen_ai.token.type"]: p for p in points["gen_ai.client.token.usage"] if p.attributes}
    assert (tokens["input"].sum, tokens["input"].count) == (11, 1)
    assert (tokens["output"].sum, tokens["output"].count) == (4, 1)
    assert tokens["input"].explicit_bounds[:3] == (1.0, 4.0, 16.0)
    (duration,) = points["gen_ai.client.operation.duration"]
    assert (duration.sum, duration.count) == (0.25, 1)
    assert duration.attributes is not None
    assert duration.attributes["gen_ai.provider.name"] == "openai"
    assert duration.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert (
        "gen_ai.client.operation.time_to_first_chunk" not in points
        or not points["gen_ai.client.operation.time_to_first_chunk"]
    ), "only streams report a first chunk"


def test_a_failed_call_carries_its_error_type() -> None:
    reader = InMemoryMetricReader()
    metrics = GenAIMetrics(MeterProvider(metric_readers=[reader]).get_meter("test"))
    exchange, record = _exchange()
    record.status_code = 429
    exchange.streamed, exchange.first_byte = True, exchange.started + 0.05
    metrics.record(exchange, record, common_attributes(exchange, record))
    points = _points(reader)
    (duration,) = points["gen_ai.client.operation.duration"]
    assert duration.attributes is not None
    assert duration.attributes["error.type"] == "429"
    (first_chunk,) = points["gen_ai.client.operation.time_to_first_chunk"]
    assert first_chunk.count == 1
    assert 0.04 < first_chunk.sum < 0.06
