"""The generated Envoy gateway config: its shape, Envoy's own validation, and real routing through it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import yaml
from aiohttp import web

from candela.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from candela.query.v1 import query_service_pb2, query_service_pb2_grpc
from candela_stack import envoy_config
from candela_stack.binaries import envoy_binary
from candela_stack.ports import StackPorts, pick_free_port_base
from candela_stack.probes import http_ok
from candela_stack.processes import Supervisor


def build(tmp_path: Path, ports: StackPorts | None = None) -> dict[str, Any]:
    ports = ports or StackPorts.from_base(7700)
    return envoy_config.build_config(ports, envoy_config.descriptor_set_path(tmp_path))


def routes_of(config: dict[str, Any]) -> list[dict[str, Any]]:
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    routes: list[dict[str, Any]] = manager["route_config"]["virtual_hosts"][0]["routes"]
    return routes


@pytest.mark.unit
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


@pytest.mark.unit
def test_grpc_prefixes_route_to_their_services_and_the_rest_to_the_proxy(tmp_path: Path) -> None:
    routes = routes_of(build(tmp_path))
    assert [(route["match"]["prefix"], route["route"]["cluster"]) for route in routes] == [
        ("/candela.auth.v1.AuthService/", "auth"),
        ("/candela.ingest.v1.IngestService/", "ingest"),
        ("/candela.query.v1.QueryService/", "query"),
        ("/candela.prompts.v1.PromptsService/", "prompts"),
        ("/", "proxy"),
    ]
    proxy = routes[-1]["route"]
    assert proxy["timeout"] == "0s"
    assert proxy["idle_timeout"] == "600s"


@pytest.mark.unit
def test_grpc_clusters_speak_http2_and_the_proxy_http1(tmp_path: Path) -> None:
    clusters = {cluster["name"]: cluster for cluster in build(tmp_path)["static_resources"]["clusters"]}
    assert set(clusters) == {"auth", "ingest", "query", "prompts", "proxy"}
    for name, cluster in clusters.items():
        options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        expected = "http_protocol_options" if name == "proxy" else "http2_protocol_options"
        assert list(options["explicit_http_config"]) == [expected]


@pytest.mark.unit
def test_transcoder_serves_the_rest_mappings_before_the_router(tmp_path: Path) -> None:
    config = build(tmp_path)
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert manager["codec_type"] == "AUTO"
    filters = manager["http_filters"]
    assert [f["name"] for f in filters] == ["envoy.filters.http.grpc_json_transcoder", "envoy.filters.http.router"]
    transcoder = filters[0]["typed_config"]
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


@pytest.mark.unit
def test_dump_is_yaml_of_the_same_config(tmp_path: Path) -> None:
    config = build(tmp_path)
    assert yaml.safe_load(envoy_config.dump(config)) == config


@pytest.mark.integration
def test_envoy_accepts_the_generated_config(tmp_path: Path) -> None:
    path = envoy_config.write(build(tmp_path), tmp_path / "envoy.yaml")
    envoy_config.validate(envoy_binary(), path)


@pytest.mark.integration
def test_envoy_rejects_a_broken_config_with_its_reason(tmp_path: Path) -> None:
    config = build(tmp_path)
    routes_of(config)[0]["route"]["cluster"] = "no-such-cluster"
    path = envoy_config.write(config, tmp_path / "envoy.yaml")
    with pytest.raises(envoy_config.EnvoyConfigError, match="no-such-cluster"):
        envoy_config.validate(envoy_binary(), path)


# --- Real routing: Envoy in front of grpcio servers (generated stubs) and an HTTP stand-in proxy. ---


class FakeAuth(auth_service_pb2_grpc.AuthServiceServicer):
    """Answers CreateOrganization with the service token it saw; refuses the rest."""

    async def CreateOrganization(
        self, request: auth_service_pb2.CreateOrganizationRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> auth_service_pb2.CreateOrganizationResponse:
        token = dict(context.invocation_metadata() or ()).get("candela-service-token", "")
        return auth_service_pb2.CreateOrganizationResponse(
            organization=auth_service_pb2.Organization(id=f"org-for-{token}", name=request.name)
        )

    async def CreateApiKey(
        self, request: auth_service_pb2.CreateApiKeyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> auth_service_pb2.CreateApiKeyResponse:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not an admin key")

    async def Authenticate(
        self, request: auth_service_pb2.AuthenticateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> auth_service_pb2.AuthenticateResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not needed here")


class FakeQuery(query_service_pb2_grpc.QueryServiceServicer):
    """Echoes the request id of GetRequest and the limit of QueryRequests."""

    async def QueryRequests(
        self, request: query_service_pb2.QueryRequestsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> query_service_pb2.QueryRequestsResponse:
        await context.send_initial_metadata((("x-limit-seen", str(request.limit)),))
        return query_service_pb2.QueryRequestsResponse()

    async def GetRequest(
        self, request: query_service_pb2.GetRequestRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> query_service_pb2.GetRequestResponse:
        return query_service_pb2.GetRequestResponse(request_body=f"body of {request.request_id}")


async def stand_in_proxy(request: web.Request) -> web.StreamResponse:
    """Streams two chunks half a second apart, like an LLM stream, and says which path it got."""
    response = web.StreamResponse(headers={"content-type": "text/event-stream", "x-proxy-path": request.path})
    await response.prepare(request)
    await response.write(b"data: first\n\n")
    await asyncio.sleep(0.5)
    await response.write(b"data: second\n\n")
    await response.write_eof()
    return response


@pytest.fixture
def gateway_ports() -> StackPorts:
    return StackPorts.from_base(pick_free_port_base())


@pytest.fixture
def envoy_process(tmp_path: Path, gateway_ports: StackPorts) -> Iterator[Supervisor]:
    supervisor = Supervisor(tmp_path / "logs")
    config_path = envoy_config.write(
        envoy_config.build_config(gateway_ports, envoy_config.descriptor_set_path(tmp_path)), tmp_path / "envoy.yaml"
    )
    envoy = envoy_binary()
    process = supervisor.start("envoy", envoy_config.server_argv(envoy, config_path, base_id=gateway_ports.base))
    try:
        supervisor.wait_ready(
            process,
            lambda: http_ok(f"http://127.0.0.1:{gateway_ports.envoy_admin}/ready", expect_body=b"LIVE"),
            timeout=20,
        )
        yield supervisor
    finally:
        supervisor.stop_all()


@pytest.fixture
async def upstreams(gateway_ports: StackPorts) -> AsyncIterator[None]:
    auth_server = grpc.aio.server()
    # The routing stand-ins script a few RPCs; the generated bases answer UNIMPLEMENTED for the rest.
    auth_service_pb2_grpc.add_AuthServiceServicer_to_server(FakeAuth(), auth_server)  # type: ignore[abstract]
    auth_server.add_insecure_port(f"127.0.0.1:{gateway_ports.auth_grpc}")
    query_server = grpc.aio.server()
    query_service_pb2_grpc.add_QueryServiceServicer_to_server(FakeQuery(), query_server)  # type: ignore[abstract]
    query_server.add_insecure_port(f"127.0.0.1:{gateway_ports.query_grpc}")
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", stand_in_proxy)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", gateway_ports.proxy_http)
    await auth_server.start()
    await query_server.start()
    await site.start()
    try:
        yield
    finally:
        await runner.cleanup()
        await auth_server.stop(0)
        await query_server.stop(0)


@pytest.mark.integration
@pytest.mark.usefixtures("upstreams", "envoy_process")
async def test_gateway_routes_rest_grpc_and_proxy_traffic(gateway_ports: StackPorts) -> None:
    gateway = f"http://127.0.0.1:{gateway_ports.gateway}"
    async with aiohttp.ClientSession() as session:
        # REST -> transcoder -> the auth cluster (matched on the transcoded gRPC path), metadata passed on.
        async with session.post(
            f"{gateway}/v1/organizations", json={"name": "acme"}, headers={"candela-service-token": "tok"}
        ) as response:
            assert response.status == 200
            assert await response.json() == {"organization": {"id": "org-for-tok", "name": "acme"}}
        # A gRPC error becomes its HTTP status with a JSON body.
        async with session.post(f"{gateway}/v1/api-keys", json={"organizationId": "o"}) as response:
            assert response.status == 403
            assert (await response.json())["message"] == "not an admin key"
        # REST -> the query cluster, camelCase JSON, path parameters.
        async with session.get(f"{gateway}/v1/request/abc-123") as response:
            assert await response.json() == {"requestBody": "body of abc-123", "responseBody": ""}
        async with session.post(f"{gateway}/v1/request/query", json={"limit": 7}) as response:
            assert response.headers["x-limit-seen"] == "7"
            assert await response.json() == {"requests": []}
        # Everything else streams from the proxy unbuffered: the first chunk arrives before the second exists.
        for path in ("/v1/chat/completions", "/v1/messages", "/anthropic/v1/messages"):
            began = time.monotonic()
            async with session.post(f"{gateway}{path}", json={"stream": True}) as response:
                assert response.headers["x-proxy-path"] == path
                first = await response.content.readuntil(b"\n\n")
                first_after = time.monotonic() - began
                rest = await response.read()
            assert (first, rest) == (b"data: first\n\n", b"data: second\n\n")
            assert first_after < 0.4, f"the first chunk took {first_after:.2f} s: Envoy buffered the stream"

    # Native gRPC (h2c) through the same listener.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway_ports.gateway}") as channel:
        stub = auth_service_pb2_grpc.AuthServiceStub(channel)
        reply = await stub.CreateOrganization(
            auth_service_pb2.CreateOrganizationRequest(name="grpc"),
            metadata=(("candela-service-token", "grpc-token"),),
            timeout=5,
        )
    assert reply.organization.id == "org-for-grpc-token"
