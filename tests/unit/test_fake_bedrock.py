"""The fake provider's Bedrock Runtime, driven by the real boto3 client: wire format, event-stream framing,
SigV4 checking and Bedrock's error shape."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import pytest

from candela_stack.fake_provider.bedrock import FAKE_ACCESS_KEY_PREFIX, anthropic_model_name, fake_secret_access_key

pytestmark = pytest.mark.unit

ACCESS_KEY_ID = FAKE_ACCESS_KEY_PREFIX + "UNITTEST01"
PROMPT = "Say hello"
PROMPT_TOKENS = 8
REPLY = "Echo: Say hello lorem ipsum dolor sit amet consectetur adipiscing elit sed"
CLAUDE = "us.anthropic.claude-3-5-sonnet-20241022-v2:0"
NOVA = "amazon.nova-lite-v1:0"


def _client(fake_provider_url: str, secret: str | None = None, **config: Any) -> Any:
    return boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=fake_provider_url,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=secret or fake_secret_access_key(ACCESS_KEY_ID),
        config=botocore.config.Config(retries={"max_attempts": 1}, **config),
    )


def _events(stream: Iterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return list(stream)


async def test_converse_answers_with_usage(fake_provider_url: str) -> None:
    client = _client(fake_provider_url)
    answer = await asyncio.to_thread(
        client.converse,
        modelId=NOVA,
        messages=[{"role": "user", "content": [{"text": PROMPT}]}],
        additionalModelRequestFields={},
    )
    assert answer["output"]["message"]["content"][0]["text"] == REPLY
    assert answer["stopReason"] == "end_turn"
    assert answer["usage"] == {"inputTokens": PROMPT_TOKENS, "outputTokens": 12, "totalTokens": PROMPT_TOKENS + 12}


async def test_converse_stream_is_event_stream_framed(fake_provider_url: str) -> None:
    client = _client(fake_provider_url)
    answer = await asyncio.to_thread(
        client.converse_stream,
        modelId=CLAUDE,
        messages=[{"role": "user", "content": [{"text": PROMPT}]}],
        inferenceConfig={"maxTokens": 4},
    )
    events = await asyncio.to_thread(_events, answer["stream"])
    kinds = [next(iter(event)) for event in events]
    assert kinds == ["messageStart", *["contentBlockDelta"] * 2, "contentBlockStop", "messageStop", "metadata"]
    text = "".join(event["contentBlockDelta"]["delta"]["text"] for event in events if "contentBlockDelta" in event)
    assert text == "Echo: Say hello lorem"
    assert events[-2]["messageStop"]["stopReason"] == "max_tokens"
    assert events[-1]["metadata"]["usage"] == {"inputTokens": PROMPT_TOKENS, "outputTokens": 4, "totalTokens": 12}


async def test_invoke_model_speaks_anthropic_messages(fake_provider_url: str) -> None:
    client = _client(fake_provider_url)
    body = {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": PROMPT}],
    }
    answer = await asyncio.to_thread(client.invoke_model, modelId=CLAUDE, body=json.dumps(body))
    message = json.loads(answer["body"].read())
    assert message["model"] == "claude-3-5-sonnet-20241022"
    assert message["content"][0]["text"] == REPLY
    assert message["usage"]["input_tokens"] == PROMPT_TOKENS
    headers = answer["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-amzn-bedrock-output-token-count"] == "12"


async def test_invoke_stream_chunks_carry_anthropic_events(fake_provider_url: str) -> None:
    client = _client(fake_provider_url)
    body = {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": PROMPT}],
    }
    answer = await asyncio.to_thread(client.invoke_model_with_response_stream, modelId=CLAUDE, body=json.dumps(body))
    events = [json.loads(event["chunk"]["bytes"]) for event in await asyncio.to_thread(_events, answer["body"])]
    assert [event["type"] for event in events] == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 6,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[-2]["usage"]["output_tokens"] == 12
    assert events[-1]["amazon-bedrock-invocationMetrics"]["inputTokenCount"] == PROMPT_TOKENS


async def test_a_wrong_secret_is_refused_as_bedrock_does(fake_provider_url: str) -> None:
    client = _client(fake_provider_url, secret="not-the-secret")
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        await asyncio.to_thread(client.converse, modelId=NOVA, messages=[{"role": "user", "content": [{"text": "x"}]}])
    error = caught.value.response
    assert error["Error"]["Code"] == "InvalidSignatureException"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert "signature we calculated does not match" in error["Error"]["Message"]


async def test_simulated_failure_is_a_modeled_bedrock_exception(fake_provider_url: str) -> None:
    client = _client(fake_provider_url)

    def add_header(request: Any, **_: Any) -> None:
        request.headers["x-fake-status"] = "429"

    client.meta.events.register("before-sign.bedrock-runtime.Converse", add_header)
    with pytest.raises(client.exceptions.ThrottlingException):
        await asyncio.to_thread(client.converse, modelId=NOVA, messages=[{"role": "user", "content": [{"text": "x"}]}])


def test_anthropic_model_names() -> None:
    assert anthropic_model_name(CLAUDE) == "claude-3-5-sonnet-20241022"
    assert anthropic_model_name("global.anthropic.claude-haiku-4-5-20251001-v1:0") == "claude-haiku-4-5-20251001"
    assert anthropic_model_name(NOVA) == ""


async def test_invoke_model_speaks_llamas_native_body(fake_provider_url: str) -> None:
    client = _client(fake_provider_url)
    body = json.dumps({"prompt": PROMPT, "max_gen_len": 5})
    answer = await asyncio.to_thread(client.invoke_model, modelId="us.meta.llama3-1-8b-instruct-v1:0", body=body)
    document = json.loads(answer["body"].read())
    assert document == {
        "generation": "Echo: Say hello lorem ipsum",
        "prompt_token_count": PROMPT_TOKENS,
        "generation_token_count": 5,
        "stop_reason": "length",
    }
    streamed = await asyncio.to_thread(
        client.invoke_model_with_response_stream, modelId="meta.llama3-1-8b-instruct-v1:0", body=body
    )
    chunks = [json.loads(event["chunk"]["bytes"]) for event in await asyncio.to_thread(_events, streamed["body"])]
    assert "".join(chunk["generation"] for chunk in chunks) == "Echo: Say hello lorem ipsum"
    assert chunks[-1]["amazon-bedrock-invocationMetrics"]["outputTokenCount"] == 5
