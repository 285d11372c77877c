"""Google's APIs: the Gemini API (native and OpenAI-compatible) and Vertex AI (Gemini and Anthropic's
models on it): their paths, their upstream hosts, and the JSON-array form of a Gemini stream.

- ``/gemini/<version>/...`` goes to ``CANDELA_GEMINI_BASE_URL`` + ``/<version>/...`` (the google-genai
  SDK's ``base_url`` is ``<gateway>/gemini``). ``models/{model}:{method}`` names the model; the caller's
  key (``x-goog-api-key`` or ``?key=``) goes upstream as sent, and is never in the log (the logged path
  has no query). ``/gemini/v1beta/openai/...`` is Gemini's OpenAI-compatible endpoint: OpenAI's wire
  format, logged and priced as ``google``.
- ``/vertex/<version>/projects/{project}/locations/{location}/...`` goes to
  ``https://{location}-aiplatform.googleapis.com`` (``aiplatform.googleapis.com`` for ``global``), or to
  ``CANDELA_VERTEX_BASE_URL`` when set. ``publishers/google/models/{model}:{method}`` speaks Gemini's
  format, ``publishers/anthropic/models/{model}:rawPredict|streamRawPredict`` Anthropic's Messages format.
  The caller's OAuth ``Authorization: Bearer`` goes upstream unchanged. Logged as ``google-vertex``, priced
  by genai-prices' ``google`` provider (which carries both the Gemini and the Claude models of Vertex).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from typing import Final

import aiohttp
import orjson
from aiohttp import web

from candela_proxy.exchange import Exchange
from candela_proxy.providers import Provider, Route
from candela_proxy.record import Recorder
from candela_proxy.response_usage import ResponseFacts, apply_gemini_document, facts_from_json
from candela_runtime.redaction import redact_urls_in

logger = logging.getLogger(__name__)

GEMINI_PREFIX: Final = "/gemini"
VERTEX_PREFIX: Final = "/vertex"
GOOGLE_NAME: Final = "google"
VERTEX_NAME: Final = "google-vertex"
"""The provider of a Vertex AI call as the log names it."""
STREAM_METHODS: Final = frozenset({"streamGenerateContent", "streamRawPredict"})

_VERSION = r"/v1[a-z0-9]*"
_MODEL_METHOD = r"/models/([^/:]+):([A-Za-z]+)"
_GEMINI_MODEL = re.compile(rf"{_VERSION}(?:/tunedModels|{_MODEL_METHOD})")
_GEMINI_OPENAI = re.compile(rf"{_VERSION}/openai/")
_VERTEX_LOCATION = re.compile(rf"{_VERSION}/projects/[^/]+/locations/([^/]+)(/.*)?")
_VERTEX_MODEL = re.compile(rf"{_VERSION}/projects/[^/]+/locations/[^/]+/publishers/([^/]+){_MODEL_METHOD}")
# A location is a host label: it becomes part of the upstream host name, so nothing else may pass.
_LOCATION_NAME = re.compile(r"[a-z][a-z0-9-]{0,62}")


def is_google_path(path: str) -> bool:
    """Whether ``path`` is under a Google prefix (its refusals then take Google's error shape)."""
    return path.startswith((GEMINI_PREFIX + "/", VERTEX_PREFIX + "/"))


def resolve_google_route(path: str, query_string: str, gemini_base_url: str, vertex_base_url: str) -> Route | None:
    """The route of a Gemini or Vertex AI path, or None when ``path`` is neither (or names no valid location)."""
    if path.startswith(GEMINI_PREFIX + "/v1"):
        tail = path[len(GEMINI_PREFIX) :]
        base = gemini_base_url
        if found := _GEMINI_OPENAI.match(tail):
            # OpenAI's API under Google's prefix: /v1beta/openai/chat/completions is /v1/chat/completions.
            route = _route(Provider.OPENAI, base, tail, query_string, GOOGLE_NAME, "", False)
            return dataclasses.replace(route, api_path="/v1/" + tail[found.end() :], stream_options=False)
        found = _GEMINI_MODEL.fullmatch(tail)
        model, method = (found.group(1) or "", found.group(2) or "") if found else ("", "")
        return _route(Provider.GOOGLE, base, tail, query_string, "", model, method in STREAM_METHODS)
    if path.startswith(VERTEX_PREFIX + "/v1"):
        tail = path[len(VERTEX_PREFIX) :]
        located = _VERTEX_LOCATION.fullmatch(tail)
        if located is None or not _LOCATION_NAME.fullmatch(located.group(1)):
            return None
        base = vertex_base_url or vertex_host_url(located.group(1))
        provider, model, method = Provider.GOOGLE, "", ""
        if found := _VERTEX_MODEL.fullmatch(tail):
            publisher, model, method = found.groups()
            if publisher == "anthropic":
                provider = Provider.ANTHROPIC
        return _route(provider, base, tail, query_string, VERTEX_NAME, model, method in STREAM_METHODS)
    return None


def vertex_host_url(location: str) -> str:
    """Vertex AI's regional endpoint for ``location`` (the global one for ``global``)."""
    if location == "global":
        return "https://aiplatform.googleapis.com"
    return f"https://{location}-aiplatform.googleapis.com"


def _route(provider: Provider, base: str, tail: str, query_string: str, name: str, model: str, streamed: bool) -> Route:
    url = base.rstrip("/") + tail
    if query_string:
        url = f"{url}?{query_string}"
    return Route(
        provider=provider,
        upstream_url=url,
        provider_path=tail,
        query_string=query_string,
        label=name,
        price_id="google",
        model=model,
        streamed=streamed,
    )


def is_json_array_stream(exchange: Exchange, upstream: aiohttp.ClientResponse) -> bool:
    """Whether the answer is a Gemini stream in its default form (no ``alt=sse``): one JSON array whose
    elements arrive as they are generated."""
    return (
        exchange.route.provider is Provider.GOOGLE
        and exchange.route.streamed
        and upstream.status == 200
        and upstream.content_type == "application/json"
    )


def facts_from_json_array(body: bytes) -> ResponseFacts:
    """Facts from a whole JSON-array stream: each element is a GenerateContentResponse, the last with
    usage carries the final counts (empty facts when the array was cut short)."""
    facts = ResponseFacts()
    try:
        elements = orjson.loads(body)
    except orjson.JSONDecodeError:
        return facts
    if not isinstance(elements, list):
        return facts_from_json(Provider.GOOGLE, body)
    for element in elements:
        if isinstance(element, dict):
            apply_gemini_document(facts, element)
    return facts


async def relay_json_array(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    reply_headers: dict[str, str],
    exchange: Exchange,
    recorder: Recorder,
) -> web.StreamResponse:
    """Writes a JSON-array stream to the client chunk by chunk as it arrives; the closing ``]`` (and what
    follows it) reaches the client once the log is durable, as an SSE stream's last event does."""
    exchange.streamed = True
    response = web.StreamResponse(status=upstream.status, headers=reply_headers)
    await response.prepare(request)
    held = b""
    try:
        async for chunk in upstream.content.iter_any():
            if exchange.first_byte is None:
                exchange.first_byte = time.perf_counter()
            data = held + chunk
            end = data.rfind(b"]")
            # Everything before the last "]" goes now; a "]" followed by more than whitespace was not the end.
            if end < 0 or data[end + 1 :].strip():
                shown, held = data, b""
            else:
                shown, held = data[:end], data[end:]
            if shown:
                exchange.response_chunks.append(shown)
                await response.write(shown)
        exchange.response_chunks.append(held)
        exchange.facts = facts_from_json_array(b"".join(exchange.response_chunks))
        exchange.complete = True
        await recorder.log_durably(exchange)
        if held:
            await response.write(held)
        await response.write_eof()
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        exchange.error = "client disconnected mid-stream"
        logger.info("request %s: %s", exchange.request_id, exchange.error)
    except (aiohttp.ClientError, TimeoutError) as err:
        # aiohttp's messages can quote the URL, and Gemini's key may be in its query.
        exchange.error = redact_urls_in(f"upstream failed mid-stream: {type(err).__name__}: {err}")
        logger.warning("request %s: %s", exchange.request_id, exchange.error)
    return response
