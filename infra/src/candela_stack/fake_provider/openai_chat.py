"""OpenAI Chat Completions: ``POST /v1/chat/completions``, a chat.completion or a chunk stream."""

from __future__ import annotations

import logging
import time

from aiohttp import web

from candela_stack.fake_provider.generation import (
    Generation,
    TokenUsage,
    content_text,
    count_message_tokens,
    generate,
    last_user_text,
)
from candela_stack.fake_provider.openai_common import (
    SYSTEM_FINGERPRINT,
    obfuscation_padding,
    optional_int,
    require_openai_field,
    require_openai_model,
    served_tier,
    stream_options,
)
from candela_stack.fake_provider.scenario import scenario_of
from candela_stack.fake_provider.wire import (
    FakeRequestError,
    JSONObject,
    open_stream,
    openai_headers,
    openai_json,
    random_id,
    read_body,
    sse_event,
)

logger = logging.getLogger(__name__)


def add_routes(router: web.UrlDispatcher) -> None:
    """Serve this API on ``router``."""
    router.add_post("/v1/chat/completions", chat_completions)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions``: a chat.completion object or a chat.completion.chunk stream."""
    return await answer_chat(request, await read_body(request, "openai"))


async def answer_chat(
    request: web.Request,
    body: JSONObject,
    answered_model: str | None = None,
    stream_preamble: JSONObject | None = None,
    *,
    usage_on_last_chunk: bool = False,
) -> web.StreamResponse:
    """The chat answer to ``body``, naming ``answered_model`` (default: the body's ``model``) as its model;
    a stream starts with the ``stream_preamble`` event when given (Azure's content-filter chunk). With
    ``usage_on_last_chunk`` (Gemini's OpenAI-compatible endpoint) a stream reports its usage unasked, on the
    chunk with the ``finish_reason``, whatever ``stream_options`` says, and has no usage-only chunk."""
    started = time.monotonic()
    model = require_openai_model(body) if answered_model is None else answered_model
    messages = require_openai_field(body, "messages")
    if not isinstance(messages, list):
        raise FakeRequestError("'messages' must be an array.", param="messages")
    scenario = scenario_of(request)
    generation = generate(last_user_text(messages), scenario, optional_int(body, "max_completion_tokens", "max_tokens"))
    usage = TokenUsage(
        prompt_tokens=count_message_tokens(
            content_text(message.get("content")) for message in messages if isinstance(message, dict)
        ),
        visible_completion_tokens=generation.visible_tokens,
        cached_tokens=scenario.cached_tokens,
        cache_write_tokens=scenario.cache_write_tokens,
        reasoning_tokens=scenario.reasoning_tokens,
        overrides=scenario.usage_overrides,
    )
    completion_id = random_id("chatcmpl-", 29)
    created = int(time.time())
    finish_reason = "length" if generation.truncated else "stop"
    if body.get("stream") is True:
        return await _stream_chat(
            request,
            body,
            model,
            completion_id,
            created,
            generation,
            usage,
            finish_reason,
            stream_preamble,
            usage_on_last_chunk=usage_on_last_chunk,
        )
    await scenario.pace(len(generation.deltas))
    payload = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": generation.text, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": chat_usage(usage),
        "service_tier": served_tier(body),
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }
    return openai_json(payload, started)


async def _stream_chat(
    request: web.Request,
    body: JSONObject,
    model: str,
    completion_id: str,
    created: int,
    generation: Generation,
    usage: TokenUsage,
    finish_reason: str,
    preamble: JSONObject | None = None,
    *,
    usage_on_last_chunk: bool = False,
) -> web.StreamResponse:
    include_usage, include_obfuscation = (False, False) if usage_on_last_chunk else stream_options(body)
    scenario = scenario_of(request)

    unasked = not include_usage and request.headers.get("x-fake-stream-usage") == "unasked"

    def chunk(
        choices: list[JSONObject],
        chunk_usage: JSONObject | None,
        padding_seed: str,
        *,
        with_usage: bool = include_usage,
    ) -> bytes:
        payload: JSONObject = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": served_tier(body),
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        }
        if with_usage:
            payload["usage"] = chunk_usage
        if include_obfuscation:
            payload["obfuscation"] = obfuscation_padding(padding_seed)
        return sse_event(payload)

    def choice(delta: JSONObject, finish: str | None) -> list[JSONObject]:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

    response = await open_stream(request, openai_headers(), scenario.framing)
    try:
        if preamble is not None:
            await response.write(sse_event(preamble))
        await response.write(chunk(choice({"role": "assistant", "content": "", "refusal": None}, None), None, ""))
        for delta in generation.deltas:
            await scenario.pace()
            await response.write(chunk(choice({"content": delta}, None), None, delta))
        if usage_on_last_chunk:
            last = sse_event(
                {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": choice({}, finish_reason),
                    "usage": {
                        "completion_tokens": usage.completion_tokens,
                        "prompt_tokens": usage.prompt_tokens,
                        "total_tokens": usage.total_tokens,
                    },
                }
            )
            await response.write(last)
        elif unasked:
            # The providers that report usage unasked put it on the closing chunk.
            await response.write(chunk(choice({}, finish_reason), chat_usage(usage), finish_reason, with_usage=True))
        else:
            await response.write(chunk(choice({}, finish_reason), None, finish_reason))
        if include_usage:
            await response.write(chunk([], chat_usage(usage), "usage"))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    except ConnectionResetError:
        # The client went away mid-stream (a cancelled request): nothing left to send it.
        logger.debug("client disconnected during %s", request.path)
    return response


def chat_usage(tokens: TokenUsage) -> JSONObject:
    """The chat.completion ``usage`` object."""
    prompt_details: JSONObject = {"cached_tokens": tokens.cached_tokens, "audio_tokens": 0}
    if tokens.cache_write_tokens:
        prompt_details["cache_write_tokens"] = tokens.cache_write_tokens
    return tokens.overridden(
        {
            "prompt_tokens": tokens.prompt_tokens,
            "completion_tokens": tokens.completion_tokens,
            "total_tokens": tokens.total_tokens,
            "prompt_tokens_details": prompt_details,
            "completion_tokens_details": {
                "reasoning_tokens": tokens.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
    )
