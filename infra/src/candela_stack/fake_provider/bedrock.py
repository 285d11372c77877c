"""AWS Bedrock Runtime: Converse, ConverseStream, InvokeModel and InvokeModelWithResponseStream under
``/model/{modelId}/...``, SigV4-checked, streams in AWS's binary event-stream framing.

- ``POST /model/{modelId}/converse``: Converse's JSON (``output.message``, ``stopReason``, ``usage`` with
  ``inputTokens`` / ``outputTokens`` / ``totalTokens`` / ``cacheReadInputTokens`` / ``cacheWriteInputTokens``,
  ``metrics``), for any model id.
- ``POST /model/{modelId}/converse-stream``: ``application/vnd.amazon.eventstream`` messages ``messageStart``,
  ``contentBlockDelta`` (one per delta), ``contentBlockStop``, ``messageStop``, ``metadata`` (usage, metrics).
- ``POST /model/{modelId}/invoke``: for an Anthropic model id (``anthropic.`` after an optional region prefix
  such as ``us.`` or ``global.``) the body is a Messages request with ``anthropic_version`` and the answer a
  Message (``model`` is Anthropic's name, e.g. ``claude-3-5-sonnet-20241022``), with the
  ``X-Amzn-Bedrock-Input-Token-Count`` / ``-Output-Token-Count`` / ``-Invocation-Latency`` headers. Other
  Meta Llama model ids (``meta.llama...``) take Llama's native body (``prompt``, ``max_gen_len``) and answer
  ``generation`` with ``prompt_token_count`` / ``generation_token_count`` / ``stop_reason`` and the same
  headers. Other families get a 400 ValidationException.
- ``POST /model/{modelId}/invoke-with-response-stream``: Anthropic's stream events, each the base64
  ``bytes`` of a ``chunk`` event; the last (``message_stop``) carries ``amazon-bedrock-invocationMetrics``.
  Llama's stream: one ``generation`` chunk per delta, then a last one with ``stop_reason`` and the metrics.

Every event payload carries Bedrock's ``"p"`` padding. Token counts, replies and the ``x-fake-*`` headers
follow the package's rules (Converse ``inputTokens`` exclude cache reads and writes, as Bedrock reports them);
``x-fake-write-bytes`` / ``x-fake-write-delay-ms`` cut the binary stream into pieces.

Signature: every request must carry a SigV4 ``Authorization`` for service ``bedrock``, checked as Bedrock
does: the fake recomputes the signature with botocore over the request as received (method, raw path,
query, the signed headers with the ``Host`` that arrived, the body's SHA-256) with the secret of the access
key id. The fake knows the secret of every access key id that starts with :data:`FAKE_ACCESS_KEY_PREFIX`:
:func:`fake_secret_access_key` of it. Unknown key: 403 ``UnrecognizedClientException``; a signature that does
not match, or an ``X-Amz-Date`` more than 5 minutes away: 403 ``InvalidSignatureException``.

Errors are Bedrock's: ``{"message": ...}`` with the exception name in ``x-amzn-ErrorType``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import hashlib
import hmac
import logging
import re
import secrets
import string
import struct
import time
from typing import Any, Final

from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from candela_stack.fake_provider.anthropic_messages import message_delta_usage, message_usage, uncached_input_tokens
from candela_stack.fake_provider.generation import (
    Generation,
    TokenUsage,
    content_text,
    count_message_tokens,
    generate,
    last_user_text,
)
from candela_stack.fake_provider.scenario import Scenario, scenario_of
from candela_stack.fake_provider.wire import (
    FakeRequestError,
    JSONObject,
    bedrock_headers,
    dumps,
    random_id,
    read_body,
)

logger = logging.getLogger(__name__)

FAKE_ACCESS_KEY_PREFIX: Final = "AKIAFAKE"
"""Access key ids the fake knows the secret of (any id with this prefix)."""
EVENT_STREAM_CONTENT_TYPE: Final = "application/vnd.amazon.eventstream"
ANTHROPIC_BEDROCK_VERSION: Final = "bedrock-2023-05-31"
MAX_CLOCK_SKEW_S: Final = 300
_SIGNATURE_EXPIRED = "Signature expired: {date} is now earlier or later than the allowed 5 minutes."
_SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret"
    " Access Key and signing method. Consult the service documentation for details."
)
_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request,"
    r"\s*SignedHeaders=(?P<headers>[a-z0-9;-]+),\s*Signature=(?P<signature>[0-9a-f]{64})"
)
_REGION_PREFIX = re.compile(r"^(?:us|eu|apac|au|jp|ca|us-gov|in|global)\.")
_VERSION_SUFFIX = re.compile(r"-v\d+(?::\d+)?$")


def add_routes(router: web.UrlDispatcher) -> None:
    """Serve this API on ``router``."""
    router.add_post("/model/{model_id:.+}/converse", converse)
    router.add_post("/model/{model_id:.+}/converse-stream", converse_stream)
    router.add_post("/model/{model_id:.+}/invoke", invoke)
    router.add_post("/model/{model_id:.+}/invoke-with-response-stream", invoke_stream)


def fake_secret_access_key(access_key_id: str) -> str:
    """The secret the fake expects for ``access_key_id`` (one with :data:`FAKE_ACCESS_KEY_PREFIX`)."""
    return "fake/" + hashlib.sha256(access_key_id.encode()).hexdigest()[:36]


# --- signature ----------------------------------------------------------------------------------


def verify_signature(request: web.Request, body: bytes) -> None:
    """Raises FakeRequestError (403, Bedrock's exception name as ``code``) unless the request carries a valid
    SigV4 signature for service ``bedrock`` by a key the fake knows."""
    authorization = request.headers.get("Authorization", "")
    match = _AUTHORIZATION.fullmatch(authorization.strip())
    if match is None:
        raise FakeRequestError(
            "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' parameters.",
            status=403,
            code="IncompleteSignatureException",
        )
    access_key_id = match["key"]
    if not access_key_id.startswith(FAKE_ACCESS_KEY_PREFIX):
        raise FakeRequestError(
            "The security token included in the request is invalid.", status=403, code="UnrecognizedClientException"
        )
    if match["service"] != "bedrock":
        raise FakeRequestError(
            "Credential should be scoped to correct service: 'bedrock'.", status=403, code="InvalidSignatureException"
        )
    amz_date = request.headers.get("X-Amz-Date", "")
    try:
        signed_at = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        raise FakeRequestError(
            "Missing or malformed X-Amz-Date.", status=403, code="IncompleteSignatureException"
        ) from None
    if abs(time.time() - signed_at.timestamp()) > MAX_CLOCK_SKEW_S:
        raise FakeRequestError(_SIGNATURE_EXPIRED.format(date=amz_date), status=403, code="InvalidSignatureException")
    content_sha = request.headers.get("X-Amz-Content-SHA256")
    if content_sha is not None and content_sha != hashlib.sha256(body).hexdigest():
        raise FakeRequestError(
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
            status=400,
            code="ValidationException",
        )
    signed_names = match["headers"].split(";")
    missing = [name for name in signed_names if name not in request.headers]
    if "host" not in signed_names or missing:
        raise FakeRequestError(_SIGNATURE_MISMATCH, status=403, code="InvalidSignatureException")
    # The request as the server received it: the raw (still percent-encoded) path, the Host that arrived and
    # only the headers the client signed, each with every value it sent.
    signed = AWSRequest(
        method=request.method,
        url=f"http://{request.headers['Host']}{request.raw_path}",
        data=body,
    )
    for name in signed_names:
        for value in request.headers.getall(name):
            signed.headers.add_header(name, value)
    signed.context["timestamp"] = amz_date
    credentials = Credentials(access_key_id, fake_secret_access_key(access_key_id))
    signer = SigV4Auth(credentials, "bedrock", match["region"])
    expected = signer.signature(signer.string_to_sign(signed, signer.canonical_request(signed)), signed)
    if not hmac.compare_digest(expected, match["signature"]):
        raise FakeRequestError(_SIGNATURE_MISMATCH, status=403, code="InvalidSignatureException")


# --- event-stream framing -----------------------------------------------------------------------


def event_stream_message(headers: list[tuple[str, str]], payload: bytes) -> bytes:
    """One binary event-stream message: prelude (total length, headers length, CRC32), string headers,
    payload, message CRC32."""
    encoded_headers = b"".join(
        struct.pack(">B", len(name)) + name.encode() + b"\x07" + struct.pack(">H", len(value.encode())) + value.encode()
        for name, value in headers
    )
    total = 12 + len(encoded_headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded_headers))
    message = prelude + struct.pack(">I", binascii.crc32(prelude)) + encoded_headers + payload
    return message + struct.pack(">I", binascii.crc32(message))


def _padding() -> str:
    """Bedrock's ``p`` field: random letters of random length, so payload sizes do not reveal the text."""
    return "".join(secrets.choice(string.ascii_letters) for _ in range(secrets.randbelow(40) + 1))


def event(event_type: str, payload: JSONObject) -> bytes:
    """An ``event`` message of this type with a JSON payload (with its padding)."""
    headers = [(":event-type", event_type), (":content-type", "application/json"), (":message-type", "event")]
    return event_stream_message(headers, dumps({**payload, "p": _padding()}).encode())


async def _open_event_stream(request: web.Request, extra_headers: dict[str, str]) -> web.StreamResponse:
    response = web.StreamResponse(
        status=200,
        headers={"Content-Type": EVENT_STREAM_CONTENT_TYPE, **bedrock_headers(), **extra_headers},
    )
    await response.prepare(request)
    return response


async def _write(response: web.StreamResponse, scenario: Scenario, data: bytes) -> None:
    """Writes one message, in pieces when ``x-fake-write-bytes`` asks for it."""
    framing = scenario.framing
    step = framing.write_bytes or len(data)
    for start in range(0, len(data), step):
        await response.write(data[start : start + step])
        if framing.write_delay_s > 0:
            await asyncio.sleep(framing.write_delay_s)


# --- Converse -----------------------------------------------------------------------------------


def _converse_request(body: JSONObject) -> tuple[list[str], list[Any], int | None]:
    """(texts for token counting, messages, maxTokens) of a Converse request, validated."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise FakeRequestError(
            "1 validation error detected: Value null at 'messages' failed to satisfy constraint: Member must not"
            " be null",
            code="ValidationException",
        )
    texts = [content_text(message.get("content")) for message in messages if isinstance(message, dict)]
    system = body.get("system")
    if system:
        texts.insert(0, content_text(system))
    config = body.get("inferenceConfig")
    max_tokens = config.get("maxTokens") if isinstance(config, dict) else None
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
        raise FakeRequestError(
            "The maximum tokens you requested must be a positive integer.", code="ValidationException"
        )
    return texts, messages, max_tokens


def _converse_usage(tokens: TokenUsage) -> JSONObject:
    usage: JSONObject = {
        "inputTokens": uncached_input_tokens(tokens),
        "outputTokens": tokens.completion_tokens,
        "totalTokens": tokens.prompt_tokens + tokens.completion_tokens,
    }
    if tokens.cached_tokens or tokens.cache_write_tokens:
        usage["cacheReadInputTokens"] = tokens.cached_tokens
        usage["cacheWriteInputTokens"] = tokens.cache_write_tokens
    return tokens.overridden(usage)


def _generate(
    request: web.Request, texts: list[str], messages: list[Any], max_tokens: int | None
) -> tuple[Generation, TokenUsage, Scenario]:
    scenario = scenario_of(request)
    generation = generate(last_user_text(messages), scenario, max_tokens)
    usage = TokenUsage(
        prompt_tokens=count_message_tokens(texts),
        visible_completion_tokens=generation.visible_tokens,
        cached_tokens=scenario.cached_tokens,
        cache_write_tokens=scenario.cache_write_tokens,
        reasoning_tokens=scenario.reasoning_tokens,
        overrides=scenario.usage_overrides,
    )
    return generation, usage, scenario


async def _prepared(request: web.Request) -> JSONObject:
    raw = await request.read()
    verify_signature(request, raw)
    return await read_body(request, "bedrock")


async def converse(request: web.Request) -> web.StreamResponse:
    """``POST /model/{modelId}/converse``."""
    started = time.monotonic()
    body = await _prepared(request)
    texts, messages, max_tokens = _converse_request(body)
    generation, usage, scenario = _generate(request, texts, messages, max_tokens)
    await scenario.pace(len(generation.deltas))
    payload = {
        "metrics": {"latencyMs": int((time.monotonic() - started) * 1000)},
        "output": {"message": {"content": [{"text": generation.text}], "role": "assistant"}},
        "stopReason": "max_tokens" if generation.truncated else "end_turn",
        "usage": _converse_usage(usage),
    }
    return web.Response(text=dumps(payload), content_type="application/json", headers=bedrock_headers())


async def converse_stream(request: web.Request) -> web.StreamResponse:
    """``POST /model/{modelId}/converse-stream``: the answer as binary event-stream messages."""
    started = time.monotonic()
    body = await _prepared(request)
    texts, messages, max_tokens = _converse_request(body)
    generation, usage, scenario = _generate(request, texts, messages, max_tokens)
    response = await _open_event_stream(request, {})
    try:
        await _write(response, scenario, event("messageStart", {"role": "assistant"}))
        for delta in generation.deltas:
            await scenario.pace()
            await _write(
                response, scenario, event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": delta}})
            )
        await _write(response, scenario, event("contentBlockStop", {"contentBlockIndex": 0}))
        stop = "max_tokens" if generation.truncated else "end_turn"
        await _write(response, scenario, event("messageStop", {"stopReason": stop}))
        metrics = {"latencyMs": int((time.monotonic() - started) * 1000)}
        await _write(response, scenario, event("metadata", {"metrics": metrics, "usage": _converse_usage(usage)}))
        await response.write_eof()
    except ConnectionResetError:
        logger.debug("client disconnected during %s", request.path)
    return response


# --- InvokeModel (Anthropic's native body) ------------------------------------------------------


def anthropic_model_name(model_id: str) -> str:
    """Anthropic's name of a Bedrock model id: ``us.anthropic.claude-3-5-sonnet-20241022-v2:0`` ->
    ``claude-3-5-sonnet-20241022``; "" for a model of another family."""
    name = model_id.rsplit("/", 1)[-1]
    name = _REGION_PREFIX.sub("", name)
    if not name.startswith("anthropic."):
        return ""
    return _VERSION_SUFFIX.sub("", name.removeprefix("anthropic."))


def _invoke_request(request: web.Request, body: JSONObject) -> tuple[str, list[str], list[Any], int]:
    model = anthropic_model_name(request.match_info["model_id"])
    if not model:
        raise FakeRequestError(
            "The fake provider serves InvokeModel for Anthropic and Meta Llama models only; use Converse for this"
            " model.",
            code="ValidationException",
        )
    if body.get("anthropic_version") != ANTHROPIC_BEDROCK_VERSION:
        raise FakeRequestError(f"anthropic_version: must be {ANTHROPIC_BEDROCK_VERSION!r}", code="ValidationException")
    if "model" in body:
        raise FakeRequestError("model: Extra inputs are not permitted", code="ValidationException")
    messages = body.get("messages")
    max_tokens = body.get("max_tokens")
    if not isinstance(messages, list) or not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        raise FakeRequestError("messages and max_tokens: Field required", code="ValidationException")
    texts = [content_text(message.get("content")) for message in messages if isinstance(message, dict)]
    if body.get("system"):
        texts.insert(0, content_text(body["system"]))
    return model, texts, messages, max_tokens


def _anthropic_message(
    model: str, message_id: str, content: list[JSONObject], stop: str | None, usage: JSONObject
) -> JSONObject:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": usage,
    }


def is_llama(model_id: str) -> bool:
    """Whether a Bedrock model id (or inference profile) is Meta Llama's."""
    return _REGION_PREFIX.sub("", model_id.rsplit("/", 1)[-1]).startswith("meta.llama")


def _llama_request(request: web.Request, body: JSONObject) -> tuple[Generation, TokenUsage, Scenario]:
    """Llama's native body (``prompt``, optional ``max_gen_len``): the reply and its counts."""
    prompt = body.get("prompt")
    max_gen_len = body.get("max_gen_len")
    if not isinstance(prompt, str) or (max_gen_len is not None and not isinstance(max_gen_len, int)):
        raise FakeRequestError(
            "Malformed input request: #: required key [prompt] not found, please reformat your input and try again.",
            code="ValidationException",
        )
    scenario = scenario_of(request)
    generation = generate(prompt, scenario, max_gen_len)
    usage = TokenUsage(
        prompt_tokens=count_message_tokens([prompt]),
        visible_completion_tokens=generation.visible_tokens,
        overrides=scenario.usage_overrides,
    )
    return generation, usage, scenario


def _token_count_headers(started: float, usage: TokenUsage) -> dict[str, str]:
    return {
        **bedrock_headers(),
        "X-Amzn-Bedrock-Invocation-Latency": str(int((time.monotonic() - started) * 1000)),
        "X-Amzn-Bedrock-Input-Token-Count": str(usage.prompt_tokens),
        "X-Amzn-Bedrock-Output-Token-Count": str(usage.completion_tokens),
    }


async def _invoke_llama(request: web.Request, body: JSONObject, started: float) -> web.StreamResponse:
    generation, usage, scenario = _llama_request(request, body)
    await scenario.pace(len(generation.deltas))
    answer = {
        "generation": generation.text,
        "prompt_token_count": usage.prompt_tokens,
        "generation_token_count": usage.completion_tokens,
        "stop_reason": "length" if generation.truncated else "stop",
    }
    return web.Response(
        text=dumps(answer), content_type="application/json", headers=_token_count_headers(started, usage)
    )


async def _invoke_llama_stream(request: web.Request, body: JSONObject, started: float) -> web.StreamResponse:
    generation, usage, scenario = _llama_request(request, body)
    response = await _open_event_stream(request, {"X-Amzn-Bedrock-Content-Type": "application/json"})
    try:
        generated = 0
        for index, delta in enumerate(generation.deltas):
            await scenario.pace()
            generated += len(delta.split())
            piece = {
                "generation": delta,
                "prompt_token_count": usage.prompt_tokens if index == 0 else None,
                "generation_token_count": generated,
                "stop_reason": None,
            }
            await _write(response, scenario, _chunk(piece))
        metrics = {
            "inputTokenCount": usage.prompt_tokens,
            "outputTokenCount": usage.completion_tokens,
            "invocationLatency": int((time.monotonic() - started) * 1000),
            "firstByteLatency": 0,
        }
        last = {
            "generation": "",
            "prompt_token_count": None,
            "generation_token_count": usage.completion_tokens,
            "stop_reason": "length" if generation.truncated else "stop",
            "amazon-bedrock-invocationMetrics": metrics,
        }
        await _write(response, scenario, _chunk(last))
        await response.write_eof()
    except ConnectionResetError:
        logger.debug("client disconnected during %s", request.path)
    return response


async def invoke(request: web.Request) -> web.StreamResponse:
    """``POST /model/{modelId}/invoke``: an Anthropic Message, or Llama's native answer."""
    started = time.monotonic()
    body = await _prepared(request)
    if is_llama(request.match_info["model_id"]):
        return await _invoke_llama(request, body, started)
    model, texts, messages, max_tokens = _invoke_request(request, body)
    generation, usage, scenario = _generate(request, texts, messages, max_tokens)
    await scenario.pace(len(generation.deltas))
    content = [{"type": "text", "text": generation.text}] if generation.text else []
    stop = "max_tokens" if generation.truncated else "end_turn"
    message = _anthropic_message(model, random_id("msg_bdrk_01", 22), content, stop, message_usage(usage))
    return web.Response(
        text=dumps(message), content_type="application/json", headers=_token_count_headers(started, usage)
    )


def _chunk(document: JSONObject) -> bytes:
    return event("chunk", {"bytes": base64.b64encode(dumps(document).encode()).decode()})


async def invoke_stream(request: web.Request) -> web.StreamResponse:
    """``POST /model/{modelId}/invoke-with-response-stream``: Anthropic's (or Llama's) events in ``chunk``
    messages."""
    started = time.monotonic()
    body = await _prepared(request)
    if is_llama(request.match_info["model_id"]):
        return await _invoke_llama_stream(request, body, started)
    model, texts, messages, max_tokens = _invoke_request(request, body)
    generation, usage, scenario = _generate(request, texts, messages, max_tokens)
    response = await _open_event_stream(request, {"X-Amzn-Bedrock-Content-Type": "application/json"})
    try:
        start_usage = message_usage(usage, output_tokens=1)
        message = _anthropic_message(model, random_id("msg_bdrk_01", 22), [], None, start_usage)
        await _write(response, scenario, _chunk({"type": "message_start", "message": message}))
        first_byte = time.monotonic()
        block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
        await _write(response, scenario, _chunk(block))
        for delta in generation.deltas:
            await scenario.pace()
            text_delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": delta}}
            await _write(response, scenario, _chunk(text_delta))
        await _write(response, scenario, _chunk({"type": "content_block_stop", "index": 0}))
        stop = "max_tokens" if generation.truncated else "end_turn"
        delta_event = {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": message_delta_usage(usage),
        }
        await _write(response, scenario, _chunk(delta_event))
        metrics = {
            "inputTokenCount": usage.prompt_tokens,
            "outputTokenCount": usage.completion_tokens,
            "invocationLatency": int((time.monotonic() - started) * 1000),
            "firstByteLatency": int((first_byte - started) * 1000),
        }
        await _write(response, scenario, _chunk({"type": "message_stop", "amazon-bedrock-invocationMetrics": metrics}))
        await response.write_eof()
    except ConnectionResetError:
        logger.debug("client disconnected during %s", request.path)
    return response
