"""The OpenTelemetry GenAI semantic conventions for each LLM call: the span's attributes and the client metrics.

Follows the current GenAI conventions (``gen_ai.provider.name``, not the deprecated ``gen_ai.system``): the
span is named ``{gen_ai.operation.name} {gen_ai.request.model}`` and carries what the request asked for
(temperature, max tokens, ...) and what the provider answered (id, model, finish reasons, token usage).
The client metrics ``gen_ai.client.token.usage``, ``gen_ai.client.operation.duration`` and, for streams,
``gen_ai.client.operation.time_to_first_chunk`` describe the calls Candela makes to providers: a cache hit
makes none and is not counted (its span says ``candela.cache_hit``).

Nothing here reads a credential: the request attributes come from the JSON body's sampling fields only, and
the server address from the upstream URL's host and port (never its userinfo or query, which may hold a key).

To name a new provider, add its Candela provider value to :data:`PROVIDER_NAMES` and, for an
OpenAI-compatible host reached as a custom target, its host to :data:`HOST_PROVIDER_NAMES`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from opentelemetry import metrics, trace
from yarl import URL

from candela.logs.v1 import log_record_pb2
from candela_proxy.exchange import Exchange
from candela_proxy.providers import Route

# Candela's provider (``Provider`` value, or a Candela-Target-Provider name) -> gen_ai.provider.name, the
# spec's well-known values.
PROVIDER_NAMES: dict[str, str] = {
    "openai": "openai",
    "anthropic": "anthropic",
    "azure": "azure.ai.openai",
    "azure_openai": "azure.ai.openai",
    "azure.ai.openai": "azure.ai.openai",
    "azure_ai_inference": "azure.ai.inference",
    "gemini": "gcp.gemini",
    "google": "gcp.gemini",
    "gcp.gemini": "gcp.gemini",
    "vertex": "gcp.vertex_ai",
    "google-vertex": "gcp.vertex_ai",
    "vertex_ai": "gcp.vertex_ai",
    "gcp.vertex_ai": "gcp.vertex_ai",
    "bedrock": "aws.bedrock",
    "aws": "aws.bedrock",
    "aws.bedrock": "aws.bedrock",
    "groq": "groq",
    "mistral": "mistral_ai",
    "mistral_ai": "mistral_ai",
    "deepseek": "deepseek",
    "xai": "x_ai",
    "x_ai": "x_ai",
    "perplexity": "perplexity",
    "cohere": "cohere",
    "moonshot": "moonshot_ai",
    "moonshot_ai": "moonshot_ai",
    "watsonx": "ibm.watsonx.ai",
}

# A custom target's host -> gen_ai.provider.name; an unknown host is named by itself (a custom value).
HOST_PROVIDER_NAMES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), name)
    for pattern, name in (
        (r"(^|\.)api\.openai\.com$", "openai"),
        (r"(^|\.)api\.anthropic\.com$", "anthropic"),
        (r"\.openai\.azure\.com$", "azure.ai.openai"),
        (r"\.services\.ai\.azure\.com$", "azure.ai.inference"),
        (r"(^|\.)generativelanguage\.googleapis\.com$", "gcp.gemini"),
        (r"(^|\.)aiplatform\.googleapis\.com$", "gcp.vertex_ai"),
        (r"^bedrock-runtime(-fips)?\.[a-z0-9-]+\.amazonaws\.com$", "aws.bedrock"),
        (r"(^|\.)api\.groq\.com$", "groq"),
        (r"(^|\.)api\.mistral\.ai$", "mistral_ai"),
        (r"(^|\.)api\.deepseek\.com$", "deepseek"),
        (r"(^|\.)api\.x\.ai$", "x_ai"),
        (r"(^|\.)api\.perplexity\.ai$", "perplexity"),
        (r"(^|\.)api\.cohere\.(com|ai)$", "cohere"),
        (r"(^|\.)api\.moonshot\.(ai|cn)$", "moonshot_ai"),
        (r"\.ml\.cloud\.ibm\.com$", "ibm.watsonx.ai"),
    )
)

# The spec's advised bucket boundaries.
_TOKEN_BUCKETS = [float(4**power) for power in range(14)]  # 1, 4, 16, ... 67108864
_DURATION_BUCKETS = [0.01 * 2**power for power in range(14)]  # 0.01, 0.02, ... 81.92
_FIRST_CHUNK_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _strings(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return value
    return None


# gen_ai.request.* attribute -> the body keys that carry it (the first present wins) and how to read it.
# OpenAI chat and completions, the Responses API and Anthropic Messages name them at the top level.
REQUEST_ATTRIBUTES: tuple[tuple[str, tuple[str, ...], Callable[[Any], Any]], ...] = (
    ("gen_ai.request.temperature", ("temperature",), _number),
    ("gen_ai.request.top_p", ("top_p",), _number),
    ("gen_ai.request.top_k", ("top_k",), _number),
    ("gen_ai.request.max_tokens", ("max_tokens", "max_completion_tokens", "max_output_tokens"), _integer),
    ("gen_ai.request.frequency_penalty", ("frequency_penalty",), _number),
    ("gen_ai.request.presence_penalty", ("presence_penalty",), _number),
    ("gen_ai.request.seed", ("seed",), _integer),
    ("gen_ai.request.stop_sequences", ("stop", "stop_sequences"), _strings),
    ("gen_ai.request.choice.count", ("n",), _integer),
    ("gen_ai.request.encoding_formats", ("encoding_format",), _strings),
    ("gen_ai.embeddings.dimension.count", ("dimensions",), _integer),
)


def operation_name(path: str) -> str:
    """gen_ai.operation.name of a provider path."""
    if path.endswith(("/embeddings", ":embedContent", ":batchEmbedContents")):
        return "embeddings"
    if path.endswith("/completions") and not path.endswith("/chat/completions"):
        return "text_completion"
    return "chat"


def route_attributes(route: Route) -> dict[str, str]:
    """The attributes known before admission (a refused request's span has them too)."""
    value = route.provider_name
    return {
        "gen_ai.operation.name": operation_name(route.provider_path),
        "gen_ai.provider.name": PROVIDER_NAMES.get(value, value),
    }


def provider_name(exchange: Exchange, record: log_record_pb2.LogRecord) -> str:
    """gen_ai.provider.name: the spec's name for where the call went (a custom target by its host)."""
    if not record.target_url:
        value = exchange.route.provider_name
        return PROVIDER_NAMES.get(value, value)
    named = exchange.options.target_provider.lower()
    if named:
        return PROVIDER_NAMES.get(named, named)
    host = _server(record.target_url)[0]
    for pattern, name in HOST_PROVIDER_NAMES:
        if pattern.search(host):
            return name
    return record.provider


def _server(url: str) -> tuple[str, int | None]:
    """(host, port) of an upstream URL: nothing else of it (userinfo and query may hold a credential)."""
    try:
        parsed = URL(url)
    except ValueError:
        return "", None
    return (parsed.host or "").lower(), parsed.port


def _error_type(record: log_record_pb2.LogRecord) -> str:
    """error.type: the status code, or why no status came back."""
    if record.status_code >= 400:
        return str(record.status_code)
    return "_OTHER" if record.error else ""


def common_attributes(exchange: Exchange, record: log_record_pb2.LogRecord) -> dict[str, Any]:
    """The attributes the span and every metric point share (made once per call, for both)."""
    host, port = _server(record.target_url or exchange.route.upstream_url)
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": operation_name(record.path),
        "gen_ai.provider.name": provider_name(exchange, record),
    }
    if exchange.model:
        attributes["gen_ai.request.model"] = exchange.model
    if exchange.facts.response_model:
        attributes["gen_ai.response.model"] = exchange.facts.response_model
    if host:
        attributes["server.address"] = host
    if port is not None:
        attributes["server.port"] = port
    if error := _error_type(record):
        attributes["error.type"] = error
    return attributes


