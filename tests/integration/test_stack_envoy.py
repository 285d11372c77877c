"""The generated Envoy gateway config: Envoy's own validation, and real routing through it (its shape, read as
data, is tests/unit/test_stack_envoy_config.py)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web

from candela.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from candela.query.v1 import query_service_pb2, query_service_pb2_grpc
from candela_stack import envoy_config
from candela_stack.binaries import envoy_binary
from candela_stack.ports import StackPorts, pick_free_port_base
from candela_stack.probes import http_ok
from candela_stack.processes import Supervisor
from tests.unit.test_stack_envoy_config import build, routes_of


@pytest.mark.integration
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"access_log": Path("access.log")},
        {"body_limits": envoy_config.BodyLimits(proxy=1024, grpc=2048, ingest=4096)},
        {"access_log": Path("access.log"), "otlp_port": 4317, "max_downstream_connections": 10},
    ],
    ids=["defaults", "access-log", "body-limits", "everything"],
)
def test_envoy_accepts_the_generated_config(tmp_path: Path, options: dict[str, Any]) -> None:
    if "access_log" in options:
        options = {**options, "access_log": tmp_path / options["access_log"]}
    config = envoy_config.build_config(
        StackPorts.from_base(7700), envoy_config.descriptor_set_path(tmp_path), **options
    )
    envoy_config.validate(envoy_binary(), envoy_config.write(config, tmp_path / "envoy.yaml"))


@pytest.mark.integration
def test_envoy_rejects_a_broken_config_with_its_reason(tmp_path: Path) -> None:
    config = build(tmp_path)
    routes_of(config)[0]["route"]["cluster"] = "no-such-cluster"
    path = envoy_config.write(config, tmp_path / "envoy.yaml")
    with pytest.raises(envoy_config.EnvoyConfigError, match="no-such-cluster"):
        envoy_config.validate(envoy_binary(), path)


# --- Real routing: Envoy in front of grpcio servers (generated stubs) and an HTTP stand-in proxy. ---


class FakeAuth(auth_service_pb2_grpc.AuthServiceServicer):
    """Answers CreateOrganization with the service token it saw; GetOrganization and UpdateOrganization
    always fail UNAVAILABLE (counting their attempts); refuses the rest."""

    def __init__(self) -> None:
        self.attempts: Counter[str] = Counter()

    async def GetOrganization(
        self, request: auth_service_pb2.GetOrganizationRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> auth_service_pb2.GetOrganizationResponse:
        self.attempts["GetOrganization"] += 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, "briefly down")

    async def UpdateOrganization(
        self, request: auth_service_pb2.UpdateOrganizationRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> auth_service_pb2.UpdateOrganizationResponse:
        self.attempts["UpdateOrganization"] += 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, "briefly down")

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
    config = envoy_config.build_config(
        gateway_ports,
        envoy_config.descriptor_set_path(tmp_path),
        access_log=tmp_path / "access.log",
        body_limits=SMALL_LIMITS,
    )
    config_path = envoy_config.write(config, tmp_path / "envoy.yaml")
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


SMALL_LIMITS = envoy_config.BodyLimits(proxy=64 * 1024, grpc=64 * 1024, ingest=64 * 1024)
"""Body limits small enough for a test to exceed cheaply."""


@pytest.fixture
def fake_auth() -> FakeAuth:
    return FakeAuth()  # type: ignore[abstract]


@pytest.fixture
async def upstreams(gateway_ports: StackPorts, fake_auth: FakeAuth) -> AsyncIterator[None]:
    auth_server = grpc.aio.server()
    # The routing stand-ins script a few RPCs; the generated bases answer UNIMPLEMENTED for the rest.
    auth_service_pb2_grpc.add_AuthServiceServicer_to_server(fake_auth, auth_server)
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
            assert await response.json() == {
                "requestBody": "body of abc-123",
                "responseBody": "",
                "requestBodyBytes": "",
                "responseBodyBytes": "",
                "scores": {},
            }
        async with session.post(f"{gateway}/v1/request/query", json={"limit": 7}) as response:
            assert response.headers["x-limit-seen"] == "7"
            assert await response.json() == {"requests": [], "scores": {}}
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


@pytest.mark.integration
@pytest.mark.usefixtures("upstreams", "envoy_process")
async def test_gateway_retries_idempotent_rpcs_only(gateway_ports: StackPorts, fake_auth: FakeAuth) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway_ports.gateway}") as channel:
        stub = auth_service_pb2_grpc.AuthServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as read:
            await stub.GetOrganization(auth_service_pb2.GetOrganizationRequest(), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as write:
            await stub.UpdateOrganization(auth_service_pb2.UpdateOrganizationRequest(), timeout=5)
        assert read.value.code() == write.value.code() == grpc.StatusCode.UNAVAILABLE
    # The read is tried 1 + num_retries times; the write exactly once (a retried write could apply twice).
    assert fake_auth.attempts == {
        "GetOrganization": 1 + envoy_config.RETRY_POLICY["num_retries"],
        "UpdateOrganization": 1,
    }


async def _answer_to_headers_alone(port: int, head: bytes) -> tuple[bytes, float]:
    """What the gateway answers to request headers sent without any of the body they announce, and how fast."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    try:
        writer.write(head)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=10)
        elapsed = time.monotonic() - started
        head_rest = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        length = next(
            int(line.split(b":", 1)[1])
            for line in head_rest.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        body = await asyncio.wait_for(reader.readexactly(length), timeout=10)
        return status_line + head_rest + body, elapsed
    finally:
        writer.close()


@pytest.mark.integration
@pytest.mark.usefixtures("upstreams", "envoy_process")
async def test_a_declared_content_length_above_the_limit_is_refused_before_any_body(
    gateway_ports: StackPorts,
) -> None:
    envoy_limit = SMALL_LIMITS.proxy + envoy_config.BODY_LIMIT_HEADROOM
    for path, declared in (("/v1/chat/completions", 10**12), ("/anthropic/v1/messages", envoy_limit + 1)):
        head = (
            f"POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared}\r\n\r\n"
        ).encode()
        answer, elapsed = await _answer_to_headers_alone(gateway_ports.gateway, head)
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
        # At once, not after a timeout waiting for a body that never comes.
        assert elapsed < 2.0, f"the 413 took {elapsed:.1f} s"
        body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        message = f"the request body is larger than the {envoy_limit}-byte limit"
        if path.startswith("/anthropic"):
            assert body == {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
        else:
            assert body["error"] == {
                "message": message,
                "type": "invalid_request_error",
                "code": "request_payload_too_large",
            }
    # A declared length at the limit is not refused by the route: the proxy gets it once it has arrived.
    at_limit = b'{"pad": "' + b"x" * (envoy_limit - 12) + b'"}'
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{gateway_ports.gateway}/v1/chat/completions", data=at_limit) as response,
    ):
        assert response.status == 200
        assert response.headers["x-proxy-path"] == "/v1/chat/completions"


@pytest.mark.integration
@pytest.mark.usefixtures("upstreams", "envoy_process")
async def test_gateway_refuses_oversized_bodies_and_unknown_services_clearly(gateway_ports: StackPorts) -> None:
    gateway = f"http://127.0.0.1:{gateway_ports.gateway}"
    envoy_limit = SMALL_LIMITS.proxy + envoy_config.BODY_LIMIT_HEADROOM
    too_big = b'{"pad": "' + b"x" * envoy_limit + b'"}'
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{gateway}/v1/chat/completions", data=too_big, headers={"content-type": "application/json"}
        ) as response:
            assert response.status == 413
            assert response.content_type == "application/json"
            assert await response.json() == {
                "error": {
                    "message": f"the request body is larger than the {envoy_limit}-byte limit",
                    "type": "invalid_request_error",
                    "code": "request_payload_too_large",
                }
            }

        async def chunked() -> AsyncIterator[bytes]:
            for start in range(0, len(too_big), 16 * 1024):
                yield too_big[start : start + 16 * 1024]

        # Sent chunked (no Content-Length), the body is refused once it outgrows the buffer, in the same shape.
        async with session.post(
            f"{gateway}/v1/chat/completions", data=chunked(), headers={"content-type": "application/json"}
        ) as response:
            assert response.status == 413
            assert await response.json() == {
                "error": {
                    "message": "Payload Too Large",
                    "type": "invalid_request_error",
                    "code": "request_payload_too_large",
                }
            }
        async with session.post(
            f"{gateway}/anthropic/v1/messages", data=too_big, headers={"content-type": "application/json"}
        ) as response:
            assert response.status == 413
            body = await response.json()
            assert body["type"] == "error"
            assert body["error"]["type"] == "invalid_request_error"
        # A REST call is limited as the gRPC call it becomes. The padding is a field the request has (the
        # transcoder drops an unknown one as it streams, and the upstream may answer before the limit is hit).
        known_field = b'{"cursor": "' + b"x" * envoy_limit + b'"}'
        async with session.post(
            f"{gateway}/v1/request/query", data=known_field, headers={"content-type": "application/json"}
        ) as response:
            assert response.status == 413
            assert response.content_type == "application/json"
            assert (await response.json())["error"]["code"] == (
                "grpc_json_transcode_failure{request_buffer_size_limit_reached}"
            )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway_ports.gateway}") as channel:
        # A gRPC message above the limit: RESOURCE_EXHAUSTED-like refusal, not a hang or a reset.
        stub = query_service_pb2_grpc.QueryServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as oversized:
            await stub.GetRequest(query_service_pb2.GetRequestRequest(request_id="x" * 200_000), timeout=5)
        assert oversized.value.code() != grpc.StatusCode.OK
        assert "Payload Too Large" in (oversized.value.details() or "")
        # A service the gateway does not serve: UNIMPLEMENTED from Envoy, with a reason.
        unknown = channel.unary_unary(
            "/candela.nope.v1.NopeService/Get", request_serializer=bytes, response_deserializer=bytes
        )
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await unknown(b"", timeout=5)
        assert failure.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "no such gRPC service" in (failure.value.details() or "")
        # A known service, an unknown method: the service itself says UNIMPLEMENTED.
        missing = channel.unary_unary(
            "/candela.query.v1.QueryService/NoSuchMethod", request_serializer=bytes, response_deserializer=bytes
        )
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await missing(b"", timeout=5)
        assert failure.value.code() == grpc.StatusCode.UNIMPLEMENTED


