"""Per-organization pricing through the whole stack: an override set over REST through the gateway prices the
very next proxied request (the proxy had that organization's pricing cached), exactly; an alias prices a
model genai-prices does not know; bad prices are a 400 naming the field. A fresh organization, so the
other tests' costs stay genai-prices'.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal

import anthropic
import grpc
import httpx
import openai
import pytest

from candela.auth.v1 import auth_service_pb2 as auth_pb
from candela.auth.v1 import auth_service_pb2_grpc
from candela.query.v1 import query_service_pb2_grpc
from candela_runtime.security import service_metadata
from candela_stack.stack import Stack
from tests.e2e.conftest import expected_cost, wait_for_logged_request

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def admin_key(stack: Stack, gateway_channel: grpc.Channel) -> str:
    """An ADMIN key of a new organization (admin implies the proxy and read scopes)."""
    auth = auth_service_pb2_grpc.AuthServiceStub(gateway_channel)
    internal = service_metadata(stack.service_token)
    organization = auth.CreateOrganization(
        auth_pb.CreateOrganizationRequest(name="Pricing"), metadata=internal, timeout=10
    ).organization
    created = auth.CreateApiKey(
        auth_pb.CreateApiKeyRequest(
            organization_id=organization.id, name="pricing admin", scopes=[auth_pb.API_KEY_SCOPE_ADMIN]
        ),
        metadata=internal,
        timeout=10,
    )
    secret: str = created.secret
    return secret


@pytest.fixture
def rest(stack: Stack, admin_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=stack.gateway_url, headers={"authorization": f"Bearer {admin_key}"}, timeout=10
    ) as client:
        yield client


@pytest.fixture
def llm(stack: Stack, admin_key: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{stack.gateway_url}/v1",
        api_key="sk-provider-key",
        default_headers={"Candela-Auth": f"Bearer {admin_key}"},
        max_retries=0,
    ) as client:
        yield client


def _logged_cost(
    query_stub: query_service_pb2_grpc.QueryServiceStub, admin_key: str, llm: openai.OpenAI, model: str
) -> tuple[Decimal | None, int, int]:
    """Sends one chat completion; its logged cost (None when unpriced) and token counts."""
    raw = llm.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": "cost?"}])
    record = wait_for_logged_request(query_stub, admin_key, raw.headers["candela-id"]).request
    cost = Decimal(record.cost_usd) if record.HasField("cost_usd") else None
    return cost, record.usage.prompt_tokens, record.usage.completion_tokens


def test_an_override_prices_the_next_request_and_an_alias_prices_an_unknown_model(
    rest: httpx.Client,
    llm: openai.OpenAI,
    admin_key: str,
    query_stub: query_service_pb2_grpc.QueryServiceStub,
) -> None:
    # genai-prices' price first, which also puts this organization's (empty) pricing in the proxy's cache.
    cost, prompt, completion = _logged_cost(query_stub, admin_key, llm, "gpt-4o-mini")
    assert cost == expected_cost("gpt-4o-mini", "openai", prompt, completion)

    set_ = rest.post(
        "/v1/price-overrides",
        json={
            "priceOverride": {
                "provider": "openai",
                "model": "gpt-4o-mini",
                "inputPricePerMtok": "0.100001",
                "outputPricePerMtok": "0.3",
            }
        },
    )
    assert set_.status_code == 200, set_.text
    assert set_.json()["priceOverride"]["inputPricePerMtok"] == "0.100001"
    cost, prompt, completion = _logged_cost(query_stub, admin_key, llm, "gpt-4o-mini")
    assert cost == (prompt * Decimal("0.100001") + completion * Decimal("0.3")) / 1_000_000

    assert _logged_cost(query_stub, admin_key, llm, "acme-support-ft")[0] is None, "unknown: unpriced"
    aliased = rest.post(
        "/v1/model-aliases",
        json={"modelAlias": {"model": "acme-support-ft", "targetProvider": "openai", "targetModel": "gpt-4o"}},
    )
    assert aliased.status_code == 200, aliased.text
    cost, prompt, completion = _logged_cost(query_stub, admin_key, llm, "acme-support-ft")
    assert cost == expected_cost("gpt-4o", "openai", prompt, completion)

    listed = rest.get("/v1/price-overrides").json()["priceOverrides"]
    assert [(o["model"], o["outputPricePerMtok"]) for o in listed] == [("gpt-4o-mini", "0.3")]
    deleted = rest.delete("/v1/price-overrides", params={"provider": "openai", "model": "gpt-4o-mini"})
    assert deleted.status_code == 200, deleted.text
    cost, prompt, completion = _logged_cost(query_stub, admin_key, llm, "gpt-4o-mini")
    assert cost == expected_cost("gpt-4o-mini", "openai", prompt, completion), "deleted: genai-prices again"


def test_a_bad_price_is_a_400_naming_the_field(rest: httpx.Client) -> None:
    refused = rest.post(
        "/v1/price-overrides",
        json={
            "priceOverride": {
                "provider": "openai",
                "model": "gpt-4o",
                "inputPricePerMtok": "-2",
                "outputPricePerMtok": "1",
            }
        },
    )
    assert refused.status_code == 400, refused.text
    assert "price_override.input_price_per_mtok" in refused.text


def test_service_tiers_one_hour_cache_writes_and_web_searches_are_priced_from_what_the_provider_reports(
    stack: Stack, llm: openai.OpenAI, admin_key: str, query_stub: query_service_pb2_grpc.QueryServiceStub
) -> None:
    # GPT-5 mini per million tokens: standard $0.25 / $2, flex $0.125 / $1 (OpenAI's published prices).
    raw = llm.chat.completions.with_raw_response.create(
        model="gpt-5-mini", service_tier="flex", messages=[{"role": "user", "content": "cheap please"}]
    )
    assert raw.parse().service_tier == "flex"
    record = wait_for_logged_request(query_stub, admin_key, raw.headers["candela-id"]).request
    usage = record.usage
    assert (
        Decimal(record.cost_usd) == (usage.prompt_tokens * Decimal("0.125") + usage.completion_tokens * 1) / 1_000_000
    )

    # Claude Haiku 4.5 per million tokens: input $1, output $5, 5-minute cache write $1.25, 1-hour $2; web
    # search $10 per thousand.
    extras = {
        "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 400},
        "server_tool_use": {"web_search_requests": 2, "web_fetch_requests": 1},
    }
    with (
        anthropic.Anthropic(
            base_url=f"{stack.gateway_url}/anthropic",
            api_key="sk-ant-provider-key",
            default_headers={
                "Candela-Auth": f"Bearer {admin_key}",
                "x-fake-cache-write-tokens": "500",
                "x-fake-usage": json.dumps(extras),
            },
            max_retries=0,
        ) as claude,
        claude.messages.with_streaming_response.create(
            model="claude-haiku-4-5",
            max_tokens=64,
            stream=True,
            messages=[{"role": "user", "content": "search twice and cache it for an hour, please"}],
        ) as streamed,
    ):
        request_id = streamed.headers["candela-id"]
        b"".join(streamed.iter_bytes())
    record = wait_for_logged_request(query_stub, admin_key, request_id).request
    usage = record.usage
    assert usage.cache_write_tokens == 500
    uncached = usage.prompt_tokens - 500
    expected = (uncached * 1 + 100 * Decimal("1.25") + 400 * 2 + usage.completion_tokens * 5) / Decimal(1_000_000)
    assert Decimal(record.cost_usd) == expected + 2 * Decimal("0.01")
