"""Azure OpenAI, the OpenAI-compatible family and the non-JSON endpoints, through the gateway with the real
openai SDK (``AzureOpenAI`` and ``OpenAI``), as an application calls them: the SDK gets the provider's answer,
the provider gets the SDK's request (key included, never logged), and the log names the provider, the
deployment and the model, prices the call, and keeps each body or says why it does not."""

from __future__ import annotations

import base64
import contextlib
import json
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from genai_prices import Usage, calc_price

from candela.query.v1 import query_service_pb2, query_service_pb2_grpc
from candela_proxy.compatible import MEMBERS
from candela_stack.fake_provider import redacted_credential
from candela_stack.fake_provider.openai_audio import audio_bytes
from candela_stack.stack import Bootstrap, Stack
from tests.e2e.conftest import expected_cost, wait_for_logged_request
from tests.e2e.proxy_support import fake_requests

pytestmark = pytest.mark.e2e

MESSAGES: Any = [{"role": "user", "content": "Say hello"}]
PROMPT_TOKENS, REPLY_TOKENS = 8, 12  # the fake's counts for MESSAGES
API_VERSION = "2024-10-21"
AZURE_KEY = "azure-secret-key-1"
# A model each member prices (genai-prices, under the member's provider id); vLLM and Ollama stay unpriced.
MODELS = {
    "groq": "llama-3.3-70b-versatile",
    "mistral": "mistral-small-latest",
    "deepseek": "deepseek-chat",
    "xai": "grok-3",
    "together": "meta-llama/Llama-3.3-70B-Instruct-Turbo",
    "fireworks": "accounts/fireworks/models/llama-v3p1-8b-instruct",
    "openrouter": "openai/gpt-4o-mini",
    "perplexity": "sonar",
    "cerebras": "llama3.1-8b",
    "vllm": "meta-llama/Llama-3.1-8B-Instruct",
    "ollama": "llama3.2",
}


def _logged(
    query_stub: query_service_pb2_grpc.QueryServiceStub, admin: Bootstrap, request_id: str
) -> query_service_pb2.GetRequestResponse:
    return wait_for_logged_request(query_stub, admin.api_key, request_id)


def _azure(
    closing: contextlib.ExitStack, base: str, admin: Bootstrap, marker: str, **headers: str
) -> openai.AzureOpenAI:
    return closing.enter_context(
        openai.AzureOpenAI(
            azure_endpoint=f"{base}/azure",
            api_version=API_VERSION,
            api_key=AZURE_KEY,
            default_headers={"Candela-Auth": f"Bearer {admin.api_key}", "x-test-marker": marker, **headers},
            max_retries=0,
        )
    )


def test_azure_openai_sdk_deployments_stream_and_not(
    stack: Stack,
    admin: Bootstrap,
    query_stub: query_service_pb2_grpc.QueryServiceStub,
    closing: contextlib.ExitStack,
) -> None:
    marker = uuid.uuid4().hex
    client = _azure(closing, stack.gateway_url, admin, marker)
    raw = client.chat.completions.with_raw_response.create(
        model="prod-chat", messages=MESSAGES, extra_headers={"x-fake-azure-model": "gpt-4o-2024-08-06"}
    )
    assert raw.parse().model == "gpt-4o-2024-08-06"
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    ) as s:
        streamed_id = s.headers["candela-id"]
        chunks = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: {")]
    # Azure's stream opens with its content-filter event; the usage chunk Candela asked for is not shown to a
    # client that did not ask for it.
    assert chunks[0]["prompt_filter_results"]
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks[1:] if chunk["choices"])
    assert text.startswith("Echo: Say hello")
    assert all(chunk.get("usage") is None for chunk in chunks)

    received = fake_requests(stack, x_test_marker=marker)
    assert [(r["path"], r["query"]) for r in received] == [
        ("/openai/deployments/prod-chat/chat/completions", f"api-version={API_VERSION}"),
        ("/openai/deployments/gpt-4o-mini/chat/completions", f"api-version={API_VERSION}"),
    ]
    assert {r["headers"]["api-key"] for r in received} == {redacted_credential(AZURE_KEY)}
    assert received[1]["json"]["stream_options"] == {"include_usage": True}

    plain = _logged(query_stub, admin, raw.headers["candela-id"]).request
    assert (plain.provider, plain.path, plain.model, plain.response_model) == (
        "azure",
        "/openai/deployments/prod-chat/chat/completions",
        "prod-chat",
        "gpt-4o-2024-08-06",
    )
    assert plain.properties["azure-deployment"] == "prod-chat"
    assert Decimal(plain.cost_usd) == expected_cost("gpt-4o-2024-08-06", "azure", PROMPT_TOKENS, REPLY_TOKENS)
    stream = _logged(query_stub, admin, streamed_id).request
    assert (stream.provider, stream.streamed, stream.usage.completion_tokens) == ("azure", True, REPLY_TOKENS)
    assert Decimal(stream.cost_usd) == expected_cost("gpt-4o-mini", "azure", PROMPT_TOKENS, REPLY_TOKENS)


