"""The fake provider, driven by the real openai and anthropic SDKs: wire formats, counting rules, errors."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import signal
import sys
import time
from array import array
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from candela_stack.fake_provider import (
    Scenario,
    count_message_tokens,
    default_reply,
    generate,
    redacted_credential,
)

pytestmark = pytest.mark.unit

OPENAI_KEY = "sk-test-openai-key"
ANTHROPIC_KEY = "sk-ant-test-key"
PROMPT = "Say hello"
REPLY = "Echo: Say hello lorem ipsum dolor sit amet consectetur adipiscing elit sed"
REPLY_DELTAS = ["Echo: Say", " hello lorem", " ipsum dolor", " sit amet", " consectetur adipiscing", " elit sed"]
# One user message of 2 words: priming 3 + (overhead 3 + 2 words).
PROMPT_TOKENS = 8
REPLY_TOKENS = 12


@pytest.fixture
async def oai(fake_provider_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{fake_provider_url}/v1", api_key=OPENAI_KEY, max_retries=0) as client:
        yield client


@pytest.fixture
async def claude(fake_provider_url: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=fake_provider_url, api_key=ANTHROPIC_KEY, max_retries=0) as client:
        yield client


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def raw_sse(http: aiohttp.ClientSession, url: str, body: dict[str, Any], **headers: str) -> list[str]:
    """POST and return the raw SSE event blocks (without the blank-line separators)."""
    async with http.post(url, json=body, headers=headers) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        text = await response.text()
    assert text.endswith("\n\n")
    return text[:-2].split("\n\n")


def sse_data(block: str) -> Any:
    data_line = next(line for line in block.split("\n") if line.startswith("data: "))
    return json.loads(data_line.removeprefix("data: "))


async def recorded(http: aiohttp.ClientSession, fake_provider_url: str) -> list[dict[str, Any]]:
    async with http.get(f"{fake_provider_url}/_fake/requests") as response:
        assert response.status == 200
        result: list[dict[str, Any]] = await response.json()
        return result


# --- counting rules ------------------------------------------------------------------------------------


def test_default_reply_is_twelve_words_echoing_the_prompt() -> None:
    assert default_reply(PROMPT) == REPLY
    long_prompt = " ".join(f"w{i}" for i in range(30))
    assert default_reply(long_prompt) == "Echo: " + " ".join(f"w{i}" for i in range(11))
    assert default_reply("") == "Echo: lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod"


def test_message_tokens_are_priming_plus_overhead_plus_words() -> None:
    assert count_message_tokens([PROMPT]) == PROMPT_TOKENS
    assert count_message_tokens(["Be brief.", PROMPT]) == 3 + (3 + 2) + (3 + 2)
    assert count_message_tokens([]) == 3


def test_deltas_concatenate_to_the_exact_reply() -> None:
    scenario = Scenario(
        reply="  two  spaces\nand a newline ", cached_tokens=0, cache_write_tokens=0, reasoning_tokens=0, delay_s=0.0
    )
    generation = generate("ignored", scenario, None)
    assert "".join(generation.deltas) == scenario.reply
    assert generation.deltas == ("  two  spaces", "\nand a", " newline ")
    assert generation.visible_tokens == 5


# --- OpenAI chat completions ---------------------------------------------------------------------------


async def test_chat_completion_non_streaming(oai: openai.AsyncOpenAI) -> None:
    completion = await oai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}])
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini"
    choice = completion.choices[0]
    assert choice.message.content == REPLY
    assert choice.message.role == "assistant"
    assert choice.message.refusal is None
    assert choice.message.annotations == []
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (PROMPT_TOKENS, REPLY_TOKENS)
    assert completion.usage.total_tokens == PROMPT_TOKENS + REPLY_TOKENS
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 0
    assert completion.service_tier == "default"
    assert completion.system_fingerprint


async def test_chat_completion_raw_shape_matches_openai(http: aiohttp.ClientSession, fake_provider_url: str) -> None:
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}],
    }
    async with http.post(f"{fake_provider_url}/v1/chat/completions", json=body) as response:
        assert response.status == 200
        assert response.headers["x-request-id"].startswith("req_")
        payload = await response.json()
    assert list(payload) == [
        "id",
        "object",
        "created",
        "model",
        "choices",
        "usage",
        "service_tier",
        "system_fingerprint",
    ]
    assert payload["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": REPLY, "refusal": None, "annotations": []},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert payload["usage"] == {
        "prompt_tokens": 13,
        "completion_tokens": 12,
        "total_tokens": 25,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


async def test_chat_stream_without_usage(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}], stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert len(chunks) == 1 + len(REPLY_DELTAS) + 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    assert [chunk.choices[0].delta.content for chunk in chunks[1:-1]] == REPLY_DELTAS
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].choices[0].delta.content is None
    assert all(chunk.usage is None for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1


async def test_chat_stream_with_usage(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-fake-cached-tokens": "4", "x-fake-reasoning-tokens": "5"},
    )
    chunks = [chunk async for chunk in stream]
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.prompt_tokens == PROMPT_TOKENS
    assert usage_chunk.usage.completion_tokens == REPLY_TOKENS + 5
    assert usage_chunk.usage.total_tokens == PROMPT_TOKENS + REPLY_TOKENS + 5
    assert usage_chunk.usage.prompt_tokens_details is not None
    assert usage_chunk.usage.prompt_tokens_details.cached_tokens == 4
    assert usage_chunk.usage.completion_tokens_details is not None
    assert usage_chunk.usage.completion_tokens_details.reasoning_tokens == 5
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks[:-1]) == REPLY


async def test_chat_stream_raw_wire_format(http: aiohttp.ClientSession, fake_provider_url: str) -> None:
    url = f"{fake_provider_url}/v1/chat/completions"
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}], "stream": True}
    blocks = await raw_sse(http, url, body)
    assert blocks[-1] == "data: [DONE]"
    chunks = [sse_data(block) for block in blocks[:-1]]
    assert all("usage" not in chunk for chunk in chunks)
    assert all("obfuscation" in chunk for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}

    body["stream_options"] = {"include_usage": True, "include_obfuscation": False}
    blocks = await raw_sse(http, url, body)
    chunks = [sse_data(block) for block in blocks[:-1]]
    assert all(chunk["usage"] is None for chunk in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] == PROMPT_TOKENS + REPLY_TOKENS
    assert all("obfuscation" not in chunk for chunk in chunks)


async def test_chat_stream_usage_unasked_rides_on_the_closing_chunk(
    http: aiohttp.ClientSession, fake_provider_url: str
) -> None:
    """``x-fake-stream-usage: unasked``: usage on the finish_reason chunk, as Mistral and others send it."""
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": PROMPT}], "stream": True}
    blocks = await raw_sse(http, f"{fake_provider_url}/v1/chat/completions", body, **{"x-fake-stream-usage": "unasked"})
    chunks = [sse_data(block) for block in blocks[:-1]]
    assert all("usage" not in chunk for chunk in chunks[:-1])
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["total_tokens"] == PROMPT_TOKENS + REPLY_TOKENS


async def test_chat_stream_helper_final_completion(oai: openai.AsyncOpenAI) -> None:
    async with oai.chat.completions.stream(
        model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}]
    ) as stream:
        final = await stream.get_final_completion()
    assert final.choices[0].message.content == REPLY


async def test_reply_header_and_token_limit(oai: openai.AsyncOpenAI) -> None:
    exact = await oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": PROMPT}],
        extra_headers={"x-fake-reply": "Exactly these four words"},
    )
    assert exact.choices[0].message.content == "Exactly these four words"
    assert exact.usage is not None
    assert exact.usage.completion_tokens == 4

    cut = await oai.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}], max_completion_tokens=3
    )
    assert cut.choices[0].message.content == "Echo: Say hello"
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage is not None
    assert cut.usage.completion_tokens == 3


async def test_delay_header_paces_stream(oai: openai.AsyncOpenAI) -> None:
    started = time.monotonic()
    stream = await oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        extra_headers={"x-fake-delay-ms": "40"},
    )
    arrivals = [time.monotonic() async for _ in stream]
    assert arrivals[-1] - started >= len(REPLY_DELTAS) * 0.040
    assert arrivals[-1] - arrivals[0] >= (len(REPLY_DELTAS) - 1) * 0.040


# --- OpenAI completions, embeddings ----------------------------------------------------------------------


async def test_legacy_completions(oai: openai.AsyncOpenAI) -> None:
    completion = await oai.completions.create(model="gpt-3.5-turbo-instruct", prompt=PROMPT)
    assert completion.object == "text_completion"
    assert completion.id.startswith("cmpl-")
    assert completion.choices[0].text == REPLY
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (2, REPLY_TOKENS)

    stream = await oai.completions.create(
        model="gpt-3.5-turbo-instruct", prompt=PROMPT, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert [chunk.choices[0].text for chunk in chunks[:-2]] == REPLY_DELTAS
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 2 + REPLY_TOKENS


async def test_embeddings_float_and_base64_agree(
    oai: openai.AsyncOpenAI, http: aiohttp.ClientSession, fake_provider_url: str
) -> None:
    inputs = ["first text here", "second"]
    floats = await oai.embeddings.create(model="text-embedding-3-small", input=inputs, encoding_format="float")
    decoded = await oai.embeddings.create(model="text-embedding-3-small", input=inputs)  # SDK sends base64
    assert floats.object == "list"
    assert [item.index for item in floats.data] == [0, 1]
    assert len(floats.data[0].embedding) == 1536
    assert floats.data[0].embedding == decoded.data[0].embedding
    assert floats.data[0].embedding != floats.data[1].embedding
    assert sum(value * value for value in floats.data[0].embedding) == pytest.approx(1.0, rel=1e-4)
    assert (floats.usage.prompt_tokens, floats.usage.total_tokens) == (4, 4)

    requests = await recorded(http, fake_provider_url)
    assert requests[-1]["json"]["encoding_format"] == "base64"
    async with http.post(
        f"{fake_provider_url}/v1/embeddings",
        json={
            "model": "text-embedding-3-small",
            "input": "first text here",
            "encoding_format": "base64",
            "dimensions": 8,
        },
    ) as response:
        raw = await response.json()
    vector = array("f", base64.b64decode(raw["data"][0]["embedding"])).tolist()
    assert len(vector) == 8


# --- OpenAI Responses API ------------------------------------------------------------------------------


async def test_responses_non_streaming(oai: openai.AsyncOpenAI) -> None:
    response = await oai.responses.create(
        model="gpt-4.1", input=PROMPT, instructions="Be brief.", extra_headers={"x-fake-cached-tokens": "2"}
    )
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.model == "gpt-4.1"
    assert response.output_text == REPLY
    assert response.usage is not None
    assert response.usage.input_tokens == 13
    assert response.usage.input_tokens_details.cached_tokens == 2
    assert response.usage.output_tokens == REPLY_TOKENS
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    assert response.usage.total_tokens == 13 + REPLY_TOKENS


async def test_responses_stream_events(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.responses.create(
        model="gpt-4.1",
        input=[{"role": "user", "content": [{"type": "input_text", "text": PROMPT}]}],
        stream=True,
        extra_headers={"x-fake-reasoning-tokens": "7"},
    )
    events = [event async for event in stream]
    types = [event.type for event in events]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * len(REPLY_DELTAS),
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert deltas == REPLY_DELTAS
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.output_text == REPLY
    assert completed.response.usage is not None
    assert completed.response.usage.input_tokens == PROMPT_TOKENS
    assert completed.response.usage.output_tokens == REPLY_TOKENS + 7
    assert completed.response.usage.output_tokens_details.reasoning_tokens == 7


async def test_responses_stream_helper_and_event_lines(
    oai: openai.AsyncOpenAI, http: aiohttp.ClientSession, fake_provider_url: str
) -> None:
    async with oai.responses.stream(model="gpt-4.1", input=PROMPT) as stream:
        final = await stream.get_final_response()
    assert final.output_text == REPLY

    blocks = await raw_sse(
        http, f"{fake_provider_url}/v1/responses", {"model": "gpt-4.1", "input": PROMPT, "stream": True}
    )
    for block in blocks:
        event_line, data_line = block.split("\n")
        assert event_line == f"event: {json.loads(data_line.removeprefix('data: '))['type']}"


async def test_responses_incomplete_on_token_limit(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.responses.create(model="gpt-4.1", input=PROMPT, max_output_tokens=4, stream=True)
    events = [event async for event in stream]
    final = events[-1]
    assert final.type == "response.incomplete"
    assert final.response.status == "incomplete"
    assert final.response.incomplete_details is not None
    assert final.response.incomplete_details.reason == "max_output_tokens"
    assert final.response.output_text == "Echo: Say hello lorem"


# --- Anthropic Messages ---------------------------------------------------------------------------------


async def test_anthropic_message_non_streaming(claude: anthropic.AsyncAnthropic) -> None:
    message = await claude.messages.create(
        model="claude-haiku-4-5",
        max_tokens=1024,
        system="Be brief.",
        messages=[{"role": "user", "content": PROMPT}],
        extra_headers={"x-fake-cached-tokens": "6", "x-fake-cache-write-tokens": "4"},
    )
    assert message.id.startswith("msg_")
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == "claude-haiku-4-5"
    assert message.content[0].type == "text"
    assert message.content[0].text == REPLY
    assert message.stop_reason == "end_turn"
    assert message.stop_sequence is None
    # 13 prompt tokens, of which 6 read from and 4 written to the cache: 3 uncached.
    assert message.usage.input_tokens == 3
    assert message.usage.cache_read_input_tokens == 6
    assert message.usage.cache_creation_input_tokens == 4
    assert message.usage.output_tokens == REPLY_TOKENS


async def test_anthropic_stream_final_message(claude: anthropic.AsyncAnthropic) -> None:
    async with claude.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=1024,
        messages=[{"role": "user", "content": [{"type": "text", "text": PROMPT}]}],
        extra_headers={"x-fake-reasoning-tokens": "3"},
    ) as stream:
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert texts == REPLY_DELTAS
    assert final.content[0].type == "text"
    assert final.content[0].text == REPLY
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == PROMPT_TOKENS
    assert final.usage.output_tokens == REPLY_TOKENS + 3


async def test_anthropic_stream_raw_event_sequence(http: aiohttp.ClientSession, fake_provider_url: str) -> None:
    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 5,
        "stream": True,
        "messages": [{"role": "user", "content": PROMPT}],
    }
    blocks = await raw_sse(http, f"{fake_provider_url}/v1/messages", body, **{"anthropic-version": "2023-06-01"})
    names = [block.split("\n")[0].removeprefix("event: ") for block in blocks]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = sse_data(blocks[0])
    assert start["message"]["usage"]["input_tokens"] == PROMPT_TOKENS
    assert start["message"]["usage"]["output_tokens"] == 1
    delta = sse_data(blocks[-2])
    assert delta["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 5


async def test_anthropic_count_tokens_and_models(claude: anthropic.AsyncAnthropic, oai: openai.AsyncOpenAI) -> None:
    counted = await claude.messages.count_tokens(
        model="claude-haiku-4-5", messages=[{"role": "user", "content": PROMPT}]
    )
    assert counted.input_tokens == PROMPT_TOKENS
    claude_models = [model.id async for model in claude.models.list()]
    assert claude_models
    assert all(model_id.startswith("claude-") for model_id in claude_models)
    openai_models = [model.id async for model in oai.models.list()]
    assert "gpt-4o-mini" in openai_models


# --- errors ---------------------------------------------------------------------------------------------


async def test_openai_simulated_errors(oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as rate_limited:
        await oai.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}], extra_headers={"x-fake-status": "429"}
        )
    assert rate_limited.value.status_code == 429
    assert rate_limited.value.code == "rate_limit_exceeded"
    assert rate_limited.value.type == "requests"
    assert "Rate limit reached" in rate_limited.value.message
    assert rate_limited.value.body == {
        "message": rate_limited.value.body["message"],  # type: ignore[index]
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }

    with pytest.raises(openai.InternalServerError) as server_error:
        await oai.responses.create(
            model="gpt-4.1",
            input=PROMPT,
            extra_headers={"x-fake-status": "500", "x-fake-error-message": "boom for the test"},
        )
    assert server_error.value.status_code == 500
    assert server_error.value.type == "server_error"
    assert "boom for the test" in server_error.value.message


async def test_anthropic_simulated_errors(claude: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.RateLimitError) as rate_limited:
        await claude.messages.create(
            model="claude-haiku-4-5",
            max_tokens=16,
            messages=[{"role": "user", "content": PROMPT}],
            extra_headers={"x-fake-status": "429"},
        )
    assert rate_limited.value.type == "rate_limit_error"
    assert rate_limited.value.api_message == "Number of requests has exceeded your per-minute rate limit."
    assert rate_limited.value.request_id is not None
    assert rate_limited.value.body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": rate_limited.value.api_message},
        "request_id": rate_limited.value.request_id,
    }
    with pytest.raises(anthropic.OverloadedError) as overloaded:
        await claude.messages.create(
            model="claude-haiku-4-5",
            max_tokens=16,
            messages=[{"role": "user", "content": PROMPT}],
            extra_headers={"x-fake-status": "529"},
        )
    assert overloaded.value.type == "overloaded_error"


async def test_fail_times_counts_per_key(oai: openai.AsyncOpenAI) -> None:
    async def attempt(key: str) -> int:
        try:
            await oai.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": PROMPT}],
                extra_headers={"x-fake-fail-times": "2", "x-fake-key": key, "x-fake-status": "503"},
            )
        except openai.APIStatusError as error:
            return error.status_code
        return 200

    assert [await attempt("alpha") for _ in range(4)] == [503, 503, 200, 200]
    assert [await attempt("beta") for _ in range(3)] == [503, 503, 200]


async def test_sdk_retries_succeed_after_failures(fake_provider_url: str) -> None:
    async with openai.AsyncOpenAI(base_url=f"{fake_provider_url}/v1", api_key=OPENAI_KEY, max_retries=2) as client:
        completion = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": PROMPT}],
            extra_headers={"x-fake-fail-times": "1", "x-fake-key": "retry", "x-fake-retry-after": "0"},
        )
    assert completion.choices[0].message.content == REPLY


async def test_bad_bodies_get_provider_shaped_400(http: aiohttp.ClientSession, fake_provider_url: str) -> None:
    async with http.post(f"{fake_provider_url}/v1/chat/completions", data=b"{not json") as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("We could not parse the JSON body of your request.")

    async with http.post(f"{fake_provider_url}/v1/chat/completions", json={"model": "gpt-4o"}) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert (error["param"], error["code"]) == ("messages", "missing_required_parameter")

    headers = {"anthropic-version": "2023-06-01"}
    async with http.post(f"{fake_provider_url}/v1/messages", data=b"", headers=headers) as response:
        assert response.status == 400
        payload = await response.json()
    assert payload["type"] == "error"
    assert payload["error"]["type"] == "invalid_request_error"

    async with http.post(f"{fake_provider_url}/v1/messages", json={"model": "claude", "messages": []}) as response:
        assert response.status == 400
        assert (await response.json())["error"]["message"] == "anthropic-version: header is required"


async def test_bad_fake_header_and_unknown_path(http: aiohttp.ClientSession, fake_provider_url: str) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": PROMPT}]}
    async with http.post(
        f"{fake_provider_url}/v1/chat/completions", json=body, headers={"x-fake-cached-tokens": "x"}
    ) as response:
        assert response.status == 400
        assert "x-fake-cached-tokens" in (await response.json())["error"]["message"]
    async with http.get(f"{fake_provider_url}/v1/nope") as response:
        assert response.status == 404
        assert (await response.json())["error"] == {
            "message": "Invalid URL (GET /v1/nope)",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    async with http.post(
        f"{fake_provider_url}/v1/embeddings", json={"model": "text-embedding-3-small", "input": []}
    ) as response:
        assert response.status == 400
        assert (await response.json())["error"]["param"] == "input"


# --- recording and control plane ------------------------------------------------------------------------


async def test_requests_are_recorded_and_clearable(
    oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic, http: aiohttp.ClientSession, fake_provider_url: str
) -> None:
    async with http.get(f"{fake_provider_url}/healthz") as response:
        assert response.status == 200
    await oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        stream_options={"include_usage": True},
    )
    with pytest.raises(anthropic.InternalServerError):
        await claude.messages.create(
            model="claude-haiku-4-5",
            max_tokens=16,
            messages=[{"role": "user", "content": PROMPT}],
            extra_headers={"x-fake-status": "500"},
        )
    requests = await recorded(http, fake_provider_url)
    assert [(item["method"], item["path"]) for item in requests] == [
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/messages"),
    ]
    chat, message = requests
    # The key is recorded as a fingerprint only: which key arrived shows, the key itself never does.
    assert chat["headers"]["authorization"] == redacted_credential(f"Bearer {OPENAI_KEY}")
    assert chat["json"]["stream_options"] == {"include_usage": True}
    assert json.loads(base64.b64decode(chat["body_base64"])) == chat["json"]
    # anthropic 2.x sends the API key as a bearer token (1.x used x-api-key).
    assert message["headers"]["authorization"] == redacted_credential(f"Bearer {ANTHROPIC_KEY}")
    assert message["headers"]["anthropic-version"]
    assert message["headers"]["x-fake-status"] == "500"
    assert message["json"]["max_tokens"] == 16
    # Filtered by the fake: only the requests that carry every header value asked for.
    async with http.get(f"{fake_provider_url}/_fake/requests", params={"header": "X-Fake-Status:500"}) as response:
        assert [item["path"] for item in await response.json()] == ["/v1/messages"]
    async with http.get(
        f"{fake_provider_url}/_fake/requests", params=[("header", "x-fake-status:500"), ("header", "x-fake-status:404")]
    ) as response:
        assert await response.json() == []

    async with http.delete(f"{fake_provider_url}/_fake/requests") as response:
        assert response.status == 204
    assert await recorded(http, fake_provider_url) == []


async def test_the_request_log_serves_no_credential(http: aiohttp.ClientSession, fake_provider_url: str) -> None:
    """Whoever reads /_fake/requests (another caller, a request smuggled through a gateway) learns no key."""
    credentials = {
        "Authorization": "Bearer sk-caller-secret-1",
        "x-api-key": "sk-ant-caller-secret-2",
        "x-goog-api-key": "AIza-caller-secret-3",
        "api-key": "azure-caller-secret-4",
        "Candela-Auth": "Bearer cdl-caller-secret-5",
    }
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]}
    url = f"{fake_provider_url}/v1/chat/completions?key=query-secret-6&api-version=2024-10-21"
    async with http.post(url, json=body, headers={**credentials, "x-test-marker": "kept"}) as response:
        assert response.status == 200
    async with http.get(f"{fake_provider_url}/_fake/requests") as response:
        served = await response.text()
    for secret in [*(value.split()[-1] for value in credentials.values()), "query-secret-6"]:
        assert secret not in served, f"the request log serves {secret}"
    (request,) = await recorded(http, fake_provider_url)
    assert request["headers"]["authorization"] == redacted_credential("Bearer sk-caller-secret-1")
    assert request["headers"]["x-api-key"] == redacted_credential("sk-ant-caller-secret-2")
    assert request["headers"]["x-test-marker"] == "kept", "headers that are not credentials are kept as sent"
    assert request["query"] == "key=REDACTED&api-version=2024-10-21"


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
async def test_command_line_serves_and_stops_cleanly(stop_signal: signal.Signals) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "candela_stack.fake_provider",
        "--port",
        "0",
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        line = (await asyncio.wait_for(process.stderr.readline(), timeout=20)).decode()
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        assert match, line
        async with aiohttp.ClientSession() as session, session.get(f"{match.group(1)}/healthz") as response:
            assert response.status == 200
        process.send_signal(stop_signal)
        assert await asyncio.wait_for(process.wait(), timeout=20) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_command_line_refuses_non_loopback_host() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "candela_stack.fake_provider",
        "--port",
        "0",
        "--host",
        "0.0.0.0",
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=20)
    assert process.returncode == 2
    assert b"loopback" in stderr


async def test_usage_header_plays_a_provider_reporting_any_counts(
    http: aiohttp.ClientSession, fake_provider_url: str
) -> None:
    override = {"prompt_tokens": 2**63, "completion_tokens": -7, "total_tokens": 5e9}
    headers = {"authorization": f"Bearer {OPENAI_KEY}", "x-fake-usage": json.dumps(override)}
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]}
    async with http.post(f"{fake_provider_url}/v1/chat/completions", json=chat, headers=headers) as response:
        usage = (await response.json())["usage"]
    assert {key: usage[key] for key in override} == override
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0  # the rest is as usual
    stream = {**chat, "stream": True, "stream_options": {"include_usage": True}}
    async with http.post(f"{fake_provider_url}/v1/chat/completions", json=stream, headers=headers) as response:
        events = [json.loads(line[6:]) for line in (await response.text()).splitlines() if line.startswith("data: {")]
    assert {key: events[-1]["usage"][key] for key in override} == override
    anthropic_headers = {
        "x-api-key": ANTHROPIC_KEY,
        "anthropic-version": "2023-06-01",
        "x-fake-usage": '{"input_tokens": -7}',
    }
    message = {"model": "claude-haiku-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": PROMPT}]}
    async with http.post(f"{fake_provider_url}/v1/messages", json=message, headers=anthropic_headers) as response:
        assert (await response.json())["usage"]["input_tokens"] == -7
    async with http.post(
        f"{fake_provider_url}/v1/chat/completions", json=chat, headers={**headers, "x-fake-usage": "[1]"}
    ) as response:
        assert response.status == 400


@pytest.mark.parametrize(("name", "ending"), [("crlf", "\r\n"), ("cr", "\r"), ("lf", "\n")])
async def test_line_ending_header_frames_every_stream_line(
    http: aiohttp.ClientSession, fake_provider_url: str, name: str, ending: str
) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}], "stream": True}
    async with http.post(
        f"{fake_provider_url}/v1/chat/completions", json=body, headers={"x-fake-line-ending": name}
    ) as got:
        text = await got.text()
    assert text.endswith(f"data: [DONE]{ending}{ending}")
    other_endings = text.replace(ending, "")
    assert "\r" not in other_endings
    assert "\n" not in other_endings
    blocks = text.split(ending * 2)[:-1]
    assert [sse_data(block.replace(ending, "\n"))["choices"][0]["delta"].get("content") for block in blocks[1:-2]] == (
        REPLY_DELTAS
    )


async def test_write_bytes_header_sends_each_event_in_small_paced_pieces(
    http: aiohttp.ClientSession, fake_provider_url: str
) -> None:
    body = {"model": "gpt-4o-mini", "prompt": PROMPT, "stream": True, "max_tokens": 2}
    headers = {"x-fake-write-bytes": "16", "x-fake-write-delay-ms": "2", "x-fake-line-ending": "crlf"}
    pieces: list[bytes] = []
    async with http.post(f"{fake_provider_url}/v1/completions", json=body, headers=headers) as response:
        async for piece in response.content.iter_any():
            pieces.append(piece)
    stream = b"".join(pieces)
    assert stream.endswith(b"data: [DONE]\r\n\r\n")
    # Each write is a chunk of the HTTP body; paced, they arrive one by one (a few may still coalesce).
    assert len(pieces) > len(stream) // 16 // 2
    assert max(len(piece) for piece in pieces) < len(stream) // 2
