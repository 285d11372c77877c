"""The Envoy gateway's configuration, built as a Python dict and dumped as YAML.

One listener (HTTP/1.1 and h2c) in front of the whole mesh:

- `/candela.<svc>.v1.<Svc>Service/...` (native gRPC) goes to that service over HTTP/2. RPCs whose proto
  marks them `idempotency_level = NO_SIDE_EFFECTS` get a route of their own with a retry policy; no
  other route retries. A gRPC call for a service not behind the gateway gets UNIMPLEMENTED from Envoy.
- REST calls declared with `google.api.http` on the RPCs (e.g. `POST /v1/request/query`) are turned
  into gRPC by the `grpc_json_transcoder` filter. Routes are matched on the transcoded gRPC path: the
  transcoder rewrites `:path` to `/<package>.<Service>/<Method>` and clears the route cache (the
  default, `match_incoming_request_route: false`), so the router picks the gRPC route above.
- Everything else (`/v1/chat/completions`, `/v1/messages`, `/openai/...`, `/anthropic/...`) goes to the
  proxy over HTTP/1.1 with no route timeout and a long idle timeout; responses stream, never buffered.
- Every upstream is health checked (grpc.health.v1, the proxy's /healthz) and circuit broken; request
  bodies above each service's own limit get a 413; Envoy's own replies are JSON in the SDK's error
  shape; the access log is JSON lines without any credential-carrying header or query string.
- Given an OTLP collector port, Envoy traces every request with its OpenTelemetry tracer (OTLP/gRPC to
  that collector): its span continues the client's `traceparent` (if any) and its own context is what
  the upstream (e.g. the proxy) receives, so the gateway hop is part of the request's one trace. Its
  `http.url` leaves out the query string.
- Envoy's own hop does not reach a provider: no X-Forwarded-For entry is appended, and the headers it sets
  on every request are removed before the upstream (GATEWAY_HEADERS_REMOVED; the proxy drops the rest).
"""

from __future__ import annotations

import importlib.resources
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor
from google.rpc import error_details_pb2

from candela_stack.console_routes import GRPC_WEB_FILTER, console_routes
from candela_stack.ports import LOOPBACK, StackPorts

TRANSCODED_SERVICES = (
    "candela.auth.v1.AuthService",
    "candela.query.v1.QueryService",
    "candela.prompts.v1.PromptsService",
)
"""Services whose `google.api.http` REST mappings the gateway serves."""

GRPC_ROUTES = (
    ("/candela.auth.v1.AuthService/", "auth"),
    ("/candela.ingest.v1.IngestService/", "ingest"),
    ("/candela.query.v1.QueryService/", "query"),
    ("/candela.prompts.v1.PromptsService/", "prompts"),
)
"""(gRPC path prefix, cluster name) for each gRPC service behind the gateway."""

GRPC_SERVICES = {cluster: prefix.strip("/") for prefix, cluster in GRPC_ROUTES}
"""Cluster name -> the full name of the gRPC service it serves (also its `grpc.health.v1` service name)."""

NEVER_RETRIED_CLUSTERS = frozenset({"ingest"})
"""Clusters whose calls Envoy never retries, whatever their methods say: an Ingest batch retried by the
gateway could be stored twice before its caller learns the first attempt's fate (the proxy spools and
replays batches itself). The proxy's LLM routes are never retried either (they are not gRPC at all)."""

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

HEALTH_CHECK_INTERVAL = "2s"
"""How often Envoy probes an upstream that serves traffic (and, `no_traffic_interval`, one that does not)."""

HEALTH_CHECK_UNHEALTHY_INTERVAL = "1s"
"""How often Envoy probes an upstream it holds unhealthy: a restarted service is back within a second."""

PROXY_IDLE_TIMEOUT = "600s"
"""How long a proxied call (e.g. a slow LLM stream) may go without a byte before Envoy ends it."""

DESCRIPTOR_SET_RESOURCE = "descriptor_set.binpb"

OTLP_CLUSTER = "opentelemetry_collector"
"""The cluster Envoy exports its spans to (OTLP over gRPC) when tracing is on."""

_HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_TYPE_URL = "type.googleapis.com/"
_BUFFER_FILTER = "envoy.filters.http.buffer"
_BUFFER_TYPE = _TYPE_URL + "envoy.extensions.filters.http.buffer.v3.Buffer"
_BUFFER_PER_ROUTE_TYPE = _TYPE_URL + "envoy.extensions.filters.http.buffer.v3.BufferPerRoute"
# Circuit breakers: ceilings that shed load with a fast 503 instead of queueing without bound, set well
# above what one service process serves, so they never cap a healthy mesh (Envoy's defaults, 1024
# connections / pending / requests, would cap a load test of the proxy long before the machine does).
# LLM calls hold a connection for a whole stream (minutes), so the proxy's ceiling is on concurrent
# streams; gRPC multiplexes on a few HTTP/2 connections, so its ceiling is on concurrent RPCs.
_PROXY_CIRCUIT = {"max_connections": 20_000, "max_pending_requests": 20_000, "max_requests": 20_000}
_GRPC_CIRCUIT = {"max_connections": 1_000, "max_pending_requests": 10_000, "max_requests": 20_000}
# Retries may add at most a fifth to the load on a struggling service (at least 10 concurrent retries).
_RETRY_BUDGET = {"budget_percent": {"value": 20.0}, "min_retry_concurrency": 10}


class EnvoyConfigError(RuntimeError):
    """`envoy --mode validate` rejected the generated configuration."""


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


def idempotent_methods(descriptor_set: Path) -> list[tuple[str, str]]:
    """(gRPC path, cluster) of every RPC behind the gateway whose proto says it is safe to retry.

    The one description is the method option `idempotency_level` (NO_SIDE_EFFECTS or IDEMPOTENT) in
    protos/, read back from the descriptor set the transcoder uses. Clusters in NEVER_RETRIED_CLUSTERS
    are left out whatever their methods say.
    """
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    cluster_of = {service: cluster for cluster, service in GRPC_SERVICES.items()}
    safe = {descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS, descriptor_pb2.MethodOptions.IDEMPOTENT}
    methods: list[tuple[str, str]] = []
    for file in files.file:
        for service in file.service:
            cluster = cluster_of.get(f"{file.package}.{service.name}")
            if cluster is None or cluster in NEVER_RETRIED_CLUSTERS:
                continue
            methods += [
                (f"/{file.package}.{service.name}/{method.name}", cluster)
                for method in service.method
                if method.options.idempotency_level in safe
            ]
    return methods


def descriptor_set_path(copy_to: Path) -> Path:
    """The API's descriptor set (generated into the installed `candela` package), written into `copy_to`.

    The copy also carries `google/rpc/error_details.proto`: services put `google.rpc.BadRequest` (and
    other details) into `grpc-status-details-bin`, and the transcoder's `convert_grpc_status` can only
    turn that status into a JSON body when it can resolve every detail's type. Without it, a REST caller
    gets the right HTTP status (e.g. 400) with an empty body.
    """
    resource = importlib.resources.files("candela") / DESCRIPTOR_SET_RESOURCE
    if not resource.is_file():
        raise FileNotFoundError(f"candela/{DESCRIPTOR_SET_RESOURCE} not found: run `make protos`")
    copy_to.mkdir(parents=True, exist_ok=True)
    target = copy_to / DESCRIPTOR_SET_RESOURCE
    target.write_bytes(_with_error_details(resource.read_bytes()))
    return target


