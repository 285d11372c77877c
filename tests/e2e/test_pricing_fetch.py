"""An organization's pricing is fetched off its requests' answers: the real proxy application (real auth,
ingest, Redis) whose AuthService pricing answers come late. A first request is answered in the provider's
time, not the provider's plus AuthService's, and priced with the organization's override once the fetch is
in; a fetch still under way after CANDELA_PRICING_WAIT_S leaves that request's log unpriced (no cost header,
no silent genai-prices cost) without holding its answer, and the fetch then prices the requests that follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import grpc
import httpx
import pytest
from aiohttp import web

from candela.auth.v1 import auth_service_pb2 as auth_pb
from candela.auth.v1 import auth_service_pb2_grpc
from candela.logs.v1 import log_record_pb2
from candela.query.v1 import query_service_pb2_grpc
from candela_proxy.app import build_deps, create_app
from candela_proxy.config import ProxyConfig
from candela_proxy.org_pricing import PricingDirectory
from candela_runtime.config import load_config
from candela_runtime.security import service_metadata
from candela_stack.stack import Component, Stack
from tests.e2e.conftest import bearer, wait_for_logged_request
from tests.e2e.proxy_support import free_port

pytestmark = [
    pytest.mark.e2e,
    # The proxy's application keeps two plain string keys ("ready", "handler"); aiohttp only recommends AppKey.
    pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning"),
]

INPUT_PRICE = Decimal("0.100001")
OUTPUT_PRICE = Decimal("0.3")


@pytest.fixture
def organization(stack: Stack, gateway_channel: grpc.Channel) -> tuple[str, str]:
    """A new organization whose gpt-4o-mini is overridden (no proxy has its pricing cached): its id and an
    ADMIN key."""
    auth = auth_service_pb2_grpc.AuthServiceStub(gateway_channel)
    internal = service_metadata(stack.service_token)
    organization = auth.CreateOrganization(
        auth_pb.CreateOrganizationRequest(name="Slow pricing"), metadata=internal, timeout=10
    ).organization
    secret: str = auth.CreateApiKey(
        auth_pb.CreateApiKeyRequest(
            organization_id=organization.id, name="admin", scopes=[auth_pb.API_KEY_SCOPE_ADMIN]
        ),
        metadata=internal,
        timeout=10,
    ).secret
    auth.SetPriceOverride(
        auth_pb.SetPriceOverrideRequest(
            price_override=auth_pb.PriceOverride(
                provider="openai",
                model="gpt-4o-mini",
                input_price_per_mtok=str(INPUT_PRICE),
                output_price_per_mtok=str(OUTPUT_PRICE),
            )
        ),
        metadata=bearer(secret),
        timeout=10,
    )
    return organization.id, secret


class _LatePricing:
    """AuthService's stub whose ListPriceOverrides answers come ``delay_s`` late (the rest pass through)."""

    def __init__(self, stub: auth_service_pb2_grpc.AuthServiceAsyncStub, delay_s: float) -> None:
        self._stub = stub
        self._delay_s = delay_s
        self.FollowPricing = stub.FollowPricing
        self.ListModelAliases = stub.ListModelAliases

    async def ListPriceOverrides(self, *args: object, **kwargs: object) -> auth_pb.ListPriceOverridesResponse:
        answer: auth_pb.ListPriceOverridesResponse = await self._stub.ListPriceOverrides(*args, **kwargs)  # type: ignore[arg-type]
        await asyncio.sleep(self._delay_s)
        return answer


@contextlib.asynccontextmanager
async def late_pricing_proxy(
    stack: Stack, workdir: Path, pricing_delay_s: float, pricing_wait_s: float
) -> AsyncIterator[tuple[str, PricingDirectory]]:
    """The real proxy application, following pricing notices, whose pricing fetches take ``pricing_delay_s``."""
    port = free_port()
    env = {
        **stack.service_env(Component.PROXY),
        "CANDELA_HTTP_PORT": str(port),
        "CANDELA_SPOOL_DIR": str(workdir),
        "CANDELA_PRICING_WAIT_S": str(pricing_wait_s),
    }
    config = load_config(ProxyConfig, env)
    async with build_deps(config) as deps:
        late = _LatePricing(auth_service_pb2_grpc.AuthServiceStub(deps.auth_channel), pricing_delay_s)
        directory = PricingDirectory(late, config.service_token)  # type: ignore[arg-type]
        directory.start()
        runner = web.AppRunner(create_app(config, dataclasses.replace(deps, pricing=directory), tracing=False))
        await runner.setup()
        try:
            await asyncio.wait_for(directory.until_watching(), 10)
            await web.TCPSite(runner, "127.0.0.1", port).start()
            yield f"http://127.0.0.1:{port}", directory
        finally:
            await runner.cleanup()
            await directory.close()


