"""The walking skeleton end to end: the real openai SDK -> Envoy -> proxy -> fake provider, and the log
back through ingest, S3, Kafka, the writer and ClickHouse to QueryService."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from decimal import Decimal

import asyncpg
import grpc
import httpx
import openai
import pytest

from candela.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from candela.query.v1 import query_service_pb2, query_service_pb2_grpc
from candela_runtime.security import service_metadata
from candela_stack.stack import Bootstrap, Stack
from tests.e2e.conftest import bearer, expected_cost, wait_for_logged_request
from tests.e2e.proxy_support import wait_until

pytestmark = pytest.mark.e2e

PROMPT = "Say hello to the gateway"
# The fake provider's documented counting: 3 + per message (3 + words); the reply is 12 words.
PROMPT_TOKENS = 3 + 3 + len(PROMPT.split())
COMPLETION_TOKENS = 12


def _client(stack: Stack, candela_key: str, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{stack.gateway_url}/v1",
        api_key="sk-provider-key-never-stored",
        default_headers={"Candela-Auth": f"Bearer {candela_key}", **headers},
        max_retries=0,
    )


def test_chat_completion_is_answered_and_logged_exactly(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub, closing: contextlib.ExitStack
) -> None:
    client = closing.enter_context(
        _client(
            stack,
            admin.api_key,
            **{"Candela-User-Id": "alice", "Candela-Session-Id": "trip-42", "Candela-Property-Feature": "onboarding"},
        )
    )
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content is not None
    assert completion.choices[0].message.content.startswith("Echo: Say hello to the gateway")
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    request_id = raw.headers["candela-id"]
    assert uuid.UUID(request_id)

    logged = wait_for_logged_request(query_stub, admin.api_key, request_id)
    record = logged.request
    assert record.request_id == request_id
    assert record.organization_id == admin.organization_id
    assert (record.provider, record.model, record.path) == ("openai", "gpt-4o-mini", "/v1/chat/completions")
    assert record.status_code == 200
    assert not record.streamed
    assert (record.usage.prompt_tokens, record.usage.completion_tokens, record.usage.total_tokens) == (
        PROMPT_TOKENS,
        COMPLETION_TOKENS,
        PROMPT_TOKENS + COMPLETION_TOKENS,
    )
    assert Decimal(record.cost_usd) == expected_cost("gpt-4o-mini", "openai", PROMPT_TOKENS, COMPLETION_TOKENS)
    assert record.latency_ms >= 0
    assert not record.HasField("time_to_first_token_ms")
    assert (record.user_id, record.session_id) == ("alice", "trip-42")
    assert dict(record.properties) == {"feature": "onboarding"}
    assert record.finish_reason == "stop"

    # The bodies come back from S3: what the SDK sent, and exactly what the SDK received.
    sent = json.loads(logged.request_body)
    assert sent["messages"] == [{"role": "user", "content": PROMPT}]
    assert logged.response_body == raw.http_response.text
    assert "sk-provider-key-never-stored" not in logged.request_body + logged.response_body


def test_streamed_chat_completion_is_logged_with_usage_and_ttft(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub, closing: contextlib.ExitStack
) -> None:
    client = closing.enter_context(_client(stack, admin.api_key))
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        stream_options={"include_usage": True},
    )
    request_id = raw.headers["candela-id"]
    chunks = list(raw.parse())
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text.startswith("Echo: Say hello to the gateway")
    usage_chunks = [chunk.usage for chunk in chunks if chunk.usage is not None]
    assert [(u.prompt_tokens, u.completion_tokens) for u in usage_chunks] == [(PROMPT_TOKENS, COMPLETION_TOKENS)]

    logged = wait_for_logged_request(query_stub, admin.api_key, request_id)
    record = logged.request
    assert record.streamed
    assert record.HasField("time_to_first_token_ms")
    assert 0 <= record.time_to_first_token_ms <= record.latency_ms
    assert (record.usage.prompt_tokens, record.usage.completion_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert Decimal(record.cost_usd) == expected_cost("gpt-4o-mini", "openai", PROMPT_TOKENS, COMPLETION_TOKENS)
    assert record.finish_reason == "stop"
    assert logged.response_body.endswith("data: [DONE]\n\n")
    assert text in "".join(
        json.loads(line[6:])["choices"][0]["delta"].get("content", "")
        for line in logged.response_body.splitlines()
        if line.startswith("data: {") and json.loads(line[6:])["choices"]
    )


def test_stream_arrives_byte_for_byte(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub
) -> None:
    """What the client receives through the gateway is what the provider sent (less the usage chunk Candela
    asked for), and what is stored."""
    body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": PROMPT}]}
    with httpx.stream(
        "POST",
        f"{stack.gateway_url}/v1/chat/completions",
        json=body,
        headers={"Candela-Auth": f"Bearer {admin.api_key}", "Authorization": "Bearer sk-x"},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        received = b"".join(response.iter_raw())
        request_id = response.headers["candela-id"]
    logged = wait_for_logged_request(query_stub, admin.api_key, request_id)
    assert logged.response_body.encode() == received
    # The client asked for no usage chunk: Candela asked for it, priced the stream, and kept it from the client.
    assert b'"choices":[]' not in received
    assert logged.request.usage.completion_tokens == COMPLETION_TOKENS
    assert Decimal(logged.request.cost_usd) == expected_cost(
        "gpt-4o-mini", "openai", logged.request.usage.prompt_tokens, COMPLETION_TOKENS
    )


def test_query_requests_lists_the_organization_logs(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub, closing: contextlib.ExitStack
) -> None:
    client = closing.enter_context(_client(stack, admin.api_key, **{"Candela-User-Id": "query-user"}))
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "count me"}]
    )
    request_id = raw.headers["candela-id"]
    wait_for_logged_request(query_stub, admin.api_key, request_id)
    listed = query_stub.QueryRequests(
        query_service_pb2.QueryRequestsRequest(filter=query_service_pb2.RequestFilter(user_id="query-user")),
        metadata=bearer(admin.api_key),
        timeout=5,
    )
    assert [r.request_id for r in listed.requests] == [request_id]
    assert listed.requests[0].model == "gpt-4o"

    # The same through Envoy's REST transcoding.
    rest = httpx.post(
        f"{stack.gateway_url}/v1/request/query",
        json={"filter": {"userId": "query-user"}, "limit": 10},
        headers={"Authorization": f"Bearer {admin.api_key}"},
        timeout=10,
    )
    assert rest.status_code == 200, rest.text
    assert [r["requestId"] for r in rest.json()["requests"]] == [request_id]
    detail = httpx.get(
        f"{stack.gateway_url}/v1/request/{request_id}",
        headers={"Authorization": f"Bearer {admin.api_key}"},
        timeout=10,
    )
    assert detail.status_code == 200, detail.text
    assert detail.json()["request"]["usage"]["promptTokens"] == str(3 + 3 + 2)


def test_usage_is_counted_per_organization_and_unknown_models_stay_unpriced(
    stack: Stack,
    gateway_channel: grpc.Channel,
    query_stub: query_service_pb2_grpc.QueryServiceStub,
    closing: contextlib.ExitStack,
) -> None:
    auth = auth_service_pb2_grpc.AuthServiceStub(gateway_channel)
    internal = service_metadata(stack.service_token)
    organization = auth.CreateOrganization(
        auth_service_pb2.CreateOrganizationRequest(name="Usage Co"), metadata=internal
    ).organization
    key = auth.CreateApiKey(
        auth_service_pb2.CreateApiKeyRequest(
            organization_id=organization.id,
            name="usage",
            scopes=[auth_service_pb2.API_KEY_SCOPE_PROXY, auth_service_pb2.API_KEY_SCOPE_READ],
        ),
        metadata=internal,
    ).secret
    client = closing.enter_context(_client(stack, key))
    request_ids = [
        client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": PROMPT}]
        ).headers["candela-id"]
        for model in ("gpt-4o-mini", "gpt-4o-mini", "my-local-llama")
    ]
    records = [wait_for_logged_request(query_stub, key, request_id).request for request_id in request_ids]
    assert not records[2].HasField("cost_usd")
    priced = expected_cost("gpt-4o-mini", "openai", PROMPT_TOKENS, COMPLETION_TOKENS)

    async def usage_row() -> asyncpg.Record | None:
        connection = await asyncpg.connect(stack.postgres_dsn)
        try:
            return await connection.fetchrow(
                "SELECT sum(request_count) AS requests, sum(prompt_tokens) AS prompt, sum(completion_tokens) AS"
                " completion, sum(cost_usd) AS cost, sum(unpriced_count) AS unpriced"
                " FROM organization_usage_daily WHERE organization_id = $1",
                uuid.UUID(organization.id),
            )
        finally:
            await connection.close()

    # The writer inserts the rows inside the Postgres transaction that counts them: a log is readable in
    # ClickHouse a moment before its usage commits (and the three may land in different batches).
    rows: list[asyncpg.Record | None] = [None]

    def all_counted() -> bool:
        rows[0] = asyncio.run(usage_row())
        return rows[0] is not None and (rows[0]["requests"] or 0) >= 3

    wait_until(all_counted, what="the three requests counted in the usage totals")
    row = rows[0]
    assert row is not None
    assert (row["requests"], row["prompt"], row["completion"], row["unpriced"]) == (
        3,
        3 * PROMPT_TOKENS,
        3 * COMPLETION_TOKENS,
        1,
    )
    assert row["cost"] == 2 * priced