def test_azure_resource_named_by_the_client_goes_through_the_address_policy(
    stack: Stack,
    admin: Bootstrap,
    query_stub: query_service_pb2_grpc.QueryServiceStub,
    closing: contextlib.ExitStack,
    local_target_proxy: str,
) -> None:
    assert stack.fake_provider_url is not None
    marker = uuid.uuid4().hex
    # The stack's proxy reaches public resources only: a loopback "resource" is refused, nothing goes out.
    refused = _azure(closing, stack.gateway_url, admin, marker, **{"Candela-OpenAI-Api-Base": stack.fake_provider_url})
    with pytest.raises(openai.PermissionDeniedError) as denied:
        refused.chat.completions.create(model="prod-chat", messages=MESSAGES)
    assert denied.value.code == "target_not_allowed"
    assert fake_requests(stack, x_test_marker=marker) == []

    # Where the operator allowed that host, Helicone's header names the resource; the deployment's answer
    # names no model, so the operator's map prices it.
    allowed = _azure(
        closing,
        local_target_proxy,
        admin,
        marker,
        **{"Helicone-OpenAI-Api-Base": stack.fake_provider_url, "x-fake-azure-model": ""},
    )
    raw = allowed.chat.completions.with_raw_response.create(model="prod-chat", messages=MESSAGES)
    assert raw.parse().choices[0].message.content
    logged = _logged(query_stub, admin, raw.headers["candela-id"]).request
    assert (logged.provider, logged.model, logged.response_model) == ("azure", "gpt-4o", "")
    assert logged.target_url == stack.fake_provider_url
    assert Decimal(logged.cost_usd) == expected_cost("gpt-4o", "azure", PROMPT_TOKENS, REPLY_TOKENS)

    # The v1 API of the same resource, with the plain OpenAI client.
    v1 = closing.enter_context(
        openai.OpenAI(
            base_url=f"{local_target_proxy}/azure/openai/v1",
            api_key=AZURE_KEY,
            default_headers={
                "Candela-Auth": f"Bearer {admin.api_key}",
                "Candela-OpenAI-Api-Base": stack.fake_provider_url,
            },
            max_retries=0,
        )
    )
    response = v1.responses.with_raw_response.create(model="gpt-4o-mini", input="Say hello")
    assert response.parse().model == "gpt-4o-mini"
    logged = _logged(query_stub, admin, response.headers["candela-id"]).request
    assert (logged.provider, logged.path) == ("azure", "/openai/v1/responses")
    assert logged.cost_usd


