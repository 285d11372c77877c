"""The real boto3 bedrock-runtime client through the gateway: Converse, ConverseStream, InvokeModel and
InvokeModelWithResponseStream, re-signed and passed through, and what is logged."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import pytest
from genai_prices import Usage, calc_price

from candela.query.v1 import query_service_pb2_grpc
from candela_stack.fake_provider.bedrock import FAKE_ACCESS_KEY_PREFIX, fake_secret_access_key
from candela_stack.stack import Bootstrap, Stack
from tests.e2e.conftest import expected_cost, wait_for_logged_request
from tests.e2e.proxy_support import fake_requests

pytestmark = pytest.mark.e2e

ACCESS_KEY_ID = FAKE_ACCESS_KEY_PREFIX + "E2E0000001"
SECRET = fake_secret_access_key(ACCESS_KEY_ID)
PROMPT = "Plan a short trip"
PROMPT_TOKENS = 3 + 3 + len(PROMPT.split())
COMPLETION_TOKENS = 12
NOVA = "amazon.nova-lite-v1:0"
CLAUDE = "us.anthropic.claude-3-5-sonnet-20241022-v2:0"
LLAMA = "us.meta.llama3-1-8b-instruct-v1:0"
MESSAGES = [{"role": "user", "content": [{"text": PROMPT}]}]
ANTHROPIC_BODY = json.dumps(
    {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 100, "messages": [{"role": "user", "content": PROMPT}]}
)


def _client(stack: Stack, headers: dict[str, str], endpoint_url: str | None = None) -> Any:
    """boto3's bedrock-runtime client with extra headers on every request (added before it signs)."""
    client = boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=endpoint_url if endpoint_url is not None else f"{stack.gateway_url}/bedrock",
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET,
        config=botocore.config.Config(retries={"max_attempts": 1}),
    )

    def add_headers(request: Any, **_: Any) -> None:
        for name, value in headers.items():
            request.headers[name] = value

    client.meta.events.register("before-sign.bedrock-runtime.*", add_headers)
    return client


def _resigning(stack: Stack, candela_key: str, **extra: str) -> Any:
    """Mode (a): signed for the gateway; the gateway re-signs with the credentials the caller hands it."""
    return _client(
        stack,
        {
            "Candela-Auth": f"Bearer {candela_key}",
            "Candela-Aws-Access-Key-Id": ACCESS_KEY_ID,
            "Candela-Aws-Secret-Access-Key": SECRET,
            **extra,
        },
    )


def _request_id(answer: dict[str, Any]) -> str:
    request_id: str = answer["ResponseMetadata"]["HTTPHeaders"]["candela-id"]
    return request_id


