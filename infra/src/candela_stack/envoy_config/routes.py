"""The gateway's routes: retried idempotent RPCs, each gRPC service, the proxy's LLM catch-all, and the body
size limits each route enforces."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from candela_stack.envoy_config.clusters import PROXY_IDLE_TIMEOUT
from candela_stack.envoy_config.extensions import BUFFER_FILTER, BUFFER_PER_ROUTE_TYPE, BUFFER_TYPE
from candela_stack.envoy_config.services import GRPC_ROUTES

RETRY_POLICY: dict[str, Any] = {
    # Only failures where the call never ran, or ran without effect on an idempotent method: the upstream
    # said UNAVAILABLE (e.g. shutting down), reset the stream, refused it, or could not be reached.
    "retry_on": "unavailable,reset,connect-failure,refused-stream",
    "num_retries": 2,
    "retry_back_off": {"base_interval": "0.025s", "max_interval": "0.25s"},
}
"""The retry policy of each idempotent RPC's route (derived from `idempotency_level` in the protos)."""

BODY_LIMIT_HEADROOM = 64 * 1024
"""Bytes Envoy accepts above a service's own limit, so that the service answers first, in its own shape."""


@dataclass(frozen=True)
class BodyLimits:
    """The largest request body each kind of upstream accepts (Envoy answers 413 a little above these)."""

    proxy: int = 32 * 1024 * 1024
    """The proxy's CANDELA_MAX_BODY_BYTES: LLM calls (the proxy answers 413 in the provider's shape)."""
    grpc: int = 4 * 1024 * 1024
    """gRPC's default largest message, which auth, query and prompts keep (REST bodies, once transcoded)."""
    ingest: int = 128 * 1024 * 1024
    """Ingest's CANDELA_MAX_CALL_BYTES: one batch of logs with their bodies."""

    def for_cluster(self, cluster: str) -> int:
        """The limit of the upstream `cluster`."""
        if cluster == "proxy":
            return self.proxy
        return self.ingest if cluster == "ingest" else self.grpc


def gateway_routes(idempotent: list[tuple[str, str]], limits: BodyLimits) -> list[dict[str, Any]]:
    """Idempotent RPCs (retried) first, then each gRPC service, unknown gRPC services, and the proxy."""
    routes = [
        _grpc_route(f"retry-{path.strip('/')}", {"path": path}, cluster, limits, retry=True)
        for path, cluster in idempotent
    ]
    routes += [_grpc_route(f"grpc-{cluster}", {"prefix": prefix}, cluster, limits) for prefix, cluster in GRPC_ROUTES]
    routes.append(
        {
            # A gRPC call for a service the gateway does not serve: Envoy turns a local 404 into
            # grpc-status UNIMPLEMENTED, rather than the proxy answering a gRPC client in HTTP/1.1 JSON.
            "name": "grpc-unknown-service",
            "match": {
                "prefix": "/",
                "headers": [{"name": "content-type", "string_match": {"prefix": "application/grpc"}}],
            },
            "direct_response": {
                "status": 404,
                "body": {"inline_string": "no such gRPC service behind the Candela gateway"},
            },
        }
    )
    routes.append(
        {
            # The proxy's operational endpoints are for the operator's scraper and Envoy's own health checks
            # (both reach the proxy's port directly), not for anyone who can reach the gateway.
            "name": "proxy-internal",
            "match": {"safe_regex": {"regex": "/(metrics|healthz)/?"}},
            "direct_response": {"status": 404, "body": {"inline_string": "no such route on the Candela gateway"}},
        }
    )
    routes.append(declared_too_large_route(limits.proxy + BODY_LIMIT_HEADROOM))
    routes.append(
        {
            # LLM calls: no route timeout (a long stream is never cut), only an idle timeout between bytes;
            # never retried (a call costs money and may have reached the provider). Unknown paths get the
            # proxy's own 404 in the provider's error shape.
            "name": "proxy",
            "match": {"prefix": "/"},
            "route": {"cluster": "proxy", "timeout": "0s", "idle_timeout": PROXY_IDLE_TIMEOUT},
        }
    )
    return routes


def declared_too_large_route(max_request_bytes: int) -> dict[str, Any]:
    """A 413 at once for a request whose Content-Length is above ``max_request_bytes``.

    The buffer filter alone would wait for the whole declared body before refusing it (a client that
    declares 10 GB and sends slowly, or nothing, would hang until a timeout); a route matched on the header
    answers as soon as the headers arrive. The buffer filter is off on this route so that the router
    (where a direct response is sent) sees the headers at once. The body is Envoy's local reply, shaped
    per SDK by :func:`local_reply_config`. A chunked body has no Content-Length and stays the buffer
    filter's to refuse once it grows past the limit.
    """
    return {
        "name": "proxy-body-declared-too-large",
        "match": {
            "prefix": "/",
            # range_match's end is exclusive; a Content-Length too large for an int64 is refused by the codec.
            "headers": [{"name": "content-length", "range_match": {"start": max_request_bytes + 1, "end": 2**63 - 1}}],
        },
        "direct_response": {
            "status": 413,
            "body": {"inline_string": f"the request body is larger than the {max_request_bytes}-byte limit"},
        },
        "typed_per_filter_config": {BUFFER_FILTER: {"@type": BUFFER_PER_ROUTE_TYPE, "disabled": True}},
    }


def _grpc_route(
    name: str, match: dict[str, Any], cluster: str, limits: BodyLimits, *, retry: bool = False
) -> dict[str, Any]:
    action: dict[str, Any] = {
        "cluster": cluster,
        # No fixed timeout: the caller's grpc-timeout (the gRPC deadline) governs.
        "timeout": "0s",
        "max_stream_duration": {"grpc_timeout_header_max": "0s"},
    }
    if retry:
        action["retry_policy"] = RETRY_POLICY
    return {
        "name": name,
        "match": match,
        "route": action,
        "typed_per_filter_config": {
            BUFFER_FILTER: {
                "@type": BUFFER_PER_ROUTE_TYPE,
                "buffer": {"max_request_bytes": limits.for_cluster(cluster) + BODY_LIMIT_HEADROOM},
            }
        },
    }


def buffer_filter(max_request_bytes: int) -> dict[str, Any]:
    """Refuses (413) a request body above the route's limit; this default is the proxy's.

    It sits after the transcoder, so a REST call is measured (and routed) as the gRPC call it became.
    Every request here is unary (LLM calls and unary RPCs), so holding the body until it is complete
    delays nothing: the proxy and the gRPC servers read whole bodies before acting anyway.
    """
    return {
        "name": BUFFER_FILTER,
        "typed_config": {"@type": BUFFER_TYPE, "max_request_bytes": max_request_bytes},
    }
