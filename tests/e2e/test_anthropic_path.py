"""The real anthropic SDK through the gateway, streamed and not, and what is logged."""

from __future__ import annotations

import contextlib
import json

import anthropic
import pytest

from candela.query.v1 import query_service_pb2_grpc
from candela_stack.stack import Bootstrap, Stack
from tests.e2e.conftest import expected_cost, wait_for_logged_request

pytestmark = pytest.mark.e2e

PROMPT = "Plan a short trip"
PROMPT_TOKENS = 3 + 3 + len(PROMPT.split())
COMPLETION_TOKENS = 12
MODEL = "claude-haiku-4-5"


def _client(stack: Stack, candela_key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=f"{stack.gateway_url}/anthropic",
        api_key="sk-ant-provider-key",
        default_headers={"Candela-Auth": f"Bearer {candela_key}", "Candela-Session-Id": "anthropic-session"},
        max_retries=0,
    )


def test_message_is_answered_and_logged(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub, closing: contextlib.ExitStack
) -> None:
    raw = closing.enter_context(_client(stack, admin.api_key)).messages.with_raw_response.create(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": PROMPT}]
    )
    message = raw.parse()
    assert message.content[0].type == "text"
    assert message.content[0].text.startswith("Echo: Plan a short trip")
    logged = wait_for_logged_request(query_stub, admin.api_key, raw.headers["candela-id"])
    record = logged.request
    assert (record.provider, record.model, record.path) == ("anthropic", MODEL, "/v1/messages")
    assert (record.usage.prompt_tokens, record.usage.completion_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert record.cost_usd == str(expected_cost(MODEL, "anthropic", PROMPT_TOKENS, COMPLETION_TOKENS))
    assert record.finish_reason == "end_turn"
    assert record.session_id == "anthropic-session"
    assert logged.response_body == raw.http_response.text


def test_streamed_message_is_logged_with_usage(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub, closing: contextlib.ExitStack
) -> None:
    with closing.enter_context(_client(stack, admin.api_key)).messages.stream(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": PROMPT}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        request_id = stream.response.headers["candela-id"]
    assert text.startswith("Echo: Plan a short trip")
    assert final.usage.output_tokens == COMPLETION_TOKENS
    record = wait_for_logged_request(query_stub, admin.api_key, request_id).request
    assert record.streamed
    assert record.HasField("time_to_first_token_ms")
    assert (record.usage.prompt_tokens, record.usage.completion_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert record.finish_reason == "end_turn"


def test_web_fetches_are_priced_as_tokens_only(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub, closing: contextlib.ExitStack
) -> None:
    """Anthropic charges nothing for a web fetch beyond its tokens (the fetched content is input tokens): a call
    that fetched is priced, at exactly its tokens' price, never left unpriced for the fetch count."""
    fetched = {"server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 3}}
    raw = closing.enter_context(_client(stack, admin.api_key)).messages.with_raw_response.create(
        model=MODEL,
        max_tokens=100,
        messages=[{"role": "user", "content": PROMPT}],
        extra_headers={"x-fake-usage": json.dumps(fetched)},
    )
    tools = raw.parse().usage.server_tool_use
    assert tools is not None
    assert tools.web_fetch_requests == 3
    record = wait_for_logged_request(query_stub, admin.api_key, raw.headers["candela-id"]).request
    assert (record.usage.prompt_tokens, record.usage.completion_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert record.cost_usd == str(expected_cost(MODEL, "anthropic", PROMPT_TOKENS, COMPLETION_TOKENS))
    assert raw.headers["candela-cost-usd"] == record.cost_usd