def test_converse_is_resigned_answered_and_logged(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub
) -> None:
    marker = str(uuid.uuid4())
    client = _resigning(stack, admin.api_key, **{"X-Test-Marker": marker, "Candela-Session-Id": "bedrock-session"})
    answer = client.converse(modelId=NOVA, messages=MESSAGES)
    assert answer["output"]["message"]["content"][0]["text"].startswith("Echo: Plan a short trip")
    logged = wait_for_logged_request(query_stub, admin.api_key, _request_id(answer))
    record = logged.request
    assert (record.provider, record.model, record.path) == ("aws", NOVA, f"/model/{NOVA}/converse")
    assert (record.usage.prompt_tokens, record.usage.completion_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert record.cost_usd == str(expected_cost(NOVA, "aws", PROMPT_TOKENS, COMPLETION_TOKENS))
    assert (record.finish_reason, record.session_id, record.streamed) == ("end_turn", "bedrock-session", False)
    assert json.loads(logged.response_body)["usage"]["outputTokens"] == COMPLETION_TOKENS
    # The provider got a signature of the gateway's (the fake checked it with botocore), and no credential.
    (received,) = fake_requests(stack, x_test_marker=marker)
    assert received["path"] == f"/model/{NOVA}/converse"
    assert not [name for name in received["headers"] if "aws-" in name or name.startswith(("candela-", "helicone-"))]
    assert SECRET not in json.dumps(received)
    assert SECRET not in str(logged)


def test_a_wrong_secret_reaches_the_provider_which_refuses_the_signature(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub
) -> None:
    client = _resigning(stack, admin.api_key, **{"Candela-Aws-Secret-Access-Key": "not-the-secret"})
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        client.converse(modelId=NOVA, messages=MESSAGES)
    assert caught.value.response["Error"]["Code"] == "InvalidSignatureException"
    record = wait_for_logged_request(query_stub, admin.api_key, _request_id(caught.value.response)).request
    assert (record.status_code, record.provider) == (403, "aws")


def test_converse_stream_is_relayed_and_priced_with_cache_reads(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub
) -> None:
    # The fake writes the binary stream in 7-byte pieces: the gateway relays whole messages all the same.
    client = _resigning(stack, admin.api_key, **{"x-fake-cached-tokens": "4", "x-fake-write-bytes": "7"})
    answer = client.converse_stream(modelId=CLAUDE, messages=MESSAGES)
    events = list(answer["stream"])
    text = "".join(event["contentBlockDelta"]["delta"]["text"] for event in events if "contentBlockDelta" in event)
    assert text.startswith("Echo: Plan a short trip")
    assert events[-1]["metadata"]["usage"]["cacheReadInputTokens"] == 4
    logged = wait_for_logged_request(query_stub, admin.api_key, _request_id(answer))
    record = logged.request
    assert (record.model, record.streamed, record.finish_reason) == (CLAUDE, True, "end_turn")
    assert record.HasField("time_to_first_token_ms")
    usage = record.usage
    assert (usage.prompt_tokens, usage.cache_read_tokens, usage.completion_tokens) == (
        PROMPT_TOKENS,
        4,
        COMPLETION_TOKENS,
    )
    priced = Usage(input_tokens=PROMPT_TOKENS, cache_read_tokens=4, output_tokens=COMPLETION_TOKENS)
    assert Decimal(record.cost_usd) == calc_price(priced, model_ref=CLAUDE, provider_id="aws").total_price
    # The binary stream is logged readable: one event/data block per message.
    assert "event: contentBlockDelta\ndata: " in logged.response_body
    assert "event: metadata\ndata: " in logged.response_body


def test_invoke_model_with_anthropics_body_is_logged(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub
) -> None:
    answer = _resigning(stack, admin.api_key).invoke_model(modelId=CLAUDE, body=ANTHROPIC_BODY)
    message = json.loads(answer["body"].read())
    assert message["content"][0]["text"].startswith("Echo: Plan a short trip")
    record = wait_for_logged_request(query_stub, admin.api_key, _request_id(answer)).request
    assert (record.path, record.model) == (f"/model/{CLAUDE}/invoke", CLAUDE)
    assert (record.usage.prompt_tokens, record.usage.completion_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert record.cost_usd == str(expected_cost(CLAUDE, "aws", PROMPT_TOKENS, COMPLETION_TOKENS))


def test_invoke_stream_passed_through_with_the_callers_own_signature(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub
) -> None:
    # Mode (b): the client signs for the real Bedrock host; only the connection goes to the gateway, which
    # is told the host it signed for. No credential travels in a header.
    host = "bedrock-runtime.us-east-1.amazonaws.com"
    client = _client(stack, {}, endpoint_url=f"https://{host}")

    def to_gateway(request: Any, **_: Any) -> None:
        request.url = request.url.replace(f"https://{host}", f"{stack.gateway_url}/bedrock", 1)
        request.headers["Candela-Auth"] = f"Bearer {admin.api_key}"
        request.headers["Candela-Bedrock-Host"] = host

    client.meta.events.register("before-send.bedrock-runtime.*", to_gateway)
    answer = client.invoke_model_with_response_stream(modelId=CLAUDE, body=ANTHROPIC_BODY)
    events = [json.loads(event["chunk"]["bytes"]) for event in answer["body"]]
    assert events[-1]["amazon-bedrock-invocationMetrics"]["outputTokenCount"] == COMPLETION_TOKENS
    logged = wait_for_logged_request(query_stub, admin.api_key, _request_id(answer))
    record = logged.request
    assert (record.path, record.streamed) == (f"/model/{CLAUDE}/invoke-with-response-stream", True)
    assert (record.usage.prompt_tokens, record.usage.completion_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert record.cost_usd == str(expected_cost(CLAUDE, "aws", PROMPT_TOKENS, COMPLETION_TOKENS))
    assert 'event: chunk\ndata: {"type":"message_delta"' in logged.response_body


def test_llama_through_invoke_model_is_priced_from_bedrocks_token_counts(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub
) -> None:
    # Llama's native answer and stream carry their own counts; the gateway reads Bedrock's (the
    # X-Amzn-Bedrock-*-Token-Count headers, the stream's invocation metrics), the same for every family.
    client = _resigning(stack, admin.api_key)
    body = json.dumps({"prompt": PROMPT})
    answer = client.invoke_model(modelId=LLAMA, body=body)
    streamed = client.invoke_model_with_response_stream(modelId=LLAMA, body=body)
    assert "".join(json.loads(event["chunk"]["bytes"])["generation"] for event in streamed["body"]).startswith("Echo:")
    for request_id in (_request_id(answer), _request_id(streamed)):
        record = wait_for_logged_request(query_stub, admin.api_key, request_id).request
        assert (record.model, record.usage.prompt_tokens, record.usage.completion_tokens) == (
            LLAMA,
            PROMPT_TOKENS,
            COMPLETION_TOKENS,
        )
        assert record.cost_usd == str(expected_cost(LLAMA, "aws", PROMPT_TOKENS, COMPLETION_TOKENS))


def test_candelas_refusal_is_a_bedrock_error(stack: Stack) -> None:
    client = _client(stack, {"Candela-Aws-Access-Key-Id": ACCESS_KEY_ID, "Candela-Aws-Secret-Access-Key": SECRET})
    with pytest.raises(client.exceptions.AccessDeniedException) as caught:
        client.converse(modelId=NOVA, messages=MESSAGES)
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 401
    assert "Candela-Auth" in caught.value.response["Error"]["Message"]


def test_a_cached_stream_is_replayed_as_the_same_binary_stream(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub
) -> None:
    seed = str(uuid.uuid4())
    client = _resigning(stack, admin.api_key, **{"Candela-Cache-Enabled": "true", "Candela-Cache-Seed": seed})
    first = client.converse_stream(modelId=NOVA, messages=MESSAGES)
    first_events = list(first["stream"])
    second = client.converse_stream(modelId=NOVA, messages=MESSAGES)
    assert second["ResponseMetadata"]["HTTPHeaders"]["candela-cache"] == "HIT"
    assert list(second["stream"]) == first_events
    logged = wait_for_logged_request(query_stub, admin.api_key, _request_id(second))
    assert logged.request.cache_hit
    assert logged.request.usage.completion_tokens == COMPLETION_TOKENS
    assert "event: metadata\ndata: " in logged.response_body
