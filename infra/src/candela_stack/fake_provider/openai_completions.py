"""OpenAI legacy Completions: ``POST /v1/completions``, a text_completion or its stream."""

from __future__ import annotations

import logging
import time

from aiohttp import web

from candela_stack.fake_provider.generation import TokenUsage, generate
from candela_stack.fake_provider.openai_common import (
    optional_int,
    part_tokens,
    prompt_parts,
    require_openai_field,
    require_openai_model,
    stream_options,
)
from candela_stack.fake_provider.scenario import scenario_of
from candela_stack.fake_provider.wire import (
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
    router.add_post("/v1/completions", completions)


async def completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/completions``: a text_completion object or stream."""
    return await answer_completion(request, await read_body(request, "openai"))


async def answer_completion(
    request: web.Request, body: JSONObject, answered_model: str | None = None
) -> web.StreamResponse:
    """The completion answering ``body``, naming ``answered_model`` (default: the body's ``model``)."""
    started = time.monotonic()
    model = require_openai_model(body) if answered_model is None else answered_model
    parts = prompt_parts(require_openai_field(body, "prompt"))
    scenario = scenario_of(request)
    prompt_text = " ".join(part for part in parts if isinstance(part, str))
    generation = generate(prompt_text, scenario, optional_int(body, "max_tokens"))
    usage = TokenUsage(
        prompt_tokens=sum(part_tokens(part) for part in parts),
        visible_completion_tokens=generation.visible_tokens,
        overrides=scenario.usage_overrides,
    )
    completion_id = random_id("cmpl-", 29)
    created = int(time.time())
    finish_reason = "length" if generation.truncated else "stop"

    def completion(text: str, finish: str | None) -> JSONObject:
        return {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
        }

    if body.get("stream") is not True:
        await scenario.pace(len(generation.deltas))
        payload = completion(generation.text, finish_reason)
        payload["usage"] = completion_usage(usage)
        return openai_json(payload, started)

    include_usage, _ = stream_options(body)

    def chunk(payload: JSONObject) -> bytes:
        if include_usage:
            payload.setdefault("usage", None)
        return sse_event(payload)

    response = await open_stream(request, openai_headers(), scenario.framing)
    try:
        for delta in generation.deltas:
            await scenario.pace()
            await response.write(chunk(completion(delta, None)))
        await response.write(chunk(completion("", finish_reason)))
        if include_usage:
            usage_chunk = completion("", None)
            usage_chunk["choices"] = []
            usage_chunk["usage"] = completion_usage(usage)
            await response.write(chunk(usage_chunk))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    except ConnectionResetError:
        logger.debug("client disconnected during %s", request.path)
    return response


def completion_usage(tokens: TokenUsage) -> JSONObject:
    """The text_completion ``usage`` object (no details)."""
    return tokens.overridden(
        {
            "prompt_tokens": tokens.prompt_tokens,
            "completion_tokens": tokens.completion_tokens,
            "total_tokens": tokens.total_tokens,
        }
    )
