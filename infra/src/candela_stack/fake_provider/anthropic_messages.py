"""Anthropic Messages: ``POST /v1/messages`` (a Message or its event stream) and
``POST /v1/messages/count_tokens``; both require the ``anthropic-version`` header, as the real API does."""

from __future__ import annotations

import logging
from typing import Any, Final

from aiohttp import web

from candela_stack.fake_provider.generation import (
    TokenUsage,
    content_text,
    count_message_tokens,
    generate,
    last_user_text,
)
from candela_stack.fake_provider.scenario import scenario_of
from candela_stack.fake_provider.wire import (
    FakeRequestError,
    JSONObject,
    anthropic_headers,
    anthropic_json,
    open_stream,
    random_id,
    read_body,
    sse_event,
)

logger = logging.getLogger(__name__)

ANTHROPIC_PROVISIONAL_OUTPUT_TOKENS: Final = 1


def add_routes(router: web.UrlDispatcher) -> None:
    """Serve this API on ``router``."""
    router.add_post("/v1/messages", messages)
    router.add_post("/v1/messages/count_tokens", count_tokens)


def _anthropic_prompt(body: JSONObject) -> tuple[list[str], list[Any], str]:
    """(message texts for token counting, messages, model) of a Messages request, validated."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise FakeRequestError("model: Field required")
    texts, messages = prompt_texts(body)
    return texts, messages, model


def prompt_texts(body: JSONObject) -> tuple[list[str], list[Any]]:
    """(message texts for token counting, messages) of a Messages request (its ``system`` first)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise FakeRequestError("messages: Field required")
    texts = [content_text(message.get("content")) for message in messages if isinstance(message, dict)]
    system = body.get("system")
    if system:
        texts.insert(0, content_text(system))
    return texts, messages


def _require_anthropic_version(request: web.Request) -> None:
    if "anthropic-version" not in request.headers:
        raise FakeRequestError("anthropic-version: header is required")


async def messages(request: web.Request) -> web.StreamResponse:
    """``POST /v1/messages``: an Anthropic Message or its event stream."""
    _require_anthropic_version(request)
    body = await read_body(request, "anthropic")
    texts, message_list, model = _anthropic_prompt(body)
    return await answer(request, body, texts, message_list, model)


async def answer(
    request: web.Request, body: JSONObject, texts: list[str], message_list: list[Any], model: str
) -> web.StreamResponse:
    """A Message (or its event stream, for ``"stream": true``) answering a validated Messages request."""
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        raise FakeRequestError("max_tokens: Field required")
    scenario = scenario_of(request)
    generation = generate(last_user_text(message_list), scenario, max_tokens)
    usage = TokenUsage(
        prompt_tokens=count_message_tokens(texts),
        visible_completion_tokens=generation.visible_tokens,
        cached_tokens=scenario.cached_tokens,
        cache_write_tokens=scenario.cache_write_tokens,
        reasoning_tokens=scenario.reasoning_tokens,
        overrides=scenario.usage_overrides,
    )
    message_id = random_id("msg_01", 22)
    stop_reason = "max_tokens" if generation.truncated else "end_turn"
    content = [{"type": "text", "text": generation.text}] if generation.text else []

    def message(message_content: list[JSONObject], reason: str | None, message_usage: JSONObject) -> JSONObject:
        return {
            "model": model,
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "content": message_content,
            "stop_reason": reason,
            "stop_sequence": None,
            "usage": message_usage,
        }

    if body.get("stream") is not True:
        await scenario.pace(len(generation.deltas))
        return anthropic_json(message(content, stop_reason, message_usage(usage)))

    def event(event_type: str, **fields: Any) -> bytes:
        return sse_event({"type": event_type, **fields}, event_type)

    response = await open_stream(request, anthropic_headers(), scenario.framing)
    try:
        start_usage = message_usage(usage, output_tokens=ANTHROPIC_PROVISIONAL_OUTPUT_TOKENS)
        await response.write(event("message_start", message=message([], None, start_usage)))
        if content:
            await response.write(event("content_block_start", index=0, content_block={"type": "text", "text": ""}))
        await response.write(event("ping"))
        for delta in generation.deltas:
            await scenario.pace()
            await response.write(event("content_block_delta", index=0, delta={"type": "text_delta", "text": delta}))
        if content:
            await response.write(event("content_block_stop", index=0))
        await response.write(
            event(
                "message_delta",
                delta={"stop_reason": stop_reason, "stop_sequence": None},
                usage=message_delta_usage(usage),
            )
        )
        await response.write(event("message_stop"))
        await response.write_eof()
    except ConnectionResetError:
        logger.debug("client disconnected during %s", request.path)
    return response


async def count_tokens(request: web.Request) -> web.StreamResponse:
    """``POST /v1/messages/count_tokens``: ``{"input_tokens": N}`` by the fake's counting rules."""
    _require_anthropic_version(request)
    return await count_tokens_of(await read_body(request, "anthropic"))


async def count_tokens_of(body: JSONObject) -> web.Response:
    """``{"input_tokens": N}`` for a Messages request body, by the fake's counting rules."""
    texts, _, _ = _anthropic_prompt(body)
    return anthropic_json({"input_tokens": count_message_tokens(texts)})


def uncached_input_tokens(tokens: TokenUsage) -> int:
    """Uncached input tokens: Anthropic reports cache reads and writes separately."""
    return max(0, tokens.prompt_tokens - tokens.cached_tokens - tokens.cache_write_tokens)


def message_usage(tokens: TokenUsage, *, output_tokens: int | None = None) -> JSONObject:
    """The Message ``usage`` object (``output_tokens`` overridable for message_start)."""
    usage: JSONObject = {
        "input_tokens": uncached_input_tokens(tokens),
        "cache_creation_input_tokens": tokens.cache_write_tokens,
        "cache_read_input_tokens": tokens.cached_tokens,
        "cache_creation": {"ephemeral_5m_input_tokens": tokens.cache_write_tokens, "ephemeral_1h_input_tokens": 0},
        "output_tokens": tokens.completion_tokens if output_tokens is None else output_tokens,
        "service_tier": "standard",
    }
    if tokens.reasoning_tokens and output_tokens is None:
        usage["output_tokens_details"] = {"thinking_tokens": tokens.reasoning_tokens}
    return tokens.overridden(usage)


def message_delta_usage(tokens: TokenUsage) -> JSONObject:
    """The cumulative ``usage`` of Anthropic's message_delta event."""
    usage: JSONObject = {
        "input_tokens": uncached_input_tokens(tokens),
        "cache_creation_input_tokens": tokens.cache_write_tokens,
        "cache_read_input_tokens": tokens.cached_tokens,
        "output_tokens": tokens.completion_tokens,
    }
    if tokens.reasoning_tokens:
        usage["output_tokens_details"] = {"thinking_tokens": tokens.reasoning_tokens}
    return tokens.overridden(usage)
