"""The fake provider's Gemini API and Vertex AI, driven by the real google-genai and anthropic SDKs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import anthropic
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from google.oauth2.credentials import Credentials

pytestmark = pytest.mark.unit

GEMINI_KEY = "gemini-test-key"
MODEL = "gemini-2.5-flash"
PROMPT = "Say hello"
REPLY = "Echo: Say hello lorem ipsum dolor sit amet consectetur adipiscing elit sed"
PROMPT_TOKENS = 8  # priming 3 + (overhead 3 + 2 words)


@pytest.fixture
async def clients() -> AsyncIterator[list[genai.Client]]:
    """The google-genai clients a test makes, closed after it (a client dropped mid-test closes its session)."""
    made: list[genai.Client] = []
    yield made
    for client in made:
        await client.aio.aclose()


def gemini_client(clients: list[genai.Client], fake_provider_url: str, **headers: str) -> genai.Client:
    client = genai.Client(
        api_key=GEMINI_KEY, http_options=types.HttpOptions(base_url=fake_provider_url, headers=headers)
    )
    clients.append(client)
    return client


async def test_generate_content_through_the_sdk(fake_provider_url: str, clients: list[genai.Client]) -> None:
    client = gemini_client(clients, fake_provider_url, **{"x-fake-reasoning-tokens": "5", "x-fake-cached-tokens": "4"})
    answer = await client.aio.models.generate_content(model=MODEL, contents=PROMPT)
    assert answer.text == REPLY
    assert answer.model_version == MODEL
    assert answer.candidates is not None
    assert answer.candidates[0].finish_reason == types.FinishReason.STOP
    usage = answer.usage_metadata
    assert usage is not None
    assert (usage.prompt_token_count, usage.candidates_token_count, usage.thoughts_token_count) == (8, 12, 5)
    assert (usage.cached_content_token_count, usage.total_token_count) == (4, 25)


async def test_stream_through_the_sdk_carries_usage_in_its_last_chunk(
    fake_provider_url: str, clients: list[genai.Client]
) -> None:
    client = gemini_client(clients, fake_provider_url)
    chunks = [chunk async for chunk in await client.aio.models.generate_content_stream(model=MODEL, contents=PROMPT)]
    assert "".join(chunk.text or "" for chunk in chunks) == REPLY
    assert len(chunks) == 6
    assert chunks[0].usage_metadata is not None
    assert chunks[0].usage_metadata.candidates_token_count is None
    last = chunks[-1].usage_metadata
    assert last is not None
    assert (last.prompt_token_count, last.candidates_token_count) == (PROMPT_TOKENS, 12)


async def test_token_limit_ends_with_max_tokens(fake_provider_url: str, clients: list[genai.Client]) -> None:
    answer = await gemini_client(clients, fake_provider_url).aio.models.generate_content(
        model=MODEL, contents=PROMPT, config=types.GenerateContentConfig(max_output_tokens=3)
    )
    assert answer.text == "Echo: Say hello"
    assert answer.candidates is not None
    assert answer.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS


async def test_count_tokens_and_embed_through_the_sdk(fake_provider_url: str, clients: list[genai.Client]) -> None:
    client = gemini_client(clients, fake_provider_url)
    counted = await client.aio.models.count_tokens(model=MODEL, contents=PROMPT)
    assert counted.total_tokens == PROMPT_TOKENS
    embedded = await client.aio.models.embed_content(
        model="gemini-embedding-001",
        contents=["one two three", "four"],
        config=types.EmbedContentConfig(output_dimensionality=8),
    )
    assert embedded.embeddings is not None
    assert [len(e.values or []) for e in embedded.embeddings] == [8, 8]


async def test_json_array_stream_is_one_array_written_element_by_element(
    fake_provider_url: str, clients: list[genai.Client]
) -> None:
    url = f"{fake_provider_url}/v1beta/models/{MODEL}:streamGenerateContent?key={GEMINI_KEY}"
    body = {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]}
    async with aiohttp.ClientSession() as http, http.post(url, json=body) as response:
        assert response.content_type == "application/json"
        pieces = [piece async for piece in response.content.iter_any()]
    elements = json.loads(b"".join(pieces))
    assert "".join(element["candidates"][0]["content"]["parts"][0]["text"] for element in elements) == REPLY
    assert elements[-1]["usageMetadata"]["candidatesTokenCount"] == 12
    assert elements[-1]["candidates"][0]["finishReason"] == "STOP"


async def test_a_missing_key_is_googles_403(fake_provider_url: str, clients: list[genai.Client]) -> None:
    async with aiohttp.ClientSession() as http:
        url = f"{fake_provider_url}/v1beta/models/{MODEL}:generateContent"
        async with http.post(url, json={"contents": [{"parts": [{"text": "hi"}]}]}) as response:
            assert response.status == 403
            error = (await response.json())["error"]
    assert (error["code"], error["status"]) == (403, "PERMISSION_DENIED")


async def test_simulated_error_raises_the_sdks_error(fake_provider_url: str, clients: list[genai.Client]) -> None:
    client = gemini_client(clients, fake_provider_url, **{"x-fake-status": "429"})
    with pytest.raises(genai_errors.ClientError) as raised:
        await client.aio.models.generate_content(model=MODEL, contents=PROMPT)
    assert (raised.value.code, raised.value.status) == (429, "RESOURCE_EXHAUSTED")


async def test_vertex_gemini_through_the_sdk(fake_provider_url: str, clients: list[genai.Client]) -> None:
    client = genai.Client(
        vertexai=True,
        project="demo-project",
        location="us-central1",
        credentials=Credentials(token="ya29.test-token"),  # type: ignore[no-untyped-call]
        http_options=types.HttpOptions(base_url=fake_provider_url),
    )
    clients.append(client)
    answer = await client.aio.models.generate_content(model=MODEL, contents=PROMPT)
    assert answer.text == REPLY
    chunks = [chunk async for chunk in await client.aio.models.generate_content_stream(model=MODEL, contents=PROMPT)]
    assert "".join(chunk.text or "" for chunk in chunks) == REPLY


async def test_claude_on_vertex_through_the_anthropic_sdk(fake_provider_url: str, clients: list[genai.Client]) -> None:
    async with anthropic.AsyncAnthropicVertex(
        region="us-east5", project_id="demo-project", access_token="ya29.test-token", base_url=f"{fake_provider_url}/v1"
    ) as client:
        message = await client.messages.create(
            model="claude-sonnet-4-5@20250929", max_tokens=100, messages=[{"role": "user", "content": PROMPT}]
        )
        assert message.content[0].type == "text"
        assert message.content[0].text == REPLY
        assert message.model == "claude-sonnet-4-5@20250929"
        async with client.messages.stream(
            model="claude-sonnet-4-5@20250929", max_tokens=100, messages=[{"role": "user", "content": PROMPT}]
        ) as stream:
            assert "".join([text async for text in stream.text_stream]) == REPLY
        counted = await client.messages.count_tokens(
            model="claude-sonnet-4-5@20250929", messages=[{"role": "user", "content": PROMPT}]
        )
        assert counted.input_tokens == PROMPT_TOKENS


@pytest.mark.parametrize("stream_options", [None, {"include_usage": True}, {"include_usage": False}])
async def test_openai_compatible_stream_reports_usage_unasked_on_its_last_chunk(
    fake_provider_url: str, stream_options: dict[str, bool] | None
) -> None:
    """Gemini's OpenAI-compatible endpoint puts ``usage`` on the chunk with the finish reason, whatever
    ``stream_options`` says, and sends no usage-only chunk."""
    async with openai.AsyncOpenAI(
        base_url=f"{fake_provider_url}/v1beta/openai", api_key=GEMINI_KEY, max_retries=0
    ) as client:
        extra: dict[str, object] = {} if stream_options is None else {"stream_options": stream_options}
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": PROMPT}], stream=True, **extra
        )  # type: ignore[call-overload]
        chunks = [chunk async for chunk in stream]
    assert all(chunk.choices for chunk in chunks)
    assert [chunk.usage is not None for chunk in chunks] == [False] * (len(chunks) - 1) + [True]
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop"
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (PROMPT_TOKENS, len(REPLY.split()))
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == REPLY
