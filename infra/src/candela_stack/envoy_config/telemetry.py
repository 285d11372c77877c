"""What Envoy tells about each request: its OpenTelemetry span and its access-log line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from candela_stack.envoy_config.clusters import upstream_cluster
from candela_stack.envoy_config.extensions import TYPE_URL

OTLP_CLUSTER = "opentelemetry_collector"
"""The cluster Envoy exports its spans to (OTLP over gRPC) when tracing is on."""


TRACED_URL = "%REQ(:SCHEME)%://%REQ(:AUTHORITY)%%PATH(NQ:ORIG_OR_PATH)%"
"""The `http.url` of Envoy's span: as the client addressed it, without the query string."""


def add_tracing(bootstrap: dict[str, Any], otlp_port: int, *, flush_interval_ms: int = 1000) -> None:
    """Traces every request through each HTTP connection manager, exporting to a collector on `otlp_port`.

    Envoy's OpenTelemetry tracer makes one span per request (no separate upstream span), a child of the
    client's `traceparent` when there is one, and sends its own context upstream, so the proxy's LLM span
    is its child. Spans are exported over OTLP/gRPC to loopback every `flush_interval_ms` (Envoy's
    runtime key; its default of 5 s would leave a test, or an operator, waiting) or every 5 spans.
    """
    tracing = {
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": TYPE_URL + "envoy.config.trace.v3.OpenTelemetryConfig",
                "grpc_service": {"envoy_grpc": {"cluster_name": OTLP_CLUSTER}, "timeout": "1s"},
                "service_name": "candela-gateway",
            },
        },
        # Envoy's own `http.url` tag is the whole URL, query string included (a `?key=` would be exported);
        # this tag of the same name, set after it, replaces it with the URL without its query.
        "custom_tags": [{"tag": "http.url", "value": TRACED_URL}],
    }
    for listener in bootstrap["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                if network_filter["name"] == "envoy.filters.network.http_connection_manager":
                    network_filter["typed_config"]["tracing"] = tracing
    bootstrap["static_resources"]["clusters"].append(upstream_cluster(OTLP_CLUSTER, otlp_port, http2=True))
    bootstrap["layered_runtime"] = {
        "layers": [
            {
                "name": "tracing",
                "static_layer": {"tracing.opentelemetry.flush_interval_ms": flush_interval_ms},
            }
        ]
    }


ACCESS_LOG_FIELDS = {
    "time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    # The path without its query string (`NQ`: a query can carry a credential, e.g. Gemini's `?key=`); the
    # one the client sent, not the transcoder's gRPC rewrite.
    "path": "%PATH(NQ:ORIG_OR_PATH)%",
    "protocol": "%PROTOCOL%",
    "status": "%RESPONSE_CODE%",
    "grpc_status": "%GRPC_STATUS%",
    "details": "%RESPONSE_CODE_DETAILS%",
    "flags": "%RESPONSE_FLAGS%",
    "duration_ms": "%DURATION%",
    "upstream_ms": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "upstream_host": "%UPSTREAM_HOST%",
    "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "candela_id": "%RESP(CANDELA-ID)%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "user_agent": "%REQ(USER-AGENT)%",
}
"""One JSON line per request. No header that can carry a key (authorization, candela-auth, x-api-key)."""


def access_log_config(path: Path) -> dict[str, Any]:
    """The file access log at `path`: one JSON line of ACCESS_LOG_FIELDS per request."""
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": TYPE_URL + "envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(path),
            "log_format": {"json_format": ACCESS_LOG_FIELDS},
        },
    }