def test_every_compatible_provider_is_named_and_priced(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub, closing: contextlib.ExitStack
) -> None:
    marker = uuid.uuid4().hex
    answered: dict[str, str] = {}
    for member in MEMBERS:
        # The provider's own layout where it has one (/groq/openai/v1), else /<name>/v1.
        client = closing.enter_context(
            openai.OpenAI(
                base_url=f"{stack.gateway_url}/{member.name}{member.native_prefix or '/v1'}",
                api_key=f"key-{member.name}",
                default_headers={"Candela-Auth": f"Bearer {admin.api_key}", "x-test-marker": marker},
                max_retries=0,
            )
        )
        raw = client.chat.completions.with_raw_response.create(model=MODELS[member.name], messages=MESSAGES)
        assert raw.parse().model == MODELS[member.name]
        answered[member.name] = raw.headers["candela-id"]
    for member in MEMBERS:
        logged = _logged(query_stub, admin, answered[member.name]).request
        assert (logged.provider, logged.path, logged.status_code) == (member.name, "/v1/chat/completions", 200)
        if member.price_id:
            expected = expected_cost(MODELS[member.name], member.price_id, PROMPT_TOKENS, REPLY_TOKENS)
            assert Decimal(logged.cost_usd) == expected, member.name
        else:
            assert not logged.HasField("cost_usd"), member.name

    # Streams: Groq takes stream_options (asked for usage, priced, the chunk hidden); Mistral is sent the
    # body as the client wrote it.
    stream_marker = uuid.uuid4().hex
    for name in ("groq", "mistral"):
        client = closing.enter_context(
            openai.OpenAI(
                base_url=f"{stack.gateway_url}/{name}/v1",
                api_key="k",
                default_headers={"Candela-Auth": f"Bearer {admin.api_key}", "x-test-marker": stream_marker},
                max_retries=0,
            )
        )
        with client.chat.completions.with_streaming_response.create(
            model=MODELS[name], messages=MESSAGES, stream=True
        ) as response:
            answered[name] = response.headers["candela-id"]
            assert all(json.loads(line[6:])["choices"] for line in response.iter_lines() if line.startswith("data: {"))
    sent = {request["json"]["model"]: request["json"] for request in fake_requests(stack, x_test_marker=stream_marker)}
    assert sent[MODELS["groq"]]["stream_options"] == {"include_usage": True}
    assert "stream_options" not in sent[MODELS["mistral"]]
    groq = _logged(query_stub, admin, answered["groq"]).request
    assert Decimal(groq.cost_usd) == expected_cost(MODELS["groq"], "groq", PROMPT_TOKENS, REPLY_TOKENS)


