"""Gemini and Vertex AI through the gateway with the real SDKs (google-genai, openai, anthropic's
AnthropicVertex), and what is logged: provider, model, tokens, exact cost, and never the caller's key."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from decimal import Decimal

import anthropic
import httpx
import openai
import pytest
from genai_prices import Usage, calc_price
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from google.oauth2.credentials import Credentials

from candela.query.v1 import query_service_pb2_grpc
from candela_stack.stack import Bootstrap, Stack
from tests.e2e.conftest import expected_cost, wait_for_logged_request
from tests.e2e.proxy_support import fake_requests

pytestmark = pytest.mark.e2e

GEMINI_KEY = "AIza-gemini-key-never-logged"
OAUTH_TOKEN = "ya29.oauth-token-never-logged"
MODEL = "gemini-2.5-flash"
PROMPT = "Plan a short trip"
PROMPT_TOKENS = 3 + 3 + len(PROMPT.split())
COMPLETION_TOKENS = 12


def _gemini(stack: Stack, candela_key: str, **headers: str) -> genai.Client:
    return genai.Client(
        api_key=GEMINI_KEY,
        http_options=types.HttpOptions(
            base_url=f"{stack.gateway_url}/gemini", headers={"Candela-Auth": f"Bearer {candela_key}", **headers}
        ),
    )


def _assert_no_secret(logged: object) -> None:
    text = str(logged)
    assert GEMINI_KEY not in text
    assert OAUTH_TOKEN not in text


def test_generate_stream_count_and_embed_are_logged_and_priced(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub, closing: contextlib.ExitStack
) -> None:
    client = closing.enter_context(_gemini(stack, admin.api_key))
    answer = client.models.generate_content(model=MODEL, contents=PROMPT)
    assert answer.text is not None
    assert answer.text.startswith("Echo: Plan a short trip")
    assert answer.sdk_http_response is not None
    headers = answer.sdk_http_response.headers or {}
    logged = wait_for_logged_request(query_stub, admin.api_key, headers["candela-id"])
    record = logged.request
    assert (record.provider, record.model, record.path) == (
        "google",
        MODEL,
        f"/v1/models/{MODEL}:generateContent",
    )
    assert (record.usage.prompt_tokens, record.usage.completion_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert record.cost_usd == str(expected_cost(MODEL, "google", PROMPT_TOKENS, COMPLETION_TOKENS))
    assert headers["candela-cost-usd"] == record.cost_usd
    assert (record.finish_reason, record.status_code, record.streamed) == ("STOP", 200, False)
    assert json.loads(logged.response_body)["usageMetadata"]["candidatesTokenCount"] == COMPLETION_TOKENS
    _assert_no_secret(logged)

    chunks = list(client.models.generate_content_stream(model=MODEL, contents=PROMPT))
    assert "".join(chunk.text or "" for chunk in chunks).startswith("Echo: Plan a short trip")
    assert chunks[0].sdk_http_response is not None
    stream_id = (chunks[0].sdk_http_response.headers or {})["candela-id"]
    streamed = wait_for_logged_request(query_stub, admin.api_key, stream_id).request
    assert streamed.streamed
    assert streamed.HasField("time_to_first_token_ms")
    assert (streamed.usage.prompt_tokens, streamed.usage.completion_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert streamed.cost_usd == record.cost_usd

    assert client.models.count_tokens(model=MODEL, contents=PROMPT).total_tokens == PROMPT_TOKENS
    embedded = client.models.embed_content(
        model="gemini-embedding-001", contents=["one two three", "four"], config={"output_dimensionality": 4}
    )
    assert embedded.embeddings is not None
    assert embedded.sdk_http_response is not None
    embed_id = (embedded.sdk_http_response.headers or {})["candela-id"]
    embed_record = wait_for_logged_request(query_stub, admin.api_key, embed_id).request
    assert (embed_record.model, embed_record.usage.prompt_tokens) == ("gemini-embedding-001", 4)
    assert embed_record.cost_usd == format(expected_cost("gemini-embedding-001", "google", 4, 0), "f")


def test_json_array_stream_with_the_key_in_the_query_is_relayed_and_logged_without_it(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub
) -> None:
    url = f"{stack.gateway_url}/gemini/v1beta/models/{MODEL}:streamGenerateContent?key={GEMINI_KEY}"
    body = {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]}
    headers = {"Candela-Auth": f"Bearer {admin.api_key}", "x-fake-delay-ms": "20"}
    with httpx.stream("POST", url, json=body, headers=headers, timeout=30) as response:
        assert response.status_code == 200
        pieces = list(response.iter_raw())
        request_id = response.headers["candela-id"]
    # Relayed as it was generated: one write per element (and the closing bracket), not one body at the end.
    assert len(pieces) >= 6
    elements = json.loads(b"".join(pieces))
    assert elements[-1]["usageMetadata"]["candidatesTokenCount"] == COMPLETION_TOKENS
    logged = wait_for_logged_request(query_stub, admin.api_key, request_id)
    assert logged.request.path == f"/v1beta/models/{MODEL}:streamGenerateContent"
    assert logged.request.streamed
    assert logged.request.usage.completion_tokens == COMPLETION_TOKENS
    assert logged.request.cost_usd == str(expected_cost(MODEL, "google", PROMPT_TOKENS, COMPLETION_TOKENS))
    assert logged.response_body == b"".join(pieces).decode()
    _assert_no_secret(logged)


def test_refusals_take_googles_error_shape(stack: Stack, closing: contextlib.ExitStack) -> None:
    client = closing.enter_context(_gemini(stack, "not-a-candela-key"))
    with pytest.raises(genai_errors.ClientError) as raised:
        client.models.generate_content(model=MODEL, contents=PROMPT)
    assert (raised.value.code, raised.value.status) == (401, "UNAUTHENTICATED")
    # A location that is no host label never picks another upstream host: a 404 in Google's shape.
    path = "/vertex/v1/projects/p/locations/evil.example.com/publishers/google/models/m:generateContent"
    refused = httpx.post(f"{stack.gateway_url}{path}", json={}, headers={"Candela-Auth": "Bearer x"}, timeout=30)
    assert refused.status_code == 404
    assert refused.json()["error"]["status"] == "NOT_FOUND"


def test_openai_compatible_endpoint_is_logged_as_google(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub, closing: contextlib.ExitStack
) -> None:
    client = closing.enter_context(
        openai.OpenAI(
            base_url=f"{stack.gateway_url}/gemini/v1beta/openai",
            api_key=GEMINI_KEY,
            default_headers={"Candela-Auth": f"Bearer {admin.api_key}"},
            max_retries=0,
        )
    )
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=[{"role": "user", "content": PROMPT}])
    assert raw.parse().choices[0].message.content.startswith("Echo: Plan a short trip")  # type: ignore[union-attr]
    record = wait_for_logged_request(query_stub, admin.api_key, raw.headers["candela-id"]).request
    assert (record.provider, record.model, record.path) == ("google", MODEL, "/v1beta/openai/chat/completions")
    assert record.cost_usd == str(expected_cost(MODEL, "google", PROMPT_TOKENS, COMPLETION_TOKENS))


def test_openai_compatible_streams_are_priced_from_the_usage_gemini_sends_unasked(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub, closing: contextlib.ExitStack
) -> None:
    """Gemini reports a stream's usage on its last chunk without stream_options: the stream is priced, and the
    body goes upstream as the client wrote it (no stream_options added), so the client gets what Gemini sent."""
    marker = uuid.uuid4().hex
    client = closing.enter_context(
        openai.OpenAI(
            base_url=f"{stack.gateway_url}/gemini/v1beta/openai",
            api_key=GEMINI_KEY,
            default_headers={"Candela-Auth": f"Bearer {admin.api_key}", "x-test-marker": marker},
            max_retries=0,
        )
    )
    with client.chat.completions.with_streaming_response.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}], stream=True
    ) as response:
        request_id = response.headers["candela-id"]
        chunks = list(response.parse())
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks).startswith("Echo: Plan a short trip")
    assert [chunk.usage is not None for chunk in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].choices[0].finish_reason == "stop"
    (sent,) = fake_requests(stack, x_test_marker=marker)
    assert "stream_options" not in sent["json"]
    record = wait_for_logged_request(query_stub, admin.api_key, request_id).request
    assert (record.provider, record.streamed) == ("google", True)
    assert (record.usage.prompt_tokens, record.usage.completion_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert record.cost_usd == str(expected_cost(MODEL, "google", PROMPT_TOKENS, COMPLETION_TOKENS))


def test_vertex_gemini_and_claude_are_logged_as_google_vertex(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub, closing: contextlib.ExitStack
) -> None:
    candela = {"Candela-Auth": f"Bearer {admin.api_key}"}
    gemini = closing.enter_context(
        genai.Client(
            vertexai=True,
            project="demo-project",
            location="us-central1",
            credentials=Credentials(token=OAUTH_TOKEN),  # type: ignore[no-untyped-call]
            http_options=types.HttpOptions(base_url=f"{stack.gateway_url}/vertex", headers=candela),
        )
    )
    answer = gemini.models.generate_content(model=MODEL, contents=PROMPT)
    assert answer.sdk_http_response is not None
    logged = wait_for_logged_request(query_stub, admin.api_key, (answer.sdk_http_response.headers or {})["candela-id"])
    record = logged.request
    assert (record.provider, record.model) == ("google-vertex", MODEL)
    assert (
        record.path
        == f"/v1beta1/projects/demo-project/locations/us-central1/publishers/google/models/{MODEL}:generateContent"
    )
    assert record.cost_usd == str(expected_cost(MODEL, "google", PROMPT_TOKENS, COMPLETION_TOKENS))
    _assert_no_secret(logged)

    claude_model = "claude-sonnet-4-5@20250929"
    claude = closing.enter_context(
        anthropic.AnthropicVertex(
            region="us-east5",
            project_id="demo-project",
            access_token=OAUTH_TOKEN,
            base_url=f"{stack.gateway_url}/vertex/v1",
            default_headers=candela,
            max_retries=0,
        )
    )
    raw = claude.messages.with_raw_response.create(
        model=claude_model, max_tokens=100, messages=[{"role": "user", "content": PROMPT}]
    )
    assert raw.parse().content[0].type == "text"
    claude_record = wait_for_logged_request(query_stub, admin.api_key, raw.headers["candela-id"]).request
    assert (claude_record.provider, claude_record.model) == ("google-vertex", claude_model)
    assert (claude_record.usage.prompt_tokens, claude_record.usage.completion_tokens) == (
        PROMPT_TOKENS,
        COMPLETION_TOKENS,
    )
    assert claude_record.cost_usd == str(expected_cost(claude_model, "google", PROMPT_TOKENS, COMPLETION_TOKENS))

    with claude.messages.stream(
        model=claude_model, max_tokens=100, messages=[{"role": "user", "content": PROMPT}]
    ) as stream:
        assert "".join(stream.text_stream).startswith("Echo: Plan a short trip")
        stream_id = stream.response.headers["candela-id"]
    streamed = wait_for_logged_request(query_stub, admin.api_key, stream_id).request
    assert (streamed.streamed, streamed.usage.completion_tokens) == (True, COMPLETION_TOKENS)
    assert streamed.path.endswith(":streamRawPredict")
    assert streamed.cost_usd == claude_record.cost_usd


def test_cache_hits_whatever_key_is_in_the_query(stack: Stack, admin: Bootstrap) -> None:
    url = f"{stack.gateway_url}/gemini/v1beta/models/{MODEL}:generateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": "cache me please"}]}]}
    headers = {
        "Candela-Auth": f"Bearer {admin.api_key}",
        "Candela-Cache-Enabled": "true",
        "Candela-Cache-Seed": f"gemini-{time.time_ns()}",
    }
    first = httpx.post(f"{url}?key={GEMINI_KEY}", json=body, headers=headers, timeout=30)
    second = httpx.post(f"{url}?key=another-key-of-the-same-org", json=body, headers=headers, timeout=30)
    assert (first.headers["candela-cache"], second.headers["candela-cache"]) == ("MISS", "HIT")
    assert second.json() == first.json()


def test_audio_input_with_cache_reads_is_priced_by_modality(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub, closing: contextlib.ExitStack
) -> None:
    """Google breaks the prompt and its cache reads down by modality: audio, fresh and cached, is priced at
    its own rates (genai-prices'), not as text."""
    usage = {
        "promptTokenCount": 1200,
        "cachedContentTokenCount": 1000,
        "candidatesTokenCount": COMPLETION_TOKENS,
        "totalTokenCount": 1200 + COMPLETION_TOKENS,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1100}, {"modality": "AUDIO", "tokenCount": 100}],
        "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 940}, {"modality": "AUDIO", "tokenCount": 60}],
    }
    client = closing.enter_context(_gemini(stack, admin.api_key, **{"x-fake-usage": json.dumps(usage)}))
    answer = client.models.generate_content(model=MODEL, contents=PROMPT)
    assert answer.usage_metadata is not None
    assert answer.usage_metadata.cached_content_token_count == 1000
    assert answer.sdk_http_response is not None
    request_id = (answer.sdk_http_response.headers or {})["candela-id"]
    record = wait_for_logged_request(query_stub, admin.api_key, request_id).request
    assert (record.usage.prompt_tokens, record.usage.cache_read_tokens) == (1200, 1000)
    assert record.usage.audio_prompt_tokens == 100
    priced = Usage(
        input_tokens=1200,
        cache_read_tokens=1000,
        input_audio_tokens=100,
        cache_audio_read_tokens=60,
        output_tokens=COMPLETION_TOKENS,
    )
    expected = calc_price(priced, model_ref=MODEL, provider_id="google").total_price
    as_text = Usage(input_tokens=1200, cache_read_tokens=1000, output_tokens=COMPLETION_TOKENS)
    assert Decimal(record.cost_usd) == expected
    assert expected != calc_price(as_text, model_ref=MODEL, provider_id="google").total_price
