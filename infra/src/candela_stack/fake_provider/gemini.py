"""Google: the Gemini API and Vertex AI, in their exact wire formats.

- Gemini API (``/v1beta/...`` or ``/v1/...``; the key in ``x-goog-api-key`` or ``?key=``, else 403
  ``PERMISSION_DENIED``): ``POST models/{model}:generateContent`` (a GenerateContentResponse),
  ``:streamGenerateContent`` (server-sent events with ``?alt=sse``, else one JSON array written element by
  element), ``:countTokens``, ``:embedContent`` and ``:batchEmbedContents`` (what the google-genai SDK
  calls); ``POST /v1beta/openai/chat/completions`` is the OpenAI-compatible endpoint (OpenAI's format; a
  stream's usage comes unasked, on its last chunk).
- Vertex AI (``/v1/...`` or ``/v1beta1/...``; ``Authorization: Bearer`` required, else 401
  ``UNAUTHENTICATED``): ``projects/{p}/locations/{l}/publishers/google/models/{model}:{method}`` as above,
  and ``publishers/anthropic/models/{model}:rawPredict`` / ``:streamRawPredict``: Anthropic's Messages
  format with the model in the path (none in the body) and an ``anthropic_version`` in the body
  (``vertex-2023-10-16``, or the API version the anthropic SDK sends); ``models/count-tokens:rawPredict``
  counts a Messages body (its model in the body) as ``/v1/messages/count_tokens`` does.

Replies and counts follow the package's rules: ``contents`` are the messages (``systemInstruction`` one more),
``generationConfig.maxOutputTokens`` the limit (``finishReason: "MAX_TOKENS"``). ``usageMetadata`` has
``promptTokenCount``, ``candidatesTokenCount`` (visible words), ``thoughtsTokenCount`` (``x-fake-reasoning-
tokens``, outside the candidates' count as Google reports it), ``cachedContentTokenCount``
(``x-fake-cached-tokens``, inside the prompt's count) and ``totalTokenCount``; ``x-fake-usage`` replaces its
keys. A stream's chunks carry the prompt-side usage only; the last one, with the ``finishReason``, carries
the whole usage. Embeddings report ``usageMetadata.promptTokenCount`` = the words embedded.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

from aiohttp import web

from candela_stack.fake_provider import anthropic_messages, openai_chat
from candela_stack.fake_provider.generation import (
    TokenUsage,
    content_text,
    count_message_tokens,
    count_words,
    generate,
)
from candela_stack.fake_provider.openai_embeddings import embedding_vector
from candela_stack.fake_provider.scenario import Scenario, scenario_of
from candela_stack.fake_provider.wire import (
    FakeRequestError,
    JSONObject,
    dumps,
    open_stream,
    random_id,
    read_body,
    sse_event,
)

logger = logging.getLogger(__name__)

VERSION: Final = r"{version:v1(?:beta|alpha|beta1)?}"
EMBEDDING_DIMENSIONS: Final = 3072
"""Length of an embedding without ``outputDimensionality`` (gemini-embedding-001's)."""


def add_routes(router: web.UrlDispatcher) -> None:
    """Serve this API on ``router``."""
    router.add_post(f"/{VERSION}/models/{{target}}", gemini_api)
    router.add_post("/v1beta/openai/chat/completions", gemini_openai_chat)
    vertex_models = f"/{VERSION}/projects/{{project}}/locations/{{location}}/publishers"
    router.add_post(vertex_models + "/google/models/{target}", vertex_gemini)
    router.add_post(vertex_models + "/anthropic/models/{target}", vertex_anthropic)


async def gemini_api(request: web.Request) -> web.StreamResponse:
    """``POST /v1beta/models/{model}:{method}`` of the Gemini API."""
    if not request.headers.get("x-goog-api-key") and not request.query.get("key"):
        raise FakeRequestError(
            "Method doesn't allow unregistered callers (callers without established identity). Please use API"
            " Key or other form of API consumer identity to call this API.",
            status=403,
        )
    return await _serve_gemini(request, vertex=False)


async def vertex_gemini(request: web.Request) -> web.StreamResponse:
    """``POST .../publishers/google/models/{model}:{method}`` of Vertex AI."""
    _require_bearer(request)
    return await _serve_gemini(request, vertex=True)


async def gemini_openai_chat(request: web.Request) -> web.StreamResponse:
    """``POST /v1beta/openai/chat/completions``: Gemini's OpenAI-compatible endpoint, OpenAI's format, except
    that a stream reports its usage without being asked: on its last chunk, the one with the
    ``finish_reason`` (as Gemini does, ``stream_options`` or not), never in a usage-only chunk."""
    return await openai_chat.answer_chat(request, await read_body(request, "openai"), usage_on_last_chunk=True)


async def vertex_anthropic(request: web.Request) -> web.StreamResponse:
    """``POST .../publishers/anthropic/models/{model}:rawPredict|streamRawPredict``: Claude on Vertex AI."""
    _require_bearer(request)
    model, method = _model_method(request)
    if method not in {"rawPredict", "streamRawPredict"}:
        raise FakeRequestError(f"Method not found: {method}", status=404)
    body = await read_body(request, "anthropic")
    version = body.get("anthropic_version")
    if not isinstance(version, str) or not version:
        raise FakeRequestError("anthropic_version: Field required")
    if model == "count-tokens" and method == "rawPredict":
        # Token counting takes the model in the body, as Anthropic's own count_tokens does.
        return await anthropic_messages.count_tokens_of(body)
    if "model" in body:
        raise FakeRequestError("model: Extra inputs are not permitted")
    texts, message_list = anthropic_messages.prompt_texts(body)
    return await anthropic_messages.answer(request, body, texts, message_list, model)


def _require_bearer(request: web.Request) -> None:
    if not request.headers.get("Authorization", "").startswith("Bearer "):
        raise FakeRequestError(
            "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie"
            " or other valid authentication credential.",
            status=401,
        )


def _model_method(request: web.Request) -> tuple[str, str]:
    model, colon, method = request.match_info["target"].partition(":")
    if not colon or not model:
        raise FakeRequestError(f"Method not found: {request.path}", status=404)
    return model, method


async def _serve_gemini(request: web.Request, *, vertex: bool) -> web.StreamResponse:
    model, method = _model_method(request)
    body = await read_body(request, "google")
    if method == "generateContent":
        return await _generate(request, body, model, vertex, stream=None)
    if method == "streamGenerateContent":
        return await _generate(
            request, body, model, vertex, stream="sse" if request.query.get("alt") == "sse" else "json"
        )
    if method == "countTokens":
        return _json(_count_tokens(body, vertex))
    if method == "embedContent":
        return _json(_embed_content(body))
    if method == "batchEmbedContents":
        return _json(_batch_embed_contents(body))
    raise FakeRequestError(f"Method not found: {method}", status=404)


def _json(payload: JSONObject) -> web.Response:
    return web.Response(text=dumps(payload, pretty=True), content_type="application/json")


def _contents(body: JSONObject) -> list[Any]:
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise FakeRequestError("* GenerateContentRequest.contents: contents is not specified")
    return contents


def _parts_text(content: Any) -> str:
    return content_text(content.get("parts")) if isinstance(content, dict) else ""


def _prompt(body: JSONObject) -> tuple[list[str], str]:
    """(message texts for token counting, the last user text) of a GenerateContentRequest."""
    contents = _contents(body)
    texts = [_parts_text(content) for content in contents]
    user_texts = [_parts_text(c) for c in contents if isinstance(c, dict) and c.get("role", "user") == "user"]
    if body.get("systemInstruction"):
        texts.insert(0, _parts_text(body["systemInstruction"]))
    return texts, user_texts[-1] if user_texts else ""


def usage_metadata(tokens: TokenUsage, *, final: bool = True) -> JSONObject:
    """``usageMetadata`` as Google sends it (a stream's early chunks: the prompt side only)."""
    usage: JSONObject = {"promptTokenCount": tokens.prompt_tokens}
    if final:
        usage["candidatesTokenCount"] = tokens.visible_completion_tokens
    usage["totalTokenCount"] = tokens.total_tokens if final else tokens.prompt_tokens
    if tokens.cached_tokens:
        usage["cachedContentTokenCount"] = tokens.cached_tokens
    usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": tokens.prompt_tokens}]
    if tokens.cached_tokens:
        usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": tokens.cached_tokens}]
    if final and tokens.reasoning_tokens:
        usage["thoughtsTokenCount"] = tokens.reasoning_tokens
    return tokens.overridden(usage)


async def _generate(
    request: web.Request, body: JSONObject, model: str, vertex: bool, stream: str | None
) -> web.StreamResponse:
    texts, prompt_text = _prompt(body)
    config = body.get("generationConfig")
    limit = config.get("maxOutputTokens") if isinstance(config, dict) else None
    scenario = scenario_of(request)
    generation = generate(prompt_text, scenario, limit if isinstance(limit, int) else None)
    tokens = TokenUsage(
        prompt_tokens=count_message_tokens(texts),
        visible_completion_tokens=generation.visible_tokens,
        cached_tokens=scenario.cached_tokens,
        reasoning_tokens=scenario.reasoning_tokens,
        overrides=scenario.usage_overrides,
    )
    finish = "MAX_TOKENS" if generation.truncated else "STOP"
    response_id = random_id("", 22)
    extra: JSONObject = {"createTime": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())} if vertex else {}

    def answer(text: str | None, reason: str | None, usage: JSONObject) -> JSONObject:
        candidate: JSONObject = {"content": {"role": "model", "parts": [{"text": text}] if text is not None else []}}
        if reason is not None:
            candidate["finishReason"] = reason
        candidate["index"] = 0
        return {
            "candidates": [candidate],
            "usageMetadata": usage,
            "modelVersion": model,
            **extra,
            "responseId": response_id,
        }

    if stream is None:
        await scenario.pace(len(generation.deltas))
        return _json(answer(generation.text, finish, usage_metadata(tokens)))
    deltas = list(generation.deltas) or [""]
    chunks = [
        (delta, finish if last else None, usage_metadata(tokens, final=last))
        for delta, last in ((delta, index == len(deltas) - 1) for index, delta in enumerate(deltas))
    ]
    if stream == "sse":
        return await _stream_sse(request, scenario, [answer(*chunk) for chunk in chunks])
    return await _stream_json_array(request, scenario, [answer(*chunk) for chunk in chunks])