def test_non_json_endpoints_pass_through_and_are_logged_with_their_content_type(
    stack: Stack,
    admin: Bootstrap,
    query_stub: query_service_pb2_grpc.QueryServiceStub,
    closing: contextlib.ExitStack,
    tmp_path: Path,
) -> None:
    marker = uuid.uuid4().hex
    client = closing.enter_context(
        openai.OpenAI(
            base_url=f"{stack.gateway_url}/v1",
            api_key="sk-media",
            default_headers={"Candela-Auth": f"Bearer {admin.api_key}", "x-test-marker": marker},
            max_retries=0,
            timeout=60,
        )
    )
    # A multipart upload, small enough to be logged whole: its model is read from the form and priced.
    audio = b"RIFF fake wave " * 200
    upload = tmp_path / "hello.wav"
    upload.write_bytes(audio)
    with upload.open("rb") as file:
        transcribed = client.audio.transcriptions.with_raw_response.create(model="gpt-4o-transcribe", file=file)
    assert transcribed.parse().text.startswith("Echo: hello.wav")
    logged = _logged(query_stub, admin, transcribed.headers["candela-id"])
    record = logged.request
    assert record.model == "gpt-4o-transcribe"
    assert record.properties["candela-request-content-type"].startswith("multipart/form-data; boundary=")
    assert record.properties["candela-response-content-type"].startswith("application/json")
    assert audio.decode() in logged.request_body
    tokens = len(audio) // 100
    assert record.usage.audio_prompt_tokens == tokens
    usage = Usage(input_tokens=tokens, input_audio_tokens=tokens, output_tokens=record.usage.completion_tokens)
    assert (
        Decimal(record.cost_usd) == calc_price(usage, model_ref="gpt-4o-transcribe", provider_id="openai").total_price
    )

    # Binary answers above the limit (1 MiB by default) reach the client whole; the log keeps a marker.
    size = 1_500_000
    speech = client.audio.speech.with_raw_response.create(
        model="tts-1", voice="alloy", input="Say hello", extra_headers={"x-fake-audio-bytes": str(size)}
    )
    assert speech.content == audio_bytes("Say hello", size)
    logged = _logged(query_stub, admin, speech.headers["candela-id"])
    assert logged.request.properties["candela-response-content-type"] == "audio/mpeg"
    assert logged.response_body.startswith("[candela: audio/mpeg body of 1500000 bytes not logged")
    assert json.loads(logged.request_body)["voice"] == "alloy"

    # A file upload above the limit keeps its form fields in the log, the file's content replaced by a
    # marker; its small binary content back is kept.
    content = bytes(range(256)) * 5000
    created = client.files.with_raw_response.create(file=("data.bin", content), purpose="user_data")
    file_id = created.parse().id
    logged = _logged(query_stub, admin, created.headers["candela-id"])
    assert 'name="purpose"\r\n\r\nuser_data\r\n' in logged.request_body
    assert 'filename="data.bin"' in logged.request_body
    assert f"part of {len(content)} bytes not logged: the body is larger than" in logged.request_body
    assert len(logged.request_body) < 2000
    assert json.loads(logged.response_body)["bytes"] == len(content)

    # A large audio upload: the model, prompt and language stay readable in the log.
    long_audio = b"RIFF" + bytes(range(256)) * 4200
    with_fields = client.audio.transcriptions.with_raw_response.create(
        model="whisper-1", file=("meeting.wav", long_audio), prompt="Names: Zoë, Ngũgĩ", language="fr"
    )
    assert with_fields.parse().text
    logged = _logged(query_stub, admin, with_fields.headers["candela-id"])
    assert logged.request.model == "whisper-1"
    body = logged.request_body
    for field, value in (("model", "whisper-1"), ("prompt", "Names: Zoë, Ngũgĩ"), ("language", "fr")):
        assert f'name="{field}"\r\n\r\n{value}\r\n' in body, field
    assert f"part of {len(long_audio)} bytes not logged" in body
    assert logged.request_body_bytes == b""
    small = b"\x00\x01binary\xff"
    small_id = client.files.create(file=("small.bin", small), purpose="user_data").id
    back = client.files.with_raw_response.content(small_id)
    assert back.content == small
    logged = _logged(query_stub, admin, back.headers["candela-id"])
    assert logged.request.properties["candela-response-content-type"] == "application/octet-stream"
    # Bytes that are not UTF-8 come back byte for byte, never as text with replacement characters.
    assert (logged.response_body, logged.response_body_bytes) == ("", small)

    # A binary answer within the limit is kept exactly, over gRPC and REST (base64 in JSON) alike; the
    # request beside it, JSON, stays text.
    short_speech = client.audio.speech.with_raw_response.create(
        model="tts-1", voice="alloy", input="Say hi", extra_headers={"x-fake-audio-bytes": "5000"}
    )
    spoken = audio_bytes("Say hi", 5000)
    assert short_speech.content == spoken
    logged = _logged(query_stub, admin, short_speech.headers["candela-id"])
    assert (logged.response_body, logged.response_body_bytes) == ("", spoken)
    assert json.loads(logged.request_body)["input"] == "Say hi"
    assert logged.request_body_bytes == b""
    rest = httpx.get(
        f"{stack.gateway_url}/v1/request/{short_speech.headers['candela-id']}",
        headers={"Authorization": f"Bearer {admin.api_key}"},
        timeout=10,
    )
    assert rest.status_code == 200, rest.text
    assert base64.b64decode(rest.json()["responseBodyBytes"]) == spoken
    assert rest.json()["responseBody"] == ""
    assert json.loads(rest.json()["requestBody"])["input"] == "Say hi"

    # An image edit (multipart in, JSON out) and a non-JSON body on a JSON path: never a 400 for not being JSON.
    edited = client.images.edit(model="gpt-image-1", image=("dot.png", b"\x89PNG\r\n" + b"\0" * 100), prompt="bluer")
    assert edited.data
    assert edited.data[0].b64_json
    plain = httpx.post(
        f"{stack.gateway_url}/v1/audio/transcriptions",
        content=b"raw audio bytes",
        headers={"Candela-Auth": f"Bearer {admin.api_key}", "Content-Type": "audio/wav"},
        timeout=30,
    )
    assert plain.status_code == 400
    assert "multipart/form-data" in plain.json()["error"]["message"]  # the provider's answer, passed through
    assert _logged(query_stub, admin, plain.headers["candela-id"]).request.status_code == 400
    assert file_id
