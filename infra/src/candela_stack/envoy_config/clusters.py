"""The upstream clusters: one per service on loopback, with health checks, circuit breakers and the
retry budget."""

from __future__ import annotations

from typing import Any

from candela_stack.envoy_config.extensions import HTTP_PROTOCOL_OPTIONS, TYPE_URL
from candela_stack.ports import LOOPBACK, StackPorts

HEALTH_CHECK_INTERVAL = "2s"
"""How often Envoy probes an upstream that serves traffic (and, `no_traffic_interval`, one that does not)."""

HEALTH_CHECK_UNHEALTHY_INTERVAL = "1s"
"""How often Envoy probes an upstream it holds unhealthy: a restarted service is back within a second."""

PROXY_IDLE_TIMEOUT = "600s"
"""How long a proxied call (e.g. a slow LLM stream) may go without a byte before Envoy ends it."""

# Circuit breakers: ceilings that shed load with a fast 503 instead of queueing without bound, set well
# above what one service process serves, so they never cap a healthy mesh (Envoy's defaults, 1024
# connections / pending / requests, would cap a load test of the proxy long before the machine does).
# LLM calls hold a connection for a whole stream (minutes), so the proxy's ceiling is on concurrent
# streams; gRPC multiplexes on a few HTTP/2 connections, so its ceiling is on concurrent RPCs.
_PROXY_CIRCUIT = {"max_connections": 20_000, "max_pending_requests": 20_000, "max_requests": 20_000}
_GRPC_CIRCUIT = {"max_connections": 1_000, "max_pending_requests": 10_000, "max_requests": 20_000}
# Retries may add at most a fifth to the load on a struggling service (at least 10 concurrent retries).
_RETRY_BUDGET = {"budget_percent": {"value": 20.0}, "min_retry_concurrency": 10}


def grpc_cluster_ports(ports: StackPorts) -> dict[str, int]:
    """Cluster name -> port of each gRPC service behind the gateway."""
    return {
        "auth": ports.auth_grpc,
        "ingest": ports.ingest_grpc,
        "query": ports.query_grpc,
        "prompts": ports.prompts_grpc,
    }


def socket_address(port: int) -> dict[str, Any]:
    """A loopback socket address on `port`."""
    return {"socket_address": {"address": LOOPBACK, "port_value": port}}


def upstream_cluster(
    name: str, port: int, *, http2: bool, health_check: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One upstream on loopback: HTTP/2 (gRPC) or HTTP/1.1 (the proxy), circuit broken, health checked if given."""
    protocol: dict[str, Any] = {"http2_protocol_options": {}} if http2 else {"http_protocol_options": {}}
    limits: dict[str, Any] = dict(_GRPC_CIRCUIT if http2 else _PROXY_CIRCUIT)
    if http2:
        limits["retry_budget"] = _RETRY_BUDGET
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "circuit_breakers": {"thresholds": [limits]},
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(port)}}]}],
        },
        "typed_extension_protocol_options": {
            HTTP_PROTOCOL_OPTIONS: {
                "@type": TYPE_URL + HTTP_PROTOCOL_OPTIONS,
                "common_http_protocol_options": {"idle_timeout": PROXY_IDLE_TIMEOUT},
                "explicit_http_config": protocol,
            }
        },
    }
    if health_check is not None:
        cluster["health_checks"] = [health_check]
        # Envoy's default panic threshold (50%) stays: with one endpoint per cluster (a local stack), an
        # endpoint held unhealthy still gets traffic, so a call right after a restart is not refused while
        # the next probe is pending; with several endpoints, traffic avoids the unhealthy ones.
        cluster["common_lb_config"] = {"healthy_panic_threshold": {"value": 50.0}}
    return cluster


def _health_check_timing() -> dict[str, Any]:
    """Probe cadence shared by every upstream: quick to notice a stop, quicker to notice a return."""
    return {
        "timeout": "1s",
        "interval": HEALTH_CHECK_INTERVAL,
        "no_traffic_interval": HEALTH_CHECK_INTERVAL,  # Envoy's default (60 s) would hide a stop for a minute
        "unhealthy_interval": HEALTH_CHECK_UNHEALTHY_INTERVAL,
        "unhealthy_threshold": 2,  # one lost probe (e.g. a GC pause) does not mark a service down
        "healthy_threshold": 1,
    }


def grpc_health_check(service_name: str) -> dict[str, Any]:
    """`grpc.health.v1.Health/Check` for the service by name: SERVING only once its dependencies are ready."""
    return {**_health_check_timing(), "grpc_health_check": {"service_name": service_name}}


def proxy_health_check() -> dict[str, Any]:
    """The proxy's `GET /healthz`: 200 while it serves, 503 before it is ready and while it drains."""
    return {**_health_check_timing(), "http_health_check": {"path": "/healthz"}}
