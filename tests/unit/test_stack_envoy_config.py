"""The generated Envoy gateway config, read as data: routes, retries, health checks, limits, logs, transcoding.

Envoy's own validation of the config and real routing through it are integration tests
(tests/integration/test_stack_envoy.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import descriptor_pb2

from candela.auth.v1 import auth_service_pb2
from candela.ingest.v1 import ingest_service_pb2
from candela.prompts.v1 import prompts_service_pb2
from candela.query.v1 import query_service_pb2
from candela_stack import envoy_config
from candela_stack.ports import StackPorts

pytestmark = pytest.mark.unit


def build(tmp_path: Path, ports: StackPorts | None = None) -> dict[str, Any]:
    ports = ports or StackPorts.from_base(7700)
    return envoy_config.build_config(ports, envoy_config.descriptor_set_path(tmp_path))


def routes_of(config: dict[str, Any]) -> list[dict[str, Any]]:
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    routes: list[dict[str, Any]] = manager["route_config"]["virtual_hosts"][0]["routes"]
    return routes


def test_every_listener_and_upstream_is_on_loopback(tmp_path: Path) -> None:
    config = build(tmp_path)
    addresses = [config["admin"]["address"], config["static_resources"]["listeners"][0]["address"]]
    for cluster in config["static_resources"]["clusters"]:
        addresses += [
            endpoint["endpoint"]["address"]
            for group in cluster["load_assignment"]["endpoints"]
            for endpoint in group["lb_endpoints"]
        ]
    assert {address["socket_address"]["address"] for address in addresses} == {"127.0.0.1"}
    assert config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] == 7700
    assert config["admin"]["address"]["socket_address"]["port_value"] == 7701


def test_grpc_prefixes_route_to_their_services_and_the_rest_to_the_proxy(tmp_path: Path) -> None:
    routes = routes_of(build(tmp_path))
    prefixed = [route for route in routes if "prefix" in route["match"] and "route" in route]
    assert [(route["match"]["prefix"], route["route"]["cluster"]) for route in prefixed] == [
        ("/candela.auth.v1.AuthService/", "auth"),
        ("/candela.ingest.v1.IngestService/", "ingest"),
        ("/candela.query.v1.QueryService/", "query"),
        ("/candela.prompts.v1.PromptsService/", "prompts"),
        ("/", "proxy"),
    ]
    assert routes[-1] is prefixed[-1], "the proxy is the catch-all, after every other route"
    proxy = routes[-1]["route"]
    # A long LLM stream is never cut by a route timeout; only silence ends it.
    assert proxy["timeout"] == "0s"
    assert proxy["idle_timeout"] == "600s"
    assert "retry_policy" not in proxy


def _declared_idempotency() -> dict[str, int]:
    """gRPC path -> idempotency_level, read from the generated modules (not from the descriptor set file)."""
    levels: dict[str, int] = {}
    for module in (auth_service_pb2, ingest_service_pb2, query_service_pb2, prompts_service_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                levels[f"/{service.full_name}/{method.name}"] = method.GetOptions().idempotency_level
    return levels


def test_retry_policies_exist_exactly_for_the_idempotent_rpcs(tmp_path: Path) -> None:
    routes = routes_of(build(tmp_path))
    retried = {route["match"]["path"] for route in routes if "retry_policy" in route.get("route", {})}
    declared = _declared_idempotency()
    no_side_effects = descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS
    assert retried == {path for path, level in declared.items() if level == no_side_effects}
    # The read-only RPCs the protos mark, and none of the mutating ones (a retried write could apply twice).
    assert {"/candela.query.v1.QueryService/GetRequest", "/candela.auth.v1.AuthService/Authenticate"} <= retried
    for mutating in (
        "/candela.auth.v1.AuthService/CreateOrganization",
        "/candela.auth.v1.AuthService/CreateApiKey",
        "/candela.auth.v1.AuthService/UpdateOrganization",
        "/candela.auth.v1.AuthService/RevokeApiKey",
        "/candela.prompts.v1.PromptsService/CreatePrompt",
        "/candela.prompts.v1.PromptsService/SetEnvironment",
    ):
        assert declared[mutating] != no_side_effects, f"{mutating} is a write but the proto marks it side-effect free"
        assert mutating not in retried
    assert not any(path.startswith("/candela.ingest.v1.") for path in retried), "Ingest is never retried"
    # Each retry route sits before its service's prefix route, so it is the one that matches.
    names = [route["name"] for route in routes]
    for route in routes:
        if "retry_policy" in route.get("route", {}):
            assert names.index(route["name"]) < names.index(f"grpc-{route['route']['cluster']}")
            assert route["route"]["retry_policy"]["num_retries"] <= 3


def test_a_write_marked_idempotent_in_the_protos_would_be_retried(tmp_path: Path) -> None:
    """The retry routes come from the descriptor set, not from a list: marking an RPC changes them."""
    descriptor_set = envoy_config.descriptor_set_path(tmp_path)
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    for file in files.file:
        for service in file.service:
            for method in service.method:
                if method.name in ("CreatePrompt", "Ingest"):
                    method.options.idempotency_level = descriptor_pb2.MethodOptions.IDEMPOTENT
    descriptor_set.write_bytes(files.SerializeToString())
    paths = {path for path, _ in envoy_config.idempotent_methods(descriptor_set)}
    assert "/candela.prompts.v1.PromptsService/CreatePrompt" in paths
    assert "/candela.ingest.v1.IngestService/Ingest" not in paths, "Ingest stays unretried whatever the proto says"


def test_every_upstream_is_health_checked_and_circuit_broken(tmp_path: Path) -> None:
    clusters = {cluster["name"]: cluster for cluster in build(tmp_path)["static_resources"]["clusters"]}
    for name, cluster in clusters.items():
        (check,) = cluster["health_checks"]
        if name == "proxy":
            assert check["http_health_check"] == {"path": "/healthz"}
        else:
            assert check["grpc_health_check"] == {"service_name": envoy_config.GRPC_SERVICES[name]}
        # Envoy's default no-traffic interval (60 s) would hide a stopped service for a minute.
        assert check["no_traffic_interval"] == check["interval"] == "2s"
        assert check["unhealthy_interval"] == "1s"
        (thresholds,) = cluster["circuit_breakers"]["thresholds"]
        assert {"max_connections", "max_pending_requests", "max_requests"} <= set(thresholds)
    assert envoy_config.GRPC_SERVICES["query"] == "candela.query.v1.QueryService"


def test_body_limits_sit_just_above_each_services_own(tmp_path: Path) -> None:
    limits = envoy_config.BodyLimits(proxy=1000, grpc=2000, ingest=3000)
    config = envoy_config.build_config(
        StackPorts.from_base(7700), envoy_config.descriptor_set_path(tmp_path), body_limits=limits
    )
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    (buffer,) = [f for f in manager["http_filters"] if f["name"] == "envoy.filters.http.buffer"]
    headroom = envoy_config.BODY_LIMIT_HEADROOM
    assert buffer["typed_config"]["max_request_bytes"] == 1000 + headroom  # the default: the proxy's routes
    for route in routes_of(config):
        if "route" not in route or route["route"]["cluster"] == "proxy":
            continue
        per_route = route["typed_per_filter_config"]["envoy.filters.http.buffer"]["buffer"]["max_request_bytes"]
        assert per_route == (3000 if route["route"]["cluster"] == "ingest" else 2000) + headroom


def test_envoys_own_replies_are_json_in_the_sdks_error_shape(tmp_path: Path) -> None:
    manager = build(tmp_path)["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    local_reply = manager["local_reply_config"]
    # Every refusal no earlier mapper shaped is OpenAI's error; a 200 (a console file) keeps its own body.
    catch_all = local_reply["mappers"][-1]
    comparison = catch_all["filter"]["status_code_filter"]["comparison"]
    assert (comparison["op"], comparison["value"]["default_value"]) == ("GE", 400)
    assert catch_all["body_format_override"]["json_format"]["error"]["message"] == "%LOCAL_REPLY_BODY%"
    assert catch_all["body_format_override"]["json_format"]["error"]["type"] == "invalid_request_error"
    assert "body_format" not in local_reply
    # Bedrock paths get Bedrock's shape, with the exception name boto3 reads.
    bedrock = [mapper for mapper in local_reply["mappers"] if "/bedrock/" in json.dumps(mapper["filter"])]
    assert [mapper["headers_to_add"][0]["header"]["value"] for mapper in bedrock] == [
        "ServiceUnavailableException",
        "ValidationException",
    ]
    assert bedrock[1]["body_format_override"]["json_format"]["message"] == "%LOCAL_REPLY_BODY%"


def test_access_log_is_json_lines_without_credentials(tmp_path: Path) -> None:
    config = envoy_config.build_config(
        StackPorts.from_base(7700), envoy_config.descriptor_set_path(tmp_path), access_log=tmp_path / "access.log"
    )
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    (log,) = manager["access_log"]
    assert log["typed_config"]["path"] == str(tmp_path / "access.log")
    fields = log["typed_config"]["log_format"]["json_format"]
    assert {"method", "path", "status", "duration_ms", "upstream_cluster", "request_id", "bytes_received"} <= set(
        fields
    )
    text = yaml.safe_dump(fields).lower()
    for secret_header in ("authorization", "candela-auth", "helicone-auth", "x-api-key", "cookie", "%req(:path)%"):
        assert secret_header not in text


def test_grpc_clusters_speak_http2_and_the_proxy_http1(tmp_path: Path) -> None:
    clusters = {cluster["name"]: cluster for cluster in build(tmp_path)["static_resources"]["clusters"]}
    assert set(clusters) == {"auth", "ingest", "query", "prompts", "proxy"}
    for name, cluster in clusters.items():
        options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        expected = "http_protocol_options" if name == "proxy" else "http2_protocol_options"
        assert list(options["explicit_http_config"]) == [expected]


def test_transcoder_serves_the_rest_mappings_before_the_router(tmp_path: Path) -> None:
    config = build(tmp_path)
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert manager["codec_type"] == "AUTO"
    filters = manager["http_filters"]
    # gRPC-Web (the console) becomes gRPC first. The body limit comes after the transcoder, so a REST call
    # is measured as the gRPC call it became.
    assert [f["name"] for f in filters] == [
        "envoy.filters.http.grpc_web",
        "envoy.filters.http.grpc_json_transcoder",
        "envoy.filters.http.buffer",
        "envoy.filters.http.router",
    ]
    transcoder = filters[1]["typed_config"]
    assert Path(transcoder["proto_descriptor"]).is_file()
    assert transcoder["services"] == [
        "candela.auth.v1.AuthService",
        "candela.query.v1.QueryService",
        "candela.prompts.v1.PromptsService",
    ]
    assert transcoder["print_options"] == {
        "add_whitespace": False,
        "always_print_primitive_fields": True,
        "always_print_enums_as_ints": False,
        "preserve_proto_field_names": False,
    }


def test_dump_is_yaml_of_the_same_config(tmp_path: Path) -> None:
    config = build(tmp_path)
    assert yaml.safe_load(envoy_config.dump(config)) == config
