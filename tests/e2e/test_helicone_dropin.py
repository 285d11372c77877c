"""A Helicone user moves to Candela by changing the base URL and the key: the real openai SDK with Helicone's
headers only, through the gateway, then the query API."""

from __future__ import annotations

import contextlib
import uuid
from decimal import Decimal

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from candela.query.v1 import query_service_pb2_grpc
from candela_stack.stack import Bootstrap, Stack
from tests.e2e.conftest import expected_cost, wait_for_logged_request
from tests.e2e.proxy_support import fake_requests

pytestmark = pytest.mark.e2e


def _helicone_client(stack: Stack, admin: Bootstrap, marker: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{stack.gateway_url}/v1",
        api_key="sk-provider-key",
        default_headers={
            "Helicone-Auth": f"Bearer {admin.api_key}",
            "Helicone-User-Id": "alice@example.com",
            "Helicone-Property-Feature": "trip-planner",
            "Helicone-Session-Id": f"session-{marker}",
            "Helicone-Cache-Enabled": "true",
            "Helicone-Cache-Ignore-Keys": "user",
            "x-test-marker": marker,
        },
        max_retries=0,
    )


def test_helicone_headers_alone_log_cache_and_refuse_what_candela_does_not_do(
    stack: Stack,
    admin: Bootstrap,
    query_stub: query_service_pb2_grpc.QueryServiceStub,
    closing: contextlib.ExitStack,
) -> None:
    marker = uuid.uuid4().hex
    client = closing.enter_context(_helicone_client(stack, admin, marker))
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": f"Plan a trip {marker}"}]

    first = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages, user="end-user-1")
    # Another `user` in the body: Helicone-Cache-Ignore-Keys leaves it out of the cache key.
    second = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages, user="end-user-2")
    assert (first.headers["helicone-cache"], second.headers["helicone-cache"]) == ("MISS", "HIT")
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert first.headers["helicone-id"] == first.headers["candela-id"]
    assert len(fake_requests(stack, x_test_marker=marker)) == 1, "the repeat never reached the provider"

    logged = wait_for_logged_request(query_stub, admin.api_key, first.headers["helicone-id"]).request
    assert logged.user_id == "alice@example.com"
    assert dict(logged.properties) == {"feature": "trip-planner"}
    assert logged.session_id == f"session-{marker}"
    hit = wait_for_logged_request(query_stub, admin.api_key, second.headers["helicone-id"]).request
    assert (logged.cache_hit, hit.cache_hit) == (False, True)

    # A deployment name genai-prices does not know, priced as the model Helicone-Model-Override names.
    overridden = client.chat.completions.with_raw_response.create(
        model=f"my-deployment-{marker}",
        messages=[{"role": "user", "content": "price me"}],
        extra_headers={"Helicone-Model-Override": "gpt-4o-mini", "Helicone-Cache-Enabled": "false"},
    )
    priced = wait_for_logged_request(query_stub, admin.api_key, overridden.headers["helicone-id"]).request
    assert priced.model == "gpt-4o-mini"
    assert priced.response_model == f"my-deployment-{marker}"
    assert Decimal(priced.cost_usd) == expected_cost(
        "gpt-4o-mini", "openai", priced.usage.prompt_tokens, priced.usage.completion_tokens
    )
    assert Decimal(priced.cost_usd) > 0

    # A Helicone feature Candela does not run is a 400 naming it, in OpenAI's error shape; nothing went up.
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, extra_headers={"Helicone-Moderations-Enabled": "true"}
        )
    assert refused.value.status_code == 400
    assert "Helicone-Moderations-Enabled" in refused.value.message
    assert "moderation" in refused.value.message
    assert len(fake_requests(stack, x_test_marker=marker)) == 2


def test_a_helicone_gateway_target_is_logged_under_the_provider_it_names(
    stack: Stack,
    admin: Bootstrap,
    query_stub: query_service_pb2_grpc.QueryServiceStub,
    local_target_proxy: str,
    closing: contextlib.ExitStack,
) -> None:
    """Helicone's gateway form: Helicone-Target-Url with Helicone-Target-Provider (through a proxy whose
    operator lets targets reach the local stand-in provider)."""
    assert stack.fake_provider_url is not None
    marker = uuid.uuid4().hex
    client = closing.enter_context(
        openai.OpenAI(
            base_url=f"{local_target_proxy}/v1",
            api_key="sk-provider-key",
            default_headers={
                "Helicone-Auth": f"Bearer {admin.api_key}",
                "Helicone-Target-Url": stack.fake_provider_url,
                "Helicone-Target-Provider": "Groq",
                "x-test-marker": marker,
            },
            max_retries=0,
        )
    )
    raw = client.chat.completions.with_raw_response.create(
        model="llama-3.1-8b-instant", messages=[{"role": "user", "content": f"hello {marker}"}]
    )
    assert len(fake_requests(stack, x_test_marker=marker)) == 1
    logged = wait_for_logged_request(query_stub, admin.api_key, raw.headers["helicone-id"]).request
    assert logged.provider == "groq"
    assert logged.target_url == stack.fake_provider_url