async def _stream_sse(request: web.Request, scenario: Scenario, chunks: list[JSONObject]) -> web.StreamResponse:
    """``?alt=sse``: one ``data:`` event per chunk; the stream ends with the connection."""
    response = await open_stream(request, {}, scenario.framing)
    try:
        for chunk in chunks:
            await scenario.pace()
            await response.write(sse_event(chunk))
        await response.write_eof()
    except ConnectionResetError:
        logger.debug("client disconnected during %s", request.path)
    return response


async def _stream_json_array(request: web.Request, scenario: Scenario, chunks: list[JSONObject]) -> web.StreamResponse:
    """The default stream form: a JSON array, ``[`` then each element as it is generated, then ``]``."""
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json; charset=UTF-8"})
    await response.prepare(request)
    try:
        for index, chunk in enumerate(chunks):
            await scenario.pace()
            element = ("[" if index == 0 else ",\r\n") + dumps(chunk, pretty=True).rstrip("\n") + "\n"
            await response.write(element.encode())
        await response.write(b"]")
        await response.write_eof()
    except ConnectionResetError:
        logger.debug("client disconnected during %s", request.path)
    return response


def _count_tokens(body: JSONObject, vertex: bool) -> JSONObject:
    """``countTokens``: ``contents`` (or a ``generateContentRequest``) counted as a generation's prompt."""
    request = body.get("generateContentRequest")
    texts, _ = _prompt(request if isinstance(request, dict) else body)
    total = count_message_tokens(texts)
    payload: JSONObject = {"totalTokens": total}
    if vertex:
        payload["totalBillableCharacters"] = sum(len("".join(text.split())) for text in texts)
    payload["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": total}]
    return payload