def _with_error_details(descriptor_set: bytes) -> bytes:
    """`descriptor_set` plus google/rpc/error_details.proto and whatever it imports that is missing."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set)
    present = {file.name for file in files.file}

    def add(file: FileDescriptor) -> None:
        if file.name in present:
            return
        for dependency in file.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        files.file.append(proto)
        present.add(file.name)

    add(error_details_pb2.DESCRIPTOR)
    return files.SerializeToString()


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

    `console_dist` (the built web console) is served at `/`: see :mod:`candela_stack.console_routes`.

    `otlp_port` (a collector on loopback) turns tracing on: see :func:`add_tracing`. `body_limits` are
    the services' own request size limits, which Envoy enforces too (see :class:`BodyLimits`).
    """
    grpc_clusters = {cluster: port for cluster, port in _grpc_cluster_ports(ports).items()}
    limits = body_limits or BodyLimits()
    console, largest_file = console_routes(console_dist, descriptor_set.parent) if console_dist else ([], 0)
    routes = console + _routes(idempotent_methods(descriptor_set), limits)
    connection_manager: dict[str, Any] = {
        "@type": _TYPE_URL + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
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
                    "@type": _TYPE_URL + "envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
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
            _buffer_filter(limits.proxy + BODY_LIMIT_HEADROOM),
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": _TYPE_URL + "envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
    }
    connection_manager["local_reply_config"] = _local_reply_config()
    if access_log is not None:
        connection_manager["access_log"] = [_access_log(access_log)]
    clusters = [
        _cluster(name, port, http2=True, health_check=_grpc_health_check(GRPC_SERVICES[name]))
        for name, port in grpc_clusters.items()
    ]
    clusters.append(_cluster("proxy", ports.proxy_http, http2=False, health_check=_proxy_health_check()))
    bootstrap: dict[str, Any] = {
        "node": {"id": f"candela-gateway-{ports.base}", "cluster": "candela-gateway"},
        "admin": {"address": _socket_address(ports.envoy_admin)},
        "static_resources": {
            "listeners": [
                {
                    "name": "gateway",
                    "address": _socket_address(ports.gateway),
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
                        "@type": _TYPE_URL + "envoy.extensions.resource_monitors.downstream_connections.v3."
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
                "@type": _TYPE_URL + "envoy.config.trace.v3.OpenTelemetryConfig",
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
    bootstrap["static_resources"]["clusters"].append(_cluster(OTLP_CLUSTER, otlp_port, http2=True))
    bootstrap["layered_runtime"] = {
        "layers": [
            {
                "name": "tracing",
                "static_layer": {"tracing.opentelemetry.flush_interval_ms": flush_interval_ms},
            }
        ]
    }


def dump(config: dict[str, Any]) -> str:
    """The configuration as YAML text."""
    header = "# Generated by candela_stack.envoy_config on every start: do not edit.\n"
    return header + yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def write(config: dict[str, Any], path: Path) -> Path:
    """Writes the configuration as YAML to `path`; returns it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump(config))
    return path


def validate(envoy: Path, config_path: Path) -> None:
    """Runs `envoy --mode validate` on `config_path`; raises EnvoyConfigError with Envoy's own message."""
    completed = subprocess.run(
        [str(envoy), "--mode", "validate", "-c", str(config_path), "--log-level", "warn"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if completed.returncode != 0:
        output = (completed.stdout + completed.stderr).strip()
        raise EnvoyConfigError(f"Envoy rejected {config_path}:\n{output}")


def server_argv(envoy: Path, config_path: Path, base_id: int) -> list[str]:
    """Envoy on one worker thread; `base_id` keeps its shared-memory names apart from other stacks'."""
    return [
        str(envoy),
        "-c",
        str(config_path),
        "--concurrency",
        "1",
        "--base-id",
        str(base_id),
        "--log-level",
        "warn",
    ]


def _grpc_cluster_ports(ports: StackPorts) -> dict[str, int]:
    return {
        "auth": ports.auth_grpc,
        "ingest": ports.ingest_grpc,
        "query": ports.query_grpc,
        "prompts": ports.prompts_grpc,
    }


def _socket_address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": LOOPBACK, "port_value": port}}


def _cluster(name: str, port: int, *, http2: bool, health_check: dict[str, Any] | None = None) -> dict[str, Any]:
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
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket_address(port)}}]}],
        },
        "typed_extension_protocol_options": {
            _HTTP_PROTOCOL_OPTIONS: {
                "@type": _TYPE_URL + _HTTP_PROTOCOL_OPTIONS,
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


def _grpc_health_check(service_name: str) -> dict[str, Any]:
    """`grpc.health.v1.Health/Check` for the service by name: SERVING only once its dependencies are ready."""
    return {**_health_check_timing(), "grpc_health_check": {"service_name": service_name}}


def _proxy_health_check() -> dict[str, Any]:
    """The proxy's `GET /healthz`: 200 while it serves, 503 before it is ready and while it drains."""
    return {**_health_check_timing(), "http_health_check": {"path": "/healthz"}}


def _routes(idempotent: list[tuple[str, str]], limits: BodyLimits) -> list[dict[str, Any]]:
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
    per SDK by :func:`_local_reply_config`. A chunked body has no Content-Length and stays the buffer
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
        "typed_per_filter_config": {_BUFFER_FILTER: {"@type": _BUFFER_PER_ROUTE_TYPE, "disabled": True}},
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
            _BUFFER_FILTER: {
                "@type": _BUFFER_PER_ROUTE_TYPE,
                "buffer": {"max_request_bytes": limits.for_cluster(cluster) + BODY_LIMIT_HEADROOM},
            }
        },
    }


