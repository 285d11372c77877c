"""The Envoy gateway's configuration, built as a Python dict and dumped as YAML.

One listener (HTTP/1.1 and h2c) in front of the whole mesh:

- `/candela.<svc>.v1.<Svc>Service/...` (native gRPC) goes to that service over HTTP/2.
- REST calls declared with `google.api.http` on the RPCs (e.g. `POST /v1/request/query`) are turned
  into gRPC by the `grpc_json_transcoder` filter. Routes are matched on the transcoded gRPC path: the
  transcoder rewrites `:path` to `/<package>.<Service>/<Method>` and clears the route cache (the
  default, `match_incoming_request_route: false`), so the router picks the gRPC route above.
- Everything else (`/v1/chat/completions`, `/v1/messages`, `/openai/...`, `/anthropic/...`) goes to the
  proxy over HTTP/1.1 with no route timeout and a long idle timeout, streamed, never buffered.
"""

from __future__ import annotations

import importlib.resources
import subprocess
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor
from google.rpc import error_details_pb2

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

PROXY_IDLE_TIMEOUT = "600s"
"""How long a proxied call (e.g. a slow LLM stream) may go without a byte before Envoy ends it."""

DESCRIPTOR_SET_RESOURCE = "descriptor_set.binpb"

_HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_TYPE_URL = "type.googleapis.com/"
# Envoy's default circuit breakers (1024 connections / pending / requests per cluster) would cap a
# load test of the proxy long before the machine does.
_CIRCUIT_LIMIT = 100_000


class EnvoyConfigError(RuntimeError):
    """`envoy --mode validate` rejected the generated configuration."""


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
) -> dict[str, Any]:
    """The full Envoy bootstrap for a stack laid out on `ports`."""
    grpc_clusters = {cluster: port for cluster, port in _grpc_cluster_ports(ports).items()}
    routes: list[dict[str, Any]] = [
        {
            "name": f"grpc-{cluster}",
            "match": {"prefix": prefix},
            "route": {
                "cluster": cluster,
                # No fixed timeout: the caller's grpc-timeout (the gRPC deadline) governs.
                "timeout": "0s",
                "max_stream_duration": {"grpc_timeout_header_max": "0s"},
            },
        }
        for prefix, cluster in GRPC_ROUTES
    ]
    routes.append(
        {
            "name": "proxy",
            "match": {"prefix": "/"},
            "route": {"cluster": "proxy", "timeout": "0s", "idle_timeout": PROXY_IDLE_TIMEOUT},
        }
    )
    connection_manager: dict[str, Any] = {
        "@type": _TYPE_URL + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "gateway",
        "codec_type": "AUTO",
        # Envoy is the edge: it sets X-Forwarded-For from the peer and trusts no incoming value.
        "use_remote_address": True,
        # Responses carry the upstream's own `server` header rather than "envoy".
        "server_header_transformation": "PASS_THROUGH",
        "common_http_protocol_options": {"idle_timeout": "3600s"},
        "route_config": {
            "name": "gateway",
            "virtual_hosts": [{"name": "candela", "domains": ["*"], "routes": routes}],
        },
        "http_filters": [
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
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": _TYPE_URL + "envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
    }
    if access_log is not None:
        connection_manager["access_log"] = [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": _TYPE_URL + "envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": str(access_log),
                },
            }
        ]
    clusters = [_cluster(name, port, http2=True) for name, port in grpc_clusters.items()]
    clusters.append(_cluster("proxy", ports.proxy_http, http2=False))
    return {
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


def _cluster(name: str, port: int, *, http2: bool) -> dict[str, Any]:
    protocol: dict[str, Any] = {"http2_protocol_options": {}} if http2 else {"http_protocol_options": {}}
    limits = {
        "max_connections": _CIRCUIT_LIMIT,
        "max_pending_requests": _CIRCUIT_LIMIT,
        "max_requests": _CIRCUIT_LIMIT,
    }
    return {
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