def _embedding(content: Any, dimensions: Any) -> tuple[JSONObject, int]:
    text = _parts_text(content)
    if not isinstance(content, dict):
        raise FakeRequestError("* EmbedContentRequest.content: content is not specified")
    size = dimensions if isinstance(dimensions, int) and dimensions > 0 else EMBEDDING_DIMENSIONS
    return {"values": [round(value, 8) for value in embedding_vector(text, size)]}, count_words(text)


def _embed_content(body: JSONObject) -> JSONObject:
    embedding, words = _embedding(body.get("content"), body.get("outputDimensionality"))
    return {"embedding": embedding, "usageMetadata": {"promptTokenCount": words, "totalTokenCount": words}}


def _batch_embed_contents(body: JSONObject) -> JSONObject:
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise FakeRequestError("* BatchEmbedContentsRequest.requests: requests is not specified")
    embeddings, total = [], 0
    for item in requests:
        if not isinstance(item, dict):
            raise FakeRequestError("* BatchEmbedContentsRequest.requests: each request must be an object")
        embedding, words = _embedding(item.get("content"), item.get("outputDimensionality"))
        embeddings.append(embedding)
        total += words
    return {"embeddings": embeddings, "usageMetadata": {"promptTokenCount": total, "totalTokenCount": total}}
