"""No client-named target reaches inside the gateway's network. Every port of the running stack (and cloud
metadata), by every loopback spelling, through Candela-Target-Url and Candela-Fallbacks, with and without a
query, is a 403 or a 400 in the provider's error shape and nothing reaches the stand-in provider; a name
that rebinds to loopback between the check and the connection is refused where it connects, answered and
logged; a local provider the operator allowed still works with the SDK and is logged."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import anthropic
import httpx
import openai
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from candela.query.v1 import query_service_pb2_grpc
from candela_proxy.app import build_deps, create_app
from candela_proxy.config import ProxyConfig
from candela_proxy.targets import AllowList, PolicyResolver, TargetSession
from candela_runtime.config import load_config
from candela_stack.stack import Bootstrap, Component, Stack
from tests.e2e.conftest import wait_for_logged_request
from tests.e2e.proxy_support import fake_requests, free_port, services, start_proxy

pytestmark = pytest.mark.e2e

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}
LOOPBACK_SPELLINGS = ("127.0.0.1", "localhost", "[::1]")
QUERY_SUFFIXES = ("", "?", "?x=1")
METADATA_TARGETS = (
    "http://169.254.169.254",
    "http://169.254.169.254/latest/meta-data",
    "http://[fd00:ec2::254]",
    "http://[::ffff:169.254.169.254]",
)


def _headers(admin: Bootstrap, marker: str, **extra: str) -> dict[str, str]:
    return {"Candela-Auth": f"Bearer {admin.api_key}", "Authorization": "Bearer sk-x", "x-test-marker": marker, **extra}


def _targets(stack: Stack) -> list[str]:
    """Every port the stack binds (or may: every writer slot, SeaweedFS's +10000 gRPC ports) and its Postgres,
    by each loopback spelling, with and without a query; plus the metadata service and IPv6 forms of loopback."""
    named = stack.ports.named()
    assert {"clickhouse_http", "seaweed_filer", "envoy_admin", "fake_provider", "redis", "kafka"} <= set(named)
    postgres = urlsplit(stack.postgres_dsn)
    assert postgres.hostname in {"127.0.0.1", "localhost"}
    ports = sorted({*stack.ports.all_bound(), postgres.port or 5432})
    assert set(named.values()) <= set(ports)
    targets = [
        f"http://{host}:{port}{suffix}" for host in LOOPBACK_SPELLINGS for port in ports for suffix in QUERY_SUFFIXES
    ]
    clickhouse = stack.ports.clickhouse_http
    targets += [
        *METADATA_TARGETS,
        f"http://[::ffff:127.0.0.1]:{clickhouse}",
        f"http://[::ffff:7f00:1]:{clickhouse}",
        f"http://0.0.0.0:{clickhouse}",
        f"https://127.0.0.1:{clickhouse}",
    ]
    return targets


def test_no_port_of_the_stack_and_no_metadata_address_is_reachable_through_a_target(
    stack: Stack, admin: Bootstrap
) -> None:
    marker = uuid.uuid4().hex
    answers: list[tuple[str, str, httpx.Response]] = []
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as client:
        for target in _targets(stack):
            for header, value in (
                ("Candela-Target-Url", target),
                ("Candela-Fallbacks", json.dumps([{"target-url": target, "onCodes": [200]}])),
            ):
                response = client.post(
                    "/v1/chat/completions", json=CHAT, headers=_headers(admin, marker, **{header: value})
                )
                answers.append((header, target, response))
    assert len(answers) > 600
    for header, target, response in answers:
        expected = (400, "invalid_candela_header") if "?" in target else (403, "target_not_allowed")
        error = response.json()["error"]
        assert (response.status_code, error["code"]) == expected, (header, target, response.text)
        assert error["type"] == ("invalid_request_error" if expected[0] == 400 else "permission_error")
        assert header.lower() in error["message"].lower() or "does not send requests to" in error["message"]
        # A refusal has an id too (Helicone-Id as well), naming no log: nothing was sent or logged.
        assert response.headers["helicone-id"] == response.headers["candela-id"]
    # The main call of each Candela-Fallbacks request would have gone to the stand-in had it been admitted.
    assert fake_requests(stack, x_test_marker=marker) == []


def test_the_sdks_get_their_own_permission_and_bad_request_errors(
    stack: Stack, admin: Bootstrap, closing: contextlib.ExitStack
) -> None:
    marker = uuid.uuid4().hex
    ports = stack.ports
    openai_client = closing.enter_context(
        openai.OpenAI(
            base_url=f"{stack.gateway_url}/v1",
            api_key="sk-x",
            default_headers={
                "Candela-Auth": f"Bearer {admin.api_key}",
                "Candela-Target-Url": f"http://127.0.0.1:{ports.clickhouse_http}",
                "x-test-marker": marker,
            },
            max_retries=0,
        )
    )
    with pytest.raises(openai.PermissionDeniedError) as refused:
        openai_client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.code == "target_not_allowed"

    def anthropic_client(target: str) -> anthropic.Anthropic:
        return closing.enter_context(
            anthropic.Anthropic(
                base_url=f"{stack.gateway_url}/anthropic",
                api_key="sk-ant-x",
                default_headers={
                    "Candela-Auth": f"Bearer {admin.api_key}",
                    "Candela-Target-Url": target,
                    "x-test-marker": marker,
                },
                max_retries=0,
            )
        )

    def ask(client: anthropic.Anthropic) -> None:
        client.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}])

    with pytest.raises(anthropic.PermissionDeniedError) as denied:
        ask(anthropic_client(f"http://localhost:{ports.envoy_admin}"))
    assert "'type': 'permission_error'" in str(denied.value)
    assert "'localhost'" in str(denied.value)
    with pytest.raises(anthropic.BadRequestError, match="query string"):
        ask(anthropic_client(f"http://localhost:{ports.envoy_admin}/server_info?"))
    assert fake_requests(stack, x_test_marker=marker) == []


@pytest.mark.parametrize(
    ("target", "complaint"),
    [
        ("http://[::1", "is not a valid URL"),
        ("http://user:s3cr3t@127.0.0.1:1", "user:password@"),
        ("http://127.0.0.1:1#/v1", "fragment"),
        ("http://127.1:1", "not a valid IP address"),
    ],
)
def test_malformed_targets_are_400s_in_target_url_and_fallbacks(
    stack: Stack, admin: Bootstrap, target: str, complaint: str
) -> None:
    marker = uuid.uuid4().hex
    for header, value in (
        ("Candela-Target-Url", target),
        ("Candela-Fallbacks", json.dumps([{"target-url": target}])),
    ):
        # Authorization is sent too: with userinfo in the target that combination was a 500.
        response = httpx.post(
            f"{stack.gateway_url}/v1/chat/completions",
            json=CHAT,
            headers=_headers(admin, marker, **{header: value}),
            timeout=30,
        )
        assert response.status_code == 400, (header, response.text)
        error = response.json()["error"]
        assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_candela_header")
        assert header.lower() in error["message"].lower()  # Envoy passes header names in lower case
        assert complaint in error["message"]
        assert "s3cr3t" not in error["message"], "a credential in the target is not echoed"
    assert fake_requests(stack, x_test_marker=marker) == []


def test_an_allowed_local_provider_works_with_the_sdk_and_is_logged(
    stack: Stack,
    admin: Bootstrap,
    query_stub: query_service_pb2_grpc.QueryServiceStub,
    local_target_proxy: str,
    closing: contextlib.ExitStack,
) -> None:
    assert stack.fake_provider_url is not None
    marker = uuid.uuid4().hex
    client = closing.enter_context(
        openai.OpenAI(
            base_url=f"{local_target_proxy}/v1",
            api_key="sk-x",
            default_headers={
                "Candela-Auth": f"Bearer {admin.api_key}",
                "Candela-Target-Url": stack.fake_provider_url,
                "x-test-marker": marker,
            },
            max_retries=0,
        )
    )
    raw = client.chat.completions.with_raw_response.create(
        model="llama-3.1-8b-instant", messages=[{"role": "user", "content": "Say hello"}]
    )
    assert raw.parse().choices[0].message.content
    assert len(fake_requests(stack, x_test_marker=marker)) == 1
    logged = wait_for_logged_request(query_stub, admin.api_key, raw.headers["candela-id"]).request
    host_port = stack.fake_provider_url.removeprefix("http://")
    assert (logged.status_code, logged.provider, logged.target_url) == (200, host_port, stack.fake_provider_url)

    # The entry is that host:port, nothing more: the same port by another name, another port, are refused.
    fake_port = stack.ports.fake_provider
    for target in (f"http://localhost:{fake_port}", f"http://127.0.0.1:{stack.ports.clickhouse_http}"):
        refused = httpx.post(
            f"{local_target_proxy}/v1/chat/completions",
            json=CHAT,
            headers=_headers(admin, marker, **{"Candela-Target-Url": target}),
            timeout=30,
        )
        assert (refused.status_code, refused.json()["error"]["code"]) == (403, "target_not_allowed"), target
    assert len(fake_requests(stack, x_test_marker=marker)) == 1


def test_only_mode_sends_custom_targets_only_to_the_listed_hosts(
    stack: Stack, admin: Bootstrap, tmp_path: Path
) -> None:
    assert stack.fake_provider_url is not None
    marker = uuid.uuid4().hex
    listed = stack.fake_provider_url.removeprefix("http://")
    with services() as started:
        proxy, url = start_proxy(stack, tmp_path, CANDELA_TARGET_HOSTS=listed, CANDELA_TARGET_HOSTS_ONLY="true")
        started.append(proxy)

        def call(target: str) -> httpx.Response:
            headers = _headers(admin, marker, **{"Candela-Target-Url": target})
            return httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers=headers, timeout=30)

        assert call(stack.fake_provider_url).status_code == 200
        # A public host is refused before it is even looked up (this machine has no route out anyway).
        refused = call("https://api.groq.com/openai")
        assert (refused.status_code, refused.json()["error"]["code"]) == (403, "target_not_allowed")
        assert "only to the hosts" in refused.json()["error"]["message"]
        assert call(f"http://127.0.0.1:{stack.ports.clickhouse_http}").status_code == 403
    assert len(fake_requests(stack, x_test_marker=marker)) == 1


class RebindingResolver(AbstractResolver):
    """Answers a public address the first time a name is looked up and loopback every time after."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        # 8.8.8.8 is only ever checked, never connected to: the connector's lookup is the second one.
        address = "8.8.8.8" if len(self.asked) == 1 else "127.0.0.1"
        return [ResolveResult(hostname=host, host=address, port=port, family=socket.AF_INET, proto=6, flags=0)]

    async def close(self) -> None:
        pass


@contextlib.asynccontextmanager
async def in_process_proxy(stack: Stack, workdir: Path, resolver: AbstractResolver) -> AsyncIterator[str]:
    """The real proxy application (real auth, ingest, Redis), whose targets' lookups go to ``resolver``."""
    port = free_port()
    env = {**stack.service_env(Component.PROXY), "CANDELA_HTTP_PORT": str(port), "CANDELA_SPOOL_DIR": str(workdir)}
    config = load_config(ProxyConfig, env)
    async with build_deps(config) as deps:
        targets = TargetSession(PolicyResolver(AllowList(), resolver), 5, 30)
        runner = web.AppRunner(create_app(config, dataclasses.replace(deps, targets=targets), tracing=False))
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", port).start()
            yield f"http://127.0.0.1:{port}"
        finally:
            await runner.cleanup()
            await targets.close()


# The proxy's application keeps two plain string keys ("ready", "handler"); aiohttp only recommends AppKey.
@pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")
async def test_a_name_rebinding_to_loopback_is_refused_where_it_connects_answered_and_logged(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub, tmp_path: Path
) -> None:
    marker = uuid.uuid4().hex
    resolver = RebindingResolver()
    target = f"http://rebind.example:{stack.ports.fake_provider}"
    async with in_process_proxy(stack, tmp_path, resolver) as url, httpx.AsyncClient(timeout=30) as client:
        response = await client.post(
            f"{url}/v1/chat/completions", json=CHAT, headers=_headers(admin, marker, **{"Candela-Target-Url": target})
        )
    assert resolver.asked == ["rebind.example", "rebind.example"], "checked at admission, then where it connects"
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("permission_error", "target_not_allowed")
    assert "127.0.0.1" not in error["message"]
    assert fake_requests(stack, x_test_marker=marker) == [], "nothing reached the loopback address"
    logged = wait_for_logged_request(query_stub, admin.api_key, response.headers["candela-id"]).request
    assert (logged.status_code, logged.target_url, logged.provider) == (403, target, target.removeprefix("http://"))
    assert "refused where it connects" in logged.error
    assert [(attempt.target_url, attempt.status_code) for attempt in logged.attempts] == [(target, 0)]
