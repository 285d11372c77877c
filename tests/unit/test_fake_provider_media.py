"""The fake provider's non-JSON OpenAI APIs (audio, images, files, batches) and Azure OpenAI's paths, through
the real openai SDK (``OpenAI`` and ``AzureOpenAI``) as an application would call them."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator

import openai
import pytest

from candela_stack.fake_provider.openai_audio import audio_bytes

pytestmark = pytest.mark.unit


@pytest.fixture
async def oai(fake_provider_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{fake_provider_url}/v1", api_key="sk-fake", max_retries=0) as client:
        yield client


async def test_transcription_of_an_upload_reports_audio_tokens(oai: openai.AsyncOpenAI) -> None:
    audio = bytes(range(256)) * 10
    result = await oai.audio.transcriptions.create(model="gpt-4o-transcribe", file=("hello.wav", io.BytesIO(audio)))
    assert result.text.startswith("Echo: hello.wav 2560 bytes")
    assert result.usage is not None
    assert result.usage.type == "tokens"
    assert result.usage.input_tokens == 25


async def test_whisper_reports_a_duration_and_text_formats_are_plain(oai: openai.AsyncOpenAI) -> None:
    result = await oai.audio.transcriptions.create(model="whisper-1", file=("a.mp3", b"x" * 40_000))
    assert result.usage is not None
    assert result.usage.type == "duration"
    assert result.usage.seconds == 2
    text = await oai.audio.transcriptions.create(model="whisper-1", file=("a.mp3", b"x"), response_format="text")
    assert str(text).startswith("Echo: a.mp3 1 bytes")


async def test_speech_is_binary_audio_of_the_asked_size(oai: openai.AsyncOpenAI) -> None:
    answer = await oai.audio.speech.with_raw_response.create(
        model="tts-1", voice="alloy", input="Say hello", extra_headers={"x-fake-audio-bytes": "5000"}
    )
    assert answer.headers["content-type"] == "audio/mpeg"
    assert answer.content == audio_bytes("Say hello", 5000)


async def test_image_generation_and_edit(oai: openai.AsyncOpenAI) -> None:
    generated = await oai.images.generate(model="gpt-image-1", prompt="a red dot")
    assert generated.data
    assert generated.data[0].b64_json
    assert base64.b64decode(generated.data[0].b64_json).startswith(b"\x89PNG")
    edited = await oai.images.edit(model="gpt-image-1", image=("dot.png", b"\x89PNG" + b"\0" * 3000), prompt="bluer")
    assert edited.usage is not None
    assert edited.usage.input_tokens == 1 + 3


async def test_files_round_trip_and_a_batch(oai: openai.AsyncOpenAI) -> None:
    content = b'{"custom_id": "1"}\n' + bytes(range(256))
    created = await oai.files.create(file=("input.jsonl", content), purpose="batch")
    assert (created.bytes, created.filename, created.status) == (len(content), "input.jsonl", "processed")
    assert (await oai.files.retrieve(created.id)).id == created.id
    assert (await oai.files.content(created.id)).content == content
    batch = await oai.batches.create(input_file_id=created.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert (await oai.batches.retrieve(batch.id)).status == "validating"
    assert (await oai.files.delete(created.id)).deleted
    with pytest.raises(openai.NotFoundError):
        await oai.files.retrieve(created.id)


async def test_a_multipart_endpoint_refuses_json(oai: openai.AsyncOpenAI, fake_provider_url: str) -> None:
    with pytest.raises(openai.BadRequestError, match="multipart/form-data"):
        await oai.post("/audio/transcriptions", body={"model": "whisper-1"}, cast_to=object)


async def test_azure_deployments_answer_with_the_deployment_model(fake_provider_url: str) -> None:
    async with openai.AsyncAzureOpenAI(
        azure_endpoint=fake_provider_url, api_version="2024-10-21", api_key="azure-key", max_retries=0
    ) as azure:
        chat = await azure.chat.completions.create(
            model="prod-chat",
            messages=[{"role": "user", "content": "Say hello"}],
            extra_headers={"x-fake-azure-model": "gpt-4o-2024-08-06"},
        )
        assert chat.model == "gpt-4o-2024-08-06"
        stream = await azure.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
        chunks = [chunk async for chunk in stream]
        assert chunks[0].prompt_filter_results  # type: ignore[attr-defined]
        assert {chunk.model for chunk in chunks[1:]} == {"gpt-4o-mini"}
        embedded = await azure.embeddings.create(model="embed", input="hi")
        assert embedded.model == "embed"
    async with openai.AsyncOpenAI(base_url=f"{fake_provider_url}/openai/v1", api_key="azure-key", max_retries=0) as v1:
        response = await v1.responses.create(model="prod-chat", input="Say hello")
        assert response.model == "prod-chat"


async def test_azure_deployments_need_an_api_version_and_a_key(fake_provider_url: str) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{fake_provider_url}/openai/deployments/d", api_key="k", max_retries=0
    ) as client:
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="d", messages=[{"role": "user", "content": "x"}])
    async with openai.AsyncAzureOpenAI(
        azure_endpoint=fake_provider_url, api_version="2024-10-21", azure_ad_token="t", max_retries=0
    ) as azure:
        # An Entra token travels as Authorization: Bearer, which the resource takes too.
        chat = await azure.chat.completions.create(model="d", messages=[{"role": "user", "content": "x"}])
        assert chat.model == "d"
