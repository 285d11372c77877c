"""OpenAI Responses: ``POST /v1/responses``, a Response object or its typed event stream."""

from __future__ import annotations

import logging
import string
import time
from typing import Any

from aiohttp import web

from candela_stack.fake_provider.generation import (
    TokenUsage,
    content_text,
    count_message_tokens,
    generate,
    last_user_text,
)
from candela_stack.fake_provider.openai_common import (
    obfuscation_padding,
    optional_int,
    require_openai_field,
    require_openai_model,
    served_tier,
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
    router.add_post("/v1/responses", responses)


def _responses_prompt(body: JSONObject) -> tuple[list[str], str]:
    """(message texts for token counting, last user text) of a Responses request."""
    raw_input = body["input"]
    texts: list[str] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        texts.append(instructions)
    if isinstance(raw_input, str):
        return [*texts, raw_input], raw_input
    if not isinstance(raw_input, list):
        raise FakeRequestError("'input' must be a string or an array of input items.", param="input")
    texts.extend(content_text(item.get("content")) for item in raw_input if isinstance(item, dict))
    return texts, last_user_text(raw_input)


async def responses(request: web.Request) -> web.StreamResponse:
    """``POST /v1/responses``: a Response object or its typed event stream."""
    return await answer_response(request, await read_body(request, "openai"))


async def answer_response(
    request: web.Request, body: JSONObject, answered_model: str | None = None
) -> web.StreamResponse:
    """The response to ``body``, naming ``answered_model`` (default: the body's ``model``)."""
    started = time.monotonic()
    model = require_openai_model(body) if answered_model is None else answered_model
    require_openai_field(body, "input")
    scenario = scenario_of(request)
    texts, prompt_text = _responses_prompt(body)
    generation = generate(prompt_text, scenario, optional_int(body, "max_output_tokens"))
    usage = TokenUsage(
        prompt_tokens=count_message_tokens(texts),
        visible_completion_tokens=generation.visible_tokens,
        cached_tokens=scenario.cached_tokens,
        cache_write_tokens=scenario.cache_write_tokens,
        reasoning_tokens=scenario.reasoning_tokens,
        overrides=scenario.usage_overrides,
    )
    response_id = random_id("resp_", 50, string.hexdigits[:16])
    message_id = random_id("msg_", 50, string.hexdigits[:16])
    created = int(time.time())
    final_status = "incomplete" if generation.truncated else "completed"

    def response_object(status: str, output: list[JSONObject], final: bool) -> JSONObject:
        return {
            "id": response_id,
            "object": "response",
            "created_at": created,
            "status": status,
            "background": False,
            "completed_at": int(time.time()) if final and status == "completed" else None,
            "error": None,
            "frequency_penalty": 0.0,
            "incomplete_details": {"reason": "max_output_tokens"} if final and generation.truncated else None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "max_tool_calls": body.get("max_tool_calls"),
            "model": model,
            "output": output,
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "presence_penalty": 0.0,
            "previous_response_id": body.get("previous_response_id"),
            "prompt_cache_key": body.get("prompt_cache_key"),
            "prompt_cache_retention": body.get("prompt_cache_retention"),
            "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
            "safety_identifier": body.get("safety_identifier"),
            "service_tier": served_tier(body) if final else body.get("service_tier", "auto"),
            "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "text": body.get("text") or {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools", []),
            "top_logprobs": body.get("top_logprobs", 0),
            "top_p": body.get("top_p", 1.0),
            "truncation": body.get("truncation", "disabled"),
            "usage": response_usage(usage) if final else None,
            "user": body.get("user"),
            "metadata": body.get("metadata") or {},
        }

    def text_part(text: str) -> JSONObject:
        return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}

    def message_item(status: str, content: list[JSONObject]) -> JSONObject:
        return {"id": message_id, "type": "message", "status": status, "content": content, "role": "assistant"}

    final_item = message_item(final_status, [text_part(generation.text)])
    if body.get("stream") is not True:
        await scenario.pace(len(generation.deltas))
        return openai_json(response_object(final_status, [final_item], final=True), started)

    options = body.get("stream_options")
    include_obfuscation = not (isinstance(options, dict) and options.get("include_obfuscation") is False)
    sequence_number = 0

    def event(event_type: str, **fields: Any) -> bytes:
        nonlocal sequence_number
        payload = {"type": event_type, **fields, "sequence_number": sequence_number}
        sequence_number += 1
        return sse_event(payload, event_type)

    where: JSONObject = {"item_id": message_id, "output_index": 0}
    response = await open_stream(request, openai_headers(), scenario.framing)
    try:
        await response.write(event("response.created", response=response_object("in_progress", [], final=False)))
        await response.write(event("response.in_progress", response=response_object("in_progress", [], final=False)))
        await response.write(event("response.output_item.added", item=message_item("in_progress", []), output_index=0))
        await response.write(event("response.content_part.added", content_index=0, **where, part=text_part("")))
        for delta in generation.deltas:
            await scenario.pace()
            padding = {"obfuscation": obfuscation_padding(delta)} if include_obfuscation else {}
            await response.write(
                event(
                    "response.output_text.delta",
                    content_index=0,
                    delta=delta,
                    item_id=message_id,
                    logprobs=[],
                    **padding,
                    output_index=0,
                )
            )
        await response.write(
            event("response.output_text.done", content_index=0, **where, logprobs=[], text=generation.text)
        )
        await response.write(
            event("response.content_part.done", content_index=0, **where, part=text_part(generation.text))
        )
        await response.write(event("response.output_item.done", item=final_item, output_index=0))
        await response.write(
            event(f"response.{final_status}", response=response_object(final_status, [final_item], final=True))
        )
        await response.write_eof()
    except ConnectionResetError:
        logger.debug("client disconnected during %s", request.path)
    return response


def response_usage(tokens: TokenUsage) -> JSONObject:
    """The Responses API ``usage`` object."""
    input_details: JSONObject = {"cached_tokens": tokens.cached_tokens}
    if tokens.cache_write_tokens:
        input_details["cache_write_tokens"] = tokens.cache_write_tokens
    return tokens.overridden(
        {
            "input_tokens": tokens.prompt_tokens,
            "input_tokens_details": input_details,
            "output_tokens": tokens.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": tokens.reasoning_tokens},
            "total_tokens": tokens.total_tokens,
        }
    )