def _buffer_filter(max_request_bytes: int) -> dict[str, Any]:
    """Refuses (413) a request body above the route's limit; this default is the proxy's.

    It sits after the transcoder, so a REST call is measured (and routed) as the gRPC call it became.
    Every request here is unary (LLM calls and unary RPCs), so holding the body until it is complete
    delays nothing: the proxy and the gRPC servers read whole bodies before acting anyway.
    """
    return {
        "name": _BUFFER_FILTER,
        "typed_config": {"@type": _BUFFER_TYPE, "max_request_bytes": max_request_bytes},
    }


def _local_reply_config() -> dict[str, Any]:
    """Envoy's own answers (413, 503 no healthy upstream, ...) as JSON in the caller's SDK error shape.

    gRPC callers get the message alone (Envoy puts it in grpc-message with the matching grpc-status);
    Anthropic paths get Anthropic's shape; everything else OpenAI's. `code` says why Envoy answered
    (e.g. `request_payload_too_large`, `no_healthy_upstream`).
    """
    # A REST call turned into gRPC by the transcoder also says application/grpc, but keeps its original
    # path in x-envoy-original-path and wants JSON like any HTTP caller.
    grpc = {
        "and_filter": {
            "filters": [
                {"header_filter": {"header": {"name": "content-type", "string_match": {"prefix": "application/grpc"}}}},
                {"header_filter": {"header": {"name": "x-envoy-original-path", "present_match": False}}},
            ]
        }
    }
    anthropic = {
        "or_filter": {
            "filters": [
                {"header_filter": {"header": {"name": ":path", "string_match": {"prefix": prefix}}}}
                for prefix in ("/anthropic/", "/v1/messages")
            ]
        }
    }
    server_fault = {
        "status_code_filter": {
            "comparison": {"op": "GE", "value": {"default_value": 500, "runtime_key": "candela.local_reply.server"}}
        }
    }
    refused = {
        "status_code_filter": {
            "comparison": {"op": "GE", "value": {"default_value": 400, "runtime_key": "candela.local_reply.refused"}}
        }
    }
    too_large = {"default_value": 413, "runtime_key": "candela.local_reply.too_large"}
    mappers = [
        {"filter": grpc, "body_format_override": {"text_format": "%LOCAL_REPLY_BODY%"}},
        {
            "filter": {"and_filter": {"filters": [anthropic, server_fault]}},
            "body_format_override": _anthropic_error("api_error"),
        },
        {"filter": anthropic, "body_format_override": _anthropic_error("invalid_request_error")},
        {
            # An LLM call's 413 says the same, whether the declared-too-large route or the buffer filter
            # refused it (a REST call's, from the transcoder, keeps its own code).
            "filter": {
                "and_filter": {
                    "filters": [
                        {"status_code_filter": {"comparison": {"op": "EQ", "value": too_large}}},
                        {"header_filter": {"header": {"name": "x-envoy-original-path", "present_match": False}}},
                    ]
                }
            },
            "body_format_override": _openai_error("invalid_request_error", code="request_payload_too_large"),
        },
        {"filter": server_fault, "body_format_override": _openai_error("server_error")},
        # Every other refusal. A 200 direct response (a console file) matches no mapper and keeps its body.
        {"filter": refused, "body_format_override": _openai_error("invalid_request_error")},
    ]
    return {"mappers": mappers}


def _openai_error(error_type: str, code: str = "%RESPONSE_CODE_DETAILS%") -> dict[str, Any]:
    message = {"message": "%LOCAL_REPLY_BODY%", "type": error_type, "code": code}
    return {"json_format": {"error": message}}


def _anthropic_error(error_type: str) -> dict[str, Any]:
    return {"json_format": {"type": "error", "error": {"type": error_type, "message": "%LOCAL_REPLY_BODY%"}}}


GATEWAY_HEADERS_REMOVED = ("x-envoy-external-address", "x-forwarded-proto", "x-envoy-expected-rq-timeout-ms")
"""Headers Envoy sets on every request about its own hop, removed before the request leaves for a service
(the provider would otherwise receive them through the proxy)."""

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


def _access_log(path: Path) -> dict[str, Any]:
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": _TYPE_URL + "envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(path),
            "log_format": {"json_format": ACCESS_LOG_FIELDS},
        },
    }