async def _chat(
    client: httpx.AsyncClient, url: str, key: str, stream: bool = False, **headers: str
) -> tuple[httpx.Response, float]:
    """One gpt-4o-mini chat completion answered "Hello" (one delta, so x-fake-delay-ms delays it once), and
    how long the client waited for the whole answer (a stream's end included)."""
    started = time.monotonic()
    response = await client.post(
        f"{url}/v1/chat/completions",
        json={"model": "gpt-4o-mini", "stream": stream, "messages": [{"role": "user", "content": "cost?"}]},
        headers={"Authorization": "Bearer sk-provider-key", "Candela-Auth": f"Bearer {key}", "x-fake-reply": "Hello"}
        | headers,
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    return response, elapsed


def _override_cost(record: log_record_pb2.LogRecord) -> Decimal:
    return (record.usage.prompt_tokens * INPUT_PRICE + record.usage.completion_tokens * OUTPUT_PRICE) / 1_000_000


async def _logged(
    query_stub: query_service_pb2_grpc.QueryServiceStub, key: str, request_id: str
) -> log_record_pb2.LogRecord:
    # The poll blocks: in a thread, so the proxy in this loop keeps shipping.
    response = await asyncio.to_thread(wait_for_logged_request, query_stub, key, request_id)
    return response.request


@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
async def test_a_first_request_waits_for_its_provider_not_for_its_pricing_and_is_priced_with_it(
    stack: Stack,
    organization: tuple[str, str],
    query_stub: query_service_pb2_grpc.QueryServiceStub,
    tmp_path: Path,
    stream: bool,
) -> None:
    organization_key = organization[1]
    # Fetched at admission, the pricing comes in while the provider answers: 2 s, not 2 s + 2 s.
    async with (
        late_pricing_proxy(stack, tmp_path, pricing_delay_s=2.0, pricing_wait_s=5.0) as (url, _),
        httpx.AsyncClient(timeout=30) as client,
    ):
        response, elapsed = await _chat(client, url, organization_key, stream, **{"x-fake-delay-ms": "2000"})
    assert 1.9 < elapsed < 3.2, f"answered in {elapsed:.2f} s: the pricing fetch was waited for after the provider"
    record = await _logged(query_stub, organization_key, response.headers["candela-id"])
    assert record.usage.prompt_tokens > 0
    assert Decimal(record.cost_usd) == _override_cost(record), "priced with the organization's override"
    if stream:
        assert b"[DONE]" in response.content
        assert "candela-cost-usd" not in response.headers, "a stream's headers leave before its cost is known"
    else:
        assert response.headers["candela-cost-usd"] == record.cost_usd


async def test_pricing_later_than_the_bound_leaves_that_log_unpriced_not_the_answer_waiting(
    stack: Stack, organization: tuple[str, str], query_stub: query_service_pb2_grpc.QueryServiceStub, tmp_path: Path
) -> None:
    organization_id, organization_key = organization
    async with (
        late_pricing_proxy(stack, tmp_path, pricing_delay_s=4.0, pricing_wait_s=0.5) as (url, directory),
        httpx.AsyncClient(timeout=30) as client,
    ):
        first, elapsed = await _chat(client, url, organization_key)
        assert elapsed < 2.0, f"answered in {elapsed:.2f} s: the answer waited for AuthService's 4 s"
        assert "candela-cost-usd" not in first.headers, "no cost is known for this answer"
        # The fetch the first request started goes on, and prices the requests that follow at once.
        await asyncio.wait_for(directory.get(organization_id), 10)
        second, elapsed = await _chat(client, url, organization_key)
        assert elapsed < 2.0
    unpriced = await _logged(query_stub, organization_key, first.headers["candela-id"])
    assert unpriced.status_code == 200
    assert unpriced.usage.prompt_tokens > 0, "logged with its usage"
    assert not unpriced.HasField("cost_usd"), "unpriced, never priced without the organization's override"
    priced = await _logged(query_stub, organization_key, second.headers["candela-id"])
    assert Decimal(priced.cost_usd) == _override_cost(priced)
    assert second.headers["candela-cost-usd"] == priced.cost_usd