def _health(admin_port: int) -> dict[str, str]:
    """Cluster -> its endpoint's health per Envoy's admin /clusters ("healthy" or the failed checks)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/clusters?format=json", timeout=5) as reply:
        statuses = json.load(reply)["cluster_statuses"]
    health: dict[str, str] = {}
    for cluster in statuses:
        for host in cluster.get("host_statuses", []):
            status = host["health_status"]
            failed = sorted(key for key, value in status.items() if value is True)
            health[cluster["name"]] = ",".join(failed) or status.get("eds_health_status", "HEALTHY").lower()
    return health


async def _wait_health(admin_port: int, cluster: str, healthy: bool, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        state = await asyncio.to_thread(_health, admin_port)
        if ("failed_active_health_check" not in state[cluster]) == healthy:
            return
        assert time.monotonic() < deadline, f"{cluster} still {state[cluster]!r}, wanted healthy={healthy}"
        await asyncio.sleep(0.2)


@pytest.mark.integration
@pytest.mark.usefixtures("upstreams", "envoy_process")
async def test_health_checks_follow_each_upstream(gateway_ports: StackPorts) -> None:
    admin = gateway_ports.envoy_admin
    # Running stand-ins serve grpc.health.v1 only if registered: the stand-in proxy answers /healthz
    # (its catch-all says 200); auth and query do not serve health, ingest and prompts are not running.
    await _wait_health(admin, "proxy", healthy=True)
    for absent in ("ingest", "prompts"):
        await _wait_health(admin, absent, healthy=False)