def annotate_span(
    span: trace.Span, exchange: Exchange, record: log_record_pb2.LogRecord, common: dict[str, Any]
) -> None:
    """The GenAI attributes of the LLM span, from the request as sent and the answer as logged."""
    attributes = dict(common)
    document = exchange.document or {}
    for attribute, keys, read in REQUEST_ATTRIBUTES:
        for key in keys:
            value = read(document.get(key))
            if value is not None:
                attributes[attribute] = value
                break
    attributes["gen_ai.request.stream"] = exchange.streamed
    facts = exchange.facts
    if facts.response_id:
        attributes["gen_ai.response.id"] = facts.response_id
    if facts.finish_reason:
        attributes["gen_ai.response.finish_reasons"] = [facts.finish_reason]
    if facts.has_usage and not facts.clamped:
        attributes["gen_ai.usage.input_tokens"] = facts.prompt_tokens
        attributes["gen_ai.usage.output_tokens"] = facts.completion_tokens
        attributes["gen_ai.usage.cache_read.input_tokens"] = facts.cache_read_tokens
        attributes["gen_ai.usage.cache_creation.input_tokens"] = facts.cache_write_tokens
        attributes["gen_ai.usage.reasoning.output_tokens"] = facts.reasoning_tokens
    if record.session_id:
        attributes["gen_ai.conversation.id"] = record.session_id
    if exchange.streamed and exchange.first_byte is not None:
        attributes["gen_ai.response.time_to_first_chunk"] = exchange.first_byte - exchange.started
    attributes["http.response.status_code"] = record.status_code
    attributes["candela.request_id"] = record.request_id
    attributes["candela.cache_hit"] = record.cache_hit
    span.set_attributes(attributes)
    if record.status_code >= 400 or record.error:
        span.set_status(trace.Status(trace.StatusCode.ERROR, record.error or str(record.status_code)))


class GenAIMetrics:
    """The GenAI client metrics, recorded once per call to a provider."""

    def __init__(self, meter: metrics.Meter | None = None) -> None:
        meter = meter or metrics.get_meter("candela.proxy")
        self._tokens = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
        )
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self._first_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk",
            unit="s",
            description="Time to receive the first chunk of a streamed answer.",
            explicit_bucket_boundaries_advisory=_FIRST_CHUNK_BUCKETS,
        )

    def record(self, exchange: Exchange, record: log_record_pb2.LogRecord, attributes: dict[str, Any]) -> None:
        """Records the call's duration, tokens and (streams) time to first chunk; nothing for a cache hit
        or a request that never went upstream."""
        if record.cache_hit or not record.attempts:
            return
        self._duration.record(record.latency_ms / 1000, attributes)
        facts = exchange.facts
        if facts.has_usage and not facts.clamped:
            self._tokens.record(facts.prompt_tokens, {**attributes, "gen_ai.token.type": "input"})
            self._tokens.record(facts.completion_tokens, {**attributes, "gen_ai.token.type": "output"})
        if exchange.streamed and exchange.first_byte is not None:
            self._first_chunk.record(exchange.first_byte - exchange.started, attributes)
