"""The proxy's Prometheus metrics (process-wide registry, scraped at ``GET /metrics``)."""

from __future__ import annotations

import functools

from prometheus_client import Counter, Gauge, Histogram

from candela_proxy.providers import Provider, Route

REQUESTS = Counter(
    "candela_proxy_requests",
    "Requests answered (refused ones too), by provider, endpoint and status class.",
    ["provider", "endpoint", "status"],
)
DURATION = Histogram(
    "candela_proxy_request_duration_seconds",
    "From receiving a request to the last byte of its answer, by endpoint (requests that reached a provider).",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
# Endpoints get a label of their own, from this fixed list; any other path counts as "other", so the series
# stay few. A label never carries what varies per request (a model id, an Azure deployment, a project).
OPENAI_ENDPOINTS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
        "/v1/audio/speech",
        "/v1/images/generations",
        "/v1/images/edits",
        "/v1/moderations",
    }
)
"""OpenAI's and Anthropic's paths, as the API spells them whatever the provider's layout (an Azure deployment
path, Gemini's OpenAI-compatible endpoint and the named providers count under the OpenAI path they are)."""
GOOGLE_METHODS = frozenset(
    {
        "generateContent",
        "streamGenerateContent",
        "countTokens",
        "embedContent",
        "batchEmbedContents",
        "predict",
        "rawPredict",
        "streamRawPredict",
    }
)
"""The method of a Gemini or Vertex AI ``models/{model}:{method}`` path."""
BEDROCK_OPERATIONS = frozenset({"converse", "converse-stream", "invoke", "invoke-with-response-stream"})
"""The operation of a Bedrock ``/model/{modelId}/{operation}`` path (candela_proxy.bedrock.OPERATIONS)."""
OVERHEAD = Histogram(
    "candela_proxy_overhead_seconds",
    "Time the proxy itself adds before the upstream call starts (auth, parsing, cache, rate limit).",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1),
)
UPSTREAM_ATTEMPTS = Counter(
    "candela_proxy_upstream_attempts", "Upstream attempts, by outcome (status code or 'error').", ["outcome"]
)
CACHE_LOOKUPS = Counter("candela_proxy_cache_lookups", "Cache lookups, by result.", ["result"])
PRICING_LATE = Counter(
    "candela_proxy_pricing_late",
    "Logs left unpriced because their organization's pricing was not fetched within CANDELA_PRICING_WAIT_S.",
)
RATE_LIMITED = Counter("candela_proxy_rate_limited", "Requests refused with 429 by a Candela rate-limit policy.")
REDIS_ERRORS = Counter(
    "candela_proxy_redis_errors",
    "Redis calls that failed (cache skipped, rate limit failed open), by feature.",
    ["feature"],
)
# With several workers (candela_proxy.supervisor) each gauge is summed over the live workers, or for
# "at risk" the worst of them; a single process ignores the mode.
LOG_QUEUE_DEPTH = Gauge(
    "candela_proxy_log_queue_depth", "Finished logs waiting in memory for ingest.", multiprocess_mode="livesum"
)
LOGS_SENT = Counter("candela_proxy_logs_sent", "Logs acknowledged by ingest (directly or from the spool).")
LOGS_SPOOLED = Counter("candela_proxy_logs_spooled", "Logs written to the on-disk spool.")
LOGS_DROPPED = Counter("candela_proxy_logs_dropped", "Logs lost because a hard bound was hit, by reason.", ["reason"])
LOGS_REJECTED = Counter("candela_proxy_logs_rejected", "Logs ingest refused as invalid.")
SPOOL_BYTES = Gauge("candela_proxy_spool_bytes", "Bytes in the on-disk log spool.", multiprocess_mode="livesum")
SPOOL_SEGMENTS = Gauge(
    "candela_proxy_spool_segments", "Segment files in the on-disk log spool.", multiprocess_mode="livesum"
)
LOGS_AT_RISK = Gauge(
    "candela_proxy_logs_at_risk",
    "1 while a new log could not be kept (the spool is full or the write-ahead log fails), else 0.",
    multiprocess_mode="livemax",
)
WAL_COMMITS = Histogram(
    "candela_proxy_wal_commit_seconds",
    "Write-ahead log group commits (write + fsync), by duration.",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1),
)
WAL_ERRORS = Counter("candela_proxy_wal_errors", "Write-ahead log group commits that failed (logs kept in memory).")
LOGS_RECOVERED = Counter(
    "candela_proxy_logs_recovered", "Logs found in the write-ahead log at start (a killed process) and resent."
)


def endpoint_label(route: Route | None) -> str:
    """The ``endpoint`` label of a request's route: its OpenAI or Anthropic path, Google's method or Bedrock's
    operation when the path is one of the known ones, else "other" (also for a request with no route)."""
    if route is None:
        return "other"
    path = route.api_path or route.provider_path  # route.openai_path, without a property call on the hot path
    if path in OPENAI_ENDPOINTS:
        return path
    last = path.rpartition("/")[2]
    if route.provider is Provider.BEDROCK:
        return last if last in BEDROCK_OPERATIONS else "other"
    # Google's models/{model}:{method}; no OpenAI or Anthropic path has a colon in its last segment.
    method = last.rpartition(":")[2] if ":" in last else ""
    return method if method in GOOGLE_METHODS else "other"


@functools.cache
def _request_counter(provider: str, endpoint: str, status_class: str) -> Counter:
    return REQUESTS.labels(provider, endpoint, status_class)


@functools.cache
def _duration_histogram(endpoint: str) -> Histogram:
    return DURATION.labels(endpoint)


@functools.cache
def _attempt_counter(status: int) -> Counter:
    return UPSTREAM_ATTEMPTS.labels(str(status) if status else "error")


def count_request(provider: str, route: Route | None, status: int) -> None:
    """Counts one answered request (label lookups cached: they cost more than the increment)."""
    _request_counter(provider, endpoint_label(route), f"{status // 100}xx").inc()


def count_served(provider: str, route: Route, status: int, seconds: float) -> None:
    """Counts one request that reached a provider and records how long it took end to end."""
    endpoint = endpoint_label(route)
    _request_counter(provider, endpoint, f"{status // 100}xx").inc()
    _duration_histogram(endpoint).observe(seconds)


def count_attempt(status: int) -> None:
    """Counts one upstream attempt by its status (0: no answer)."""
    _attempt_counter(status).inc()
