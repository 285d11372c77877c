"""The full Envoy bootstrap of a stack: one listener and its HTTP filters in front of every cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from candela_stack.envoy_config.clusters import (
    grpc_cluster_ports,
    grpc_health_check,
    proxy_health_check,
    socket_address,
    upstream_cluster,
)
from candela_stack.envoy_config.console import GRPC_WEB_FILTER, console_routes
from candela_stack.envoy_config.extensions import TYPE_URL
from candela_stack.envoy_config.replies import local_reply_config
from candela_stack.envoy_config.routes import BODY_LIMIT_HEADROOM, BodyLimits, buffer_filter, gateway_routes
from candela_stack.envoy_config.services import GRPC_SERVICES, TRANSCODED_SERVICES, idempotent_methods
from candela_stack.envoy_config.telemetry import access_log_config, add_tracing
from candela_stack.ports import StackPorts

GATEWAY_HEADERS_REMOVED = ("x-envoy-external-address", "x-forwarded-proto", "x-envoy-expected-rq-timeout-ms")
"""Headers Envoy sets on every request about its own hop, removed before the request leaves for a service
(the provider would otherwise receive them through the proxy)."""


def build_config(
    ports: StackPorts,
    descriptor_set: Path,
    *,
    access_log: Path | None = None,
    max_downstream_connections: int = 50_000,
    otlp_port: int | None = None,
    otlp_flush_interval_ms: int = 1000,
    body_limits: BodyLimits | None = None,
    console_dist: Path | None = None,
) -> dict[str, Any]:
    """The full Envoy bootstrap for a stack laid out on `ports`.

    `console_dist` (the built web console) is served at `/`: see :mod:`candela_stack.envoy_config.console`.

    `otlp_port` (a collector on loopback) turns tracing on: see :func:`add_tracing`. `body_limits` are
    the services' own request size limits, which Envoy enforces too (see :class:`BodyLimits`).
    """
    grpc_clusters = {cluster: port for cluster, port in grpc_cluster_ports(ports).items()}
    limits = body_limits or BodyLimits()
    console, largest_file = console_routes(console_dist, descriptor_set.parent) if console_dist else ([], 0)
    routes = console + gateway_routes(idempotent_methods(descriptor_set), limits)
    connection_manager: dict[str, Any] = {
        "@type": TYPE_URL + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "gateway",
        "codec_type": "AUTO",
        # Envoy is the edge: it takes the client's address from the peer and trusts no incoming x-envoy-*
        # header (it strips a client's own). What it adds about its own hop must not reach a provider: it
        # appends no X-Forwarded-For entry, removes what it sets anyway on the way upstream (see
        # GATEWAY_HEADERS_REMOVED), and the proxy drops the rest (its X-Request-ID, which the access log
        # and trace sampling use, so Envoy keeps generating it).
        "use_remote_address": True,
        "skip_xff_append": True,
        # Responses carry the upstream's own `server` header rather than "envoy".
        "server_header_transformation": "PASS_THROUGH",
        "common_http_protocol_options": {"idle_timeout": "3600s"},
        "route_config": {
            "name": "gateway",
            "max_direct_response_body_size_bytes": max(largest_file, 4096),
            "virtual_hosts": [
                {
                    "name": "candela",
                    "domains": ["*"],
                    "routes": routes,
                    "request_headers_to_remove": list(GATEWAY_HEADERS_REMOVED),
                }
            ],
        },
        "http_filters": [
            GRPC_WEB_FILTER,
            {
                "name": "envoy.filters.http.grpc_json_transcoder",
                "typed_config": {
                    "@type": TYPE_URL + "envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
                    "proto_descriptor": str(descriptor_set),
                    "services": list(TRANSCODED_SERVICES),
                    "print_options": {
                        "add_whitespace": False,
                        "always_print_primitive_fields": True,
                        "always_print_enums_as_ints": False,
                        "preserve_proto_field_names": False,
                    },
                    # gRPC errors become a JSON body with the matching HTTP status, not an empty 200.
                    "convert_grpc_status": True,
                },
            },
            buffer_filter(limits.proxy + BODY_LIMIT_HEADROOM),
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": TYPE_URL + "envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
    }
    connection_manager["local_reply_config"] = local_reply_config()
    if access_log is not None:
        connection_manager["access_log"] = [access_log_config(access_log)]
    clusters = [
        upstream_cluster(name, port, http2=True, health_check=grpc_health_check(GRPC_SERVICES[name]))
        for name, port in grpc_clusters.items()
    ]
    clusters.append(upstream_cluster("proxy", ports.proxy_http, http2=False, health_check=proxy_health_check()))
    bootstrap: dict[str, Any] = {
        "node": {"id": f"candela-gateway-{ports.base}", "cluster": "candela-gateway"},
        "admin": {"address": socket_address(ports.envoy_admin)},
        "static_resources": {
            "listeners": [
                {
                    "name": "gateway",
                    "address": socket_address(ports.gateway),
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": connection_manager,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": clusters,
        },
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": TYPE_URL + "envoy.extensions.resource_monitors.downstream_connections.v3."
                        "DownstreamConnectionsConfig",
                        "max_active_downstream_connections": max_downstream_connections,
                    },
                }
            ]
        },
    }
    if otlp_port is not None:
        add_tracing(bootstrap, otlp_port, flush_interval_ms=otlp_flush_interval_ms)
    return bootstrap
