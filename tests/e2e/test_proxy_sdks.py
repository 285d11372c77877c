"""Every endpoint through the real openai and anthropic SDKs, streamed and not: the SDK gets exactly the
provider's bytes, the provider gets exactly the SDK's request, and the log holds the right numbers."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest

from candela.query.v1 import query_service_pb2_grpc
from candela_stack.stack import Bootstrap, Stack
from tests.e2e.conftest import expected_cost, wait_for_logged_request
from tests.e2e.proxy_support import fake_requests

pytestmark = pytest.mark.e2e

PROMPT = "Say hello"
CHAT_PROMPT_TOKENS = 3 + 3 + 2  # the fake's counting: priming + per message (overhead + words)
REPLY_TOKENS = 12

Call = Callable[[openai.OpenAI, anthropic.Anthropic], tuple[dict[str, str], bytes]]


def _raw(response: object) -> tuple[dict[str, str], bytes]:
    http = response.http_response  # type: ignore[attr-defined]
    return dict(http.headers), http.read()


def _streamed(manager: contextlib.AbstractContextManager[object]) -> tuple[dict[str, str], bytes]:
    with manager as response:
        headers = dict(response.headers)  # type: ignore[attr-defined]
        body = b"".join(response.iter_bytes())  # type: ignore[attr-defined]
    return headers, body


@dataclass(frozen=True)
class Case:
    name: str
    call: Call
    model: str
    provider: str
    path: str
    prompt_tokens: int
    completion_tokens: int
    streamed: bool
    finish_reason: str


# Typed loosely: the SDKs' TypedDict unions are not what these tests are about.
MESSAGES: Any = [{"role": "user", "content": PROMPT}]
CASES = [
    Case(
        "chat",
        lambda o, _: _raw(o.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)),
        "gpt-4o-mini",
        "openai",
        "/v1/chat/completions",
        CHAT_PROMPT_TOKENS,
        REPLY_TOKENS,
        False,
        "stop",
    ),
    Case(
        "chat-stream",
        lambda o, _: _streamed(
            o.chat.completions.with_streaming_response.create(
                model="gpt-4o-mini",
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
            )
        ),
        "gpt-4o-mini",
        "openai",
        "/v1/chat/completions",
        CHAT_PROMPT_TOKENS,
        REPLY_TOKENS,
        True,
        "stop",
    ),
    Case(
        "completions",
        lambda o, _: _raw(o.completions.with_raw_response.create(model="gpt-3.5-turbo-instruct", prompt=PROMPT)),
        "gpt-3.5-turbo-instruct",
        "openai",
        "/v1/completions",
        2,
        REPLY_TOKENS,
        False,
        "stop",
    ),
    Case(
        "completions-stream",
        lambda o, _: _streamed(
            o.completions.with_streaming_response.create(
                model="gpt-3.5-turbo-instruct", prompt=PROMPT, stream=True, stream_options={"include_usage": True}
            )
        ),
        "gpt-3.5-turbo-instruct",
        "openai",
        "/v1/completions",
        2,
        REPLY_TOKENS,
        True,
        "stop",
    ),
    Case(
        "embeddings",
        lambda o, _: _raw(o.embeddings.with_raw_response.create(model="text-embedding-3-small", input=PROMPT)),
        "text-embedding-3-small",
        "openai",
        "/v1/embeddings",
        2,
        0,
        False,
        "",
    ),
    Case(
        "responses",
        lambda o, _: _raw(o.responses.with_raw_response.create(model="gpt-4o-mini", input=PROMPT)),
        "gpt-4o-mini",
        "openai",
        "/v1/responses",
        CHAT_PROMPT_TOKENS,
        REPLY_TOKENS,
        False,
        "completed",
    ),
    Case(
        "responses-stream",
        lambda o, _: _streamed(
            o.responses.with_streaming_response.create(model="gpt-4o-mini", input=PROMPT, stream=True)
        ),
        "gpt-4o-mini",
        "openai",
        "/v1/responses",
        CHAT_PROMPT_TOKENS,
        REPLY_TOKENS,
        True,
        "completed",
    ),
    Case(
        "messages",
        lambda _, a: _raw(
            a.messages.with_raw_response.create(model="claude-haiku-4-5", max_tokens=64, messages=MESSAGES)
        ),
        "claude-haiku-4-5",
        "anthropic",
        "/v1/messages",
        CHAT_PROMPT_TOKENS,
        REPLY_TOKENS,
        False,
        "end_turn",
    ),
    Case(
        "messages-stream",
        lambda _, a: _streamed(
            a.messages.with_streaming_response.create(
                model="claude-haiku-4-5",
                max_tokens=64,
                messages=MESSAGES,
                stream=True,
            )
        ),
        "claude-haiku-4-5",
        "anthropic",
        "/v1/messages",
        CHAT_PROMPT_TOKENS,
        REPLY_TOKENS,
        True,
        "end_turn",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_sdk_call_is_relayed_exactly_and_logged(
    stack: Stack,
    admin: Bootstrap,
    query_stub: query_service_pb2_grpc.QueryServiceStub,
    closing: contextlib.ExitStack,
    case: Case,
) -> None:
    marker = uuid.uuid4().hex
    headers = {
        "Candela-Auth": f"Bearer {admin.api_key}",
        "Candela-User-Id": f"sdk-{case.name}",
        "Helicone-Session-Id": f"session-{marker}",
        "Candela-Session-Path": "/trip/plan",
        "Candela-Session-Name": "Trip planner",
        "Candela-Property-Feature": case.name,
        "x-test-marker": marker,
    }
    openai_client = closing.enter_context(
        openai.OpenAI(
            base_url=f"{stack.gateway_url}/v1", api_key="sk-never-stored", default_headers=headers, max_retries=0
        )
    )
    anthropic_client = closing.enter_context(
        anthropic.Anthropic(
            base_url=f"{stack.gateway_url}/anthropic",
            api_key="sk-ant-never-stored",
            default_headers=headers,
            max_retries=0,
        )
    )
    received_headers, received = case.call(openai_client, anthropic_client)
    request_id = received_headers["candela-id"]

    # The provider got the SDK's request as sent, with the provider key and without Candela's headers.
    (upstream,) = fake_requests(stack, x_test_marker=marker)
    assert upstream["path"] == case.path
    assert "candela-auth" not in upstream["headers"]
    assert "helicone-session-id" not in upstream["headers"]
    assert json.loads(upstream["body"])["model"] == case.model

    logged = wait_for_logged_request(query_stub, admin.api_key, request_id)
    record = logged.request
    # Byte for byte: what the SDK received is what the proxy read from the provider and stored.
    assert logged.response_body.encode() == received
    assert json.loads(logged.request_body) == json.loads(upstream["body"])
    assert "never-stored" not in logged.request_body + logged.response_body
    assert (record.provider, record.model, record.path, record.status_code) == (
        case.provider,
        case.model,
        case.path,
        200,
    )
    assert record.streamed is case.streamed
    assert (record.usage.prompt_tokens, record.usage.completion_tokens) == (case.prompt_tokens, case.completion_tokens)
    assert Decimal(record.cost_usd) == expected_cost(
        case.model, case.provider, case.prompt_tokens, case.completion_tokens
    )
    assert record.HasField("time_to_first_token_ms") is case.streamed
    if case.streamed:
        assert 0 <= record.time_to_first_token_ms <= record.latency_ms
    assert record.finish_reason == case.finish_reason
    assert (record.user_id, record.session_id, record.session_path, record.session_name) == (
        f"sdk-{case.name}",
        f"session-{marker}",
        "/trip/plan",
        "Trip planner",
    )
    assert dict(record.properties) == {"feature": case.name}
