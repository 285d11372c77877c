"""OpenAI Audio: ``POST /v1/audio/transcriptions`` and ``/v1/audio/translations`` (multipart uploads) and
``POST /v1/audio/speech`` (a JSON request answered with audio bytes).

Transcripts are deterministic: ``"Echo: <filename> <size> bytes"`` padded with the filler words to
``REPLY_WORDS``. ``gpt-4o*`` transcription models report token usage (``input_tokens`` = one audio token per
100 bytes, at least 1, ``output_tokens`` = the transcript's words), ``whisper-1`` a duration (one second per
16,000 bytes, at least 1), as the real API does. Speech is ``x-fake-audio-bytes`` bytes (default 100 per word
of the input) of a deterministic pattern, with the content type of the asked ``response_format``.
"""

from __future__ import annotations

import hashlib
import time
from typing import Final

from aiohttp import web

from candela_stack.fake_provider.generation import FILLER_WORDS, REPLY_WORDS, count_words
from candela_stack.fake_provider.openai_common import require_openai_field, require_openai_model
from candela_stack.fake_provider.scenario import header_int
from candela_stack.fake_provider.wire import (
    FakeRequestError,
    FormPart,
    JSONObject,
    openai_headers,
    openai_json,
    read_body,
    read_form,
)

AUDIO_BYTES_HEADER: Final = "x-fake-audio-bytes"
SPEECH_TYPES: Final = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
TEXT_FORMATS: Final = frozenset({"text", "srt", "vtt"})


def add_routes(router: web.UrlDispatcher) -> None:
    """Serve this API on ``router``."""
    router.add_post("/v1/audio/transcriptions", transcriptions)
    router.add_post("/v1/audio/translations", translations)
    router.add_post("/v1/audio/speech", speech)


async def transcriptions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/audio/transcriptions``: the transcript of the uploaded file."""
    return await _transcribe(request, usage=True)


async def translations(request: web.Request) -> web.StreamResponse:
    """``POST /v1/audio/translations``: the English transcript of the uploaded file (no usage, as OpenAI)."""
    return await _transcribe(request, usage=False)


async def _transcribe(request: web.Request, *, usage: bool) -> web.StreamResponse:
    started = time.monotonic()
    form = await read_form(request)
    audio = _required(form, "file")
    model = _required(form, "model").text
    response_format = form["response_format"].text if "response_format" in form else "json"
    text = transcript(audio)
    if response_format in TEXT_FORMATS:
        return web.Response(text=text + "\n", content_type="text/plain", headers=openai_headers())
    payload: JSONObject = {"text": text}
    if usage and model.startswith("gpt-4o"):
        audio_tokens = max(1, len(audio.content) // 100)
        output_tokens = count_words(text)
        payload["usage"] = {
            "type": "tokens",
            "input_tokens": audio_tokens,
            "input_token_details": {"text_tokens": 0, "audio_tokens": audio_tokens},
            "output_tokens": output_tokens,
            "total_tokens": audio_tokens + output_tokens,
        }
    elif usage:
        payload["usage"] = {"type": "duration", "seconds": max(1, len(audio.content) // 16_000)}
    return openai_json(payload, started)


def transcript(audio: FormPart) -> str:
    """The deterministic transcript of an uploaded file."""
    words = ["Echo:", audio.filename or "audio", str(len(audio.content)), "bytes", *FILLER_WORDS]
    return " ".join(words[:REPLY_WORDS])


async def speech(request: web.Request) -> web.StreamResponse:
    """``POST /v1/audio/speech``: audio bytes of the asked format."""
    body = await read_body(request, "openai")
    require_openai_model(body)
    text = require_openai_field(body, "input")
    require_openai_field(body, "voice")
    response_format = body.get("response_format", "mp3")
    if response_format not in SPEECH_TYPES:
        raise FakeRequestError(
            f"Invalid value: '{response_format}'. Supported values are: {', '.join(SPEECH_TYPES)}.",
            param="response_format",
        )
    size = header_int(request.headers, AUDIO_BYTES_HEADER, 100 * max(1, count_words(str(text))))
    return web.Response(
        body=audio_bytes(str(text), size), content_type=SPEECH_TYPES[response_format], headers=openai_headers()
    )


def audio_bytes(text: str, size: int) -> bytes:
    """``size`` deterministic bytes seeded by ``text`` (every byte value occurs: the body is not text)."""
    block = hashlib.sha256(text.encode()).digest() + bytes(range(256))
    return (block * (size // len(block) + 1))[:size]


def _required(form: dict[str, FormPart], name: str) -> FormPart:
    if name not in form:
        raise FakeRequestError(f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")
    return form[name]
