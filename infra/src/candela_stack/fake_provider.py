"""A local fake LLM provider that speaks OpenAI's and Anthropic's exact wire formats.

No real provider is reachable from the test machines, so Candela's tests and its local demo point the
proxy here. The bodies, headers and server-sent-event streams copy what the real APIs send (field for
field, key order included, captured from real traffic and checked against the installed ``openai`` and
``anthropic`` SDKs), and the content is deterministic so a test can predict every number.

Endpoints (everything under ``/v1`` is "provider" traffic, recorded and subject to error simulation):

- OpenAI: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``POST /v1/embeddings``,
  ``POST /v1/responses`` (all but embeddings stream with ``"stream": true``), ``GET /v1/models``.
- Anthropic: ``POST /v1/messages`` (streams with ``"stream": true``), ``POST /v1/messages/count_tokens``,
  ``GET /v1/models`` when the request carries ``anthropic-version``. ``/v1/messages*`` requires the
  ``anthropic-version`` header, as the real API does.
- Any other path: 404 in the provider's error shape.
- Control plane (not recorded): ``GET /healthz``; ``GET /_fake/requests`` (JSON list of every provider
  request received: method, path, query, headers with lower-cased names, body as UTF-8 text and base64,
  parsed JSON or null, received_at; ``?header=name:value``, repeatable, keeps only matching requests);
  ``DELETE /_fake/requests`` clears it. The list keeps the most
  recent ``max_recorded`` requests (default 10000) so a long demo does not grow without bound.
  Credentials are never kept, so nobody who can reach this endpoint reads another caller's key: the value
  of each header in ``CREDENTIAL_HEADERS`` is replaced by ``redacted_credential(value)`` (a short hash,
  enough for a test to check which key arrived) and secret query parameters (``?key=``) are redacted.

Reply text (deterministic):

- By default the reply is exactly ``REPLY_WORDS`` = 12 whitespace-separated words: ``"Echo:"``, then the
  first words of the last user message, padded with the words of ``FILLER_WORDS``
  (``lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod``). For example the prompt
  ``"Say hello"`` gets ``"Echo: Say hello lorem ipsum dolor sit amet consectetur adipiscing elit sed"``.
  "Last user message" is the last ``role: "user"`` message (chat, messages, responses input items), the
  Responses ``input`` when it is a string, or the legacy completion ``prompt`` (a list of prompts is
  joined with spaces and answered with one choice; ``n`` is ignored, there is always one choice).
- ``x-fake-reply: TEXT`` sets the reply verbatim (ASCII; may be empty).
- A token limit smaller than the reply (``max_completion_tokens`` or ``max_tokens`` for chat,
  ``max_tokens`` for completions and messages, ``max_output_tokens`` for responses) keeps only that many
  words and ends with ``finish_reason: "length"`` / ``stop_reason: "max_tokens"`` / Responses status
  ``"incomplete"`` (event ``response.incomplete``, ``incomplete_details.reason: "max_output_tokens"``).
- Streams split the reply into deltas of ``WORDS_PER_DELTA`` = 2 words each (a word keeps the whitespace
  before it), so the deltas concatenate to the reply exactly and there are ceil(words / 2) of them
  (6 for the default reply, none for an empty reply).

Token counting (deterministic; "words" means ``len(text.split())``; only text counts: string contents
and the ``text`` of content parts/blocks; images, tool calls and other parts count 0):

- Messages (chat ``messages``; Anthropic ``messages`` plus ``system`` as one extra message when present;
  Responses ``input`` as one message when it is a string, else one message per input item, plus
  ``instructions`` as one extra message when present):
  ``prompt_tokens = REPLY_PRIMING_TOKENS (3) + sum over messages of (MESSAGE_OVERHEAD_TOKENS (3) + words)``.
  "Say hello" alone is 3 + (3 + 2) = 8 tokens.
- Legacy completions: ``prompt_tokens`` = words of the prompt(s); a token-array prompt counts its
  integers. Embeddings: ``prompt_tokens = total_tokens`` = words over all inputs (token arrays count their
  integers). Neither has per-message overhead nor uses the cache/reasoning headers below.
- ``completion_tokens`` (OpenAI) / ``output_tokens`` (Anthropic, Responses) = words of the (possibly
  truncated) reply + the reasoning tokens; ``total_tokens = prompt_tokens + completion_tokens``.
- ``x-fake-cached-tokens: N`` reports N cache-read prompt tokens: OpenAI
  ``prompt_tokens_details.cached_tokens`` / Responses ``input_tokens_details.cached_tokens`` (included in
  ``prompt_tokens``/``input_tokens``, as OpenAI counts them) and Anthropic ``cache_read_input_tokens``.
- ``x-fake-cache-write-tokens: N`` reports N cache-write tokens: Anthropic
  ``cache_creation_input_tokens`` (and ``cache_creation.ephemeral_5m_input_tokens``); OpenAI adds
  ``cache_write_tokens`` to the prompt/input token details only when N > 0.
- Anthropic counts cache reads and writes outside ``input_tokens``, as the real API does:
  ``input_tokens = max(0, prompt_tokens - cached - cache_write)``.
- ``x-fake-usage: {"prompt_tokens": 5000000000, ...}`` (a JSON object) replaces or adds those keys of the
  top-level ``usage`` object of every answer (and of each stream's usage events) verbatim, whatever their
  values: a provider reporting counts out of any sane range (negative, 2**63, 5e9) can be played.
- ``x-fake-reasoning-tokens: N`` reports N reasoning tokens, counted inside the completion/output tokens:
  OpenAI ``completion_tokens_details.reasoning_tokens``, Responses ``output_tokens_details.reasoning_tokens``,
  Anthropic ``usage.output_tokens_details.thinking_tokens`` (only present when N > 0). The limit that
  truncates the reply applies to the visible words only.
- Streaming usage: OpenAI chat and completions send a usage chunk (``choices: []``) only when
  ``stream_options.include_usage`` is true, and then ``"usage": null`` in every other chunk. Anthropic's
  ``message_start`` carries the input-side usage and a provisional ``output_tokens`` of 1, and
  ``message_delta`` carries the final cumulative usage (input-side fields repeated, as the real API does).
  OpenAI stream chunks and Responses text deltas carry a deterministic ``obfuscation`` padding string unless
  ``stream_options.include_obfuscation`` is false.
- Embeddings: the vector is a deterministic unit vector seeded by the SHA-256 of the input, of
  ``dimensions`` (default 1536, 3072 for ``text-embedding-3-large``) float32 values; with
  ``encoding_format: "base64"`` (the openai SDK's default) it is base64 of the little-endian float32 array.

Pacing: ``x-fake-delay-ms: MS`` (or ``create_app(delay_ms=...)`` / ``--delay-ms``, default 0) sleeps MS
before each content delta of a stream, and MS times the number of deltas before a non-streaming answer,
so time-to-first-token and total latency are observable.

Error simulation (error bodies in the provider's exact shape: OpenAI
``{"error": {"message", "type", "param", "code"}}``, Anthropic
``{"type": "error", "error": {"type", "message"}, "request_id"}``; ``/v1/messages*`` or a request with
``anthropic-version`` gets Anthropic's shape, everything else OpenAI's):

- ``x-fake-status: S`` (400-599) answers every such request with status S.
- ``x-fake-fail-times: N`` with ``x-fake-key: K`` fails only the first N requests carrying key K (a
  counter per key kept in the app; the key defaults to ""), then answers normally, so retries can be
  tested. The status is ``x-fake-status``, default 500.
- ``x-fake-error-message: TEXT`` replaces the default message; ``x-fake-retry-after: SECONDS`` adds a
  ``retry-after`` header to the error.
- A missing or non-JSON body, or a body without the endpoint's required fields, is a 400 in the
  provider's shape; so is a malformed ``x-fake-*`` header.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import logging
import math
import random
import re
import secrets
import signal
import string
import sys
import time
from array import array
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from aiohttp import web
from aiohttp.typedefs import Handler

from candela_runtime.redaction import redact_query

logger = logging.getLogger(__name__)

REPLY_WORDS: Final = 12
"""Words in the default reply ("Echo:" + prompt words + filler)."""
FILLER_WORDS: Final = (
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
    "eiusmod",
)
"""Pads the default reply when the prompt has fewer than REPLY_WORDS - 1 words."""
WORDS_PER_DELTA: Final = 2
"""Words per streamed content delta."""
MESSAGE_OVERHEAD_TOKENS: Final = 3
"""Prompt tokens added per message, like OpenAI's role/separator tokens."""
REPLY_PRIMING_TOKENS: Final = 3
"""Prompt tokens added once per message-based request (the primed assistant turn)."""
DEFAULT_EMBEDDING_DIMENSIONS: Final = 1536
LARGE_EMBEDDING_DIMENSIONS: Final = 3072
CREDENTIAL_HEADERS: Final = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "api-key",
        "x-goog-api-key",
        "candela-auth",
        "helicone-auth",
        "cookie",
        "x-amz-security-token",
    }
)
"""Headers whose values are credentials: recorded only as ``redacted_credential(value)``."""


def redacted_credential(value: str) -> str:
    """What the request log keeps of a credential header's value: a fingerprint, never the secret."""
    return "REDACTED sha256:" + hashlib.sha256(value.encode()).hexdigest()[:16]


DEFAULT_MAX_RECORDED: Final = 10_000
SYSTEM_FINGERPRINT: Final = "fp_c4nd3la0f4k"
ANTHROPIC_PROVISIONAL_OUTPUT_TOKENS: Final = 1

HEADER_REPLY: Final = "x-fake-reply"
HEADER_DELAY_MS: Final = "x-fake-delay-ms"
HEADER_CACHED_TOKENS: Final = "x-fake-cached-tokens"
HEADER_CACHE_WRITE_TOKENS: Final = "x-fake-cache-write-tokens"
HEADER_REASONING_TOKENS: Final = "x-fake-reasoning-tokens"
HEADER_USAGE: Final = "x-fake-usage"
HEADER_STATUS: Final = "x-fake-status"
HEADER_FAIL_TIMES: Final = "x-fake-fail-times"
HEADER_KEY: Final = "x-fake-key"
HEADER_ERROR_MESSAGE: Final = "x-fake-error-message"
HEADER_RETRY_AFTER: Final = "x-fake-retry-after"

LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "::1"})

OPENAI_MODELS: Final = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "o4-mini", "text-embedding-3-small")
ANTHROPIC_MODELS: Final = (
    ("claude-opus-4-7", "Claude Opus 4.7"),
    ("claude-sonnet-4-6", "Claude Sonnet 4.6"),
    ("claude-haiku-4-5-20251001", "Claude Haiku 4.5"),
)

OPENAI_PARSE_ERROR: Final = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
    "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. "
    "If you have trouble figuring out how to fix this, please contact us through our help center at "
    "help.openai.com.)"
)

# status -> (error.type, error.code, default message), as OpenAI sends them.
OPENAI_ERRORS: Final[Mapping[int, tuple[str, str | None, str]]] = {
    400: ("invalid_request_error", None, "Invalid request (simulated by the fake provider)."),
    401: (
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
    ),
    403: (
        "invalid_request_error",
        "unsupported_country_region_territory",
        "Country, region, or territory not supported",
    ),
    404: ("invalid_request_error", "model_not_found", "The model does not exist or you do not have access to it."),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached on requests per min (RPM): Limit 60, Used 60, Requested 1. Please try again in 1s.",
    ),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    503: ("server_error", None, "The server is overloaded or not ready yet."),
}

# status -> (error.type, default message), as Anthropic sends them.
ANTHROPIC_ERRORS: Final[Mapping[int, tuple[str, str]]] = {
    400: ("invalid_request_error", "Invalid request (simulated by the fake provider)."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "The requested resource could not be found."),
    409: ("conflict_error", "Conflict."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of requests has exceeded your per-minute rate limit."),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timed out."),
    529: ("overloaded_error", "Overloaded"),
}

Flavor = Literal["openai", "anthropic"]
JSONObject = dict[str, Any]


class FakeRequestError(Exception):
    """A request the real provider would reject; mapped to its error shape at the HTTP boundary."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code


@dataclass(frozen=True)
class Scenario:
    """What one request asks of the fake through its ``x-fake-*`` headers."""

    reply: str | None
    """The exact reply text, or None for the default echo reply."""
    cached_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    delay_s: float
    """Pause before each streamed content delta."""
    usage_overrides: JSONObject = field(default_factory=dict)
    """Keys that replace those of every ``usage`` object sent (``x-fake-usage``)."""

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], *, default_delay_ms: float) -> Scenario:
        """Parse the scenario headers; raise FakeRequestError for a malformed one."""
        delay_ms = _header_number(headers, HEADER_DELAY_MS, default_delay_ms)
        return cls(
            reply=headers.get(HEADER_REPLY),
            cached_tokens=_header_int(headers, HEADER_CACHED_TOKENS, 0),
            cache_write_tokens=_header_int(headers, HEADER_CACHE_WRITE_TOKENS, 0),
            reasoning_tokens=_header_int(headers, HEADER_REASONING_TOKENS, 0),
            delay_s=delay_ms / 1000.0,
            usage_overrides=_header_object(headers, HEADER_USAGE),
        )

    async def pace(self, deltas: int = 1) -> None:
        """Sleep the configured delay ``deltas`` times (no-op without a delay)."""
        if self.delay_s > 0 and deltas > 0:
            await asyncio.sleep(self.delay_s * deltas)


@dataclass(frozen=True)
class RecordedRequest:
    """One provider request as received, for ``GET /_fake/requests``."""

    method: str
    path: str
    query_string: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    received_at: float

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (any case; repeats joined by ", "), or None when absent."""
        values = [value for key, value in self.headers if key.lower() == name.lower()]
        return ", ".join(values) if values else None

    def to_json(self) -> JSONObject:
        """The JSON form: header names lower-cased (repeats joined by ", "), body as text and base64."""
        headers: dict[str, str] = {}
        for name, value in self.headers:
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        try:
            parsed: Any = json.loads(self.body) if self.body else None
        except ValueError:
            parsed = None
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query_string,
            "headers": headers,
            "body": self.body.decode("utf-8", errors="replace"),
            "body_base64": base64.b64encode(self.body).decode("ascii"),
            "json": parsed,
            "received_at": self.received_at,
        }


@dataclass
class FakeProviderState:
    """Per-app mutable state: the request log and the simulated-failure counters."""

    delay_ms: float = 0.0
    max_recorded: int = DEFAULT_MAX_RECORDED
    requests: deque[RecordedRequest] = field(default_factory=deque)
    failures_served: dict[str, int] = field(default_factory=dict)

    def record(self, request: web.Request, body: bytes) -> None:
        """Append a request to the log, dropping the oldest beyond ``max_recorded``."""
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query_string=redact_query(request.query_string),
                headers=tuple(
                    (name, redacted_credential(value) if name.lower() in CREDENTIAL_HEADERS else value)
                    for name, value in request.headers.items()
                ),
                body=body,
                received_at=time.time(),
            )
        )
        while len(self.requests) > self.max_recorded:
            self.requests.popleft()

    def simulated_failure(self, headers: Mapping[str, str]) -> int | None:
        """The error status this request must get per ``x-fake-status``/``x-fake-fail-times``, if any."""
        status_given = HEADER_STATUS in headers
        if not status_given and HEADER_FAIL_TIMES not in headers:
            return None
        status = _header_int(headers, HEADER_STATUS, 500)
        if not 400 <= status <= 599:
            raise FakeRequestError(f"{HEADER_STATUS} must be an HTTP error status (400-599), got {status}.")
        if HEADER_FAIL_TIMES not in headers:
            return status
        fail_times = _header_int(headers, HEADER_FAIL_TIMES, 0)
        key = headers.get(HEADER_KEY, "")
        served = self.failures_served.get(key, 0)
        if served >= fail_times:
            return None
        self.failures_served[key] = served + 1
        return status


STATE_KEY: Final = web.AppKey("fake_provider_state", FakeProviderState)
SCENARIO_KEY: Final = web.RequestKey("fake_provider_scenario", Scenario)


@dataclass(frozen=True)
class Generation:
    """The reply to send: its text, its stream deltas and whether a token limit cut it."""

    text: str
    deltas: tuple[str, ...]
    visible_tokens: int
    truncated: bool


@dataclass(frozen=True)
class TokenUsage:
    """Token counts of one request, rendered in each provider's usage shape."""

    prompt_tokens: int
    visible_completion_tokens: int
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    overrides: JSONObject = field(default_factory=dict)
    """Keys that replace those of each rendered usage object (``x-fake-usage``)."""

    @property
    def completion_tokens(self) -> int:
        """Output tokens including reasoning, as providers bill them."""
        return self.visible_completion_tokens + self.reasoning_tokens

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def openai_chat(self) -> JSONObject:
        """The chat.completion ``usage`` object."""
        prompt_details: JSONObject = {"cached_tokens": self.cached_tokens, "audio_tokens": 0}
        if self.cache_write_tokens:
            prompt_details["cache_write_tokens"] = self.cache_write_tokens
        return self._overridden(
            {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens,
                "prompt_tokens_details": prompt_details,
                "completion_tokens_details": {
                    "reasoning_tokens": self.reasoning_tokens,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            }
        )

    def openai_legacy(self) -> JSONObject:
        """The text_completion ``usage`` object (no details)."""
        return self._overridden(
            {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens,
            }
        )

    def openai_responses(self) -> JSONObject:
        """The Responses API ``usage`` object."""
        input_details: JSONObject = {"cached_tokens": self.cached_tokens}
        if self.cache_write_tokens:
            input_details["cache_write_tokens"] = self.cache_write_tokens
        return self._overridden(
            {
                "input_tokens": self.prompt_tokens,
                "input_tokens_details": input_details,
                "output_tokens": self.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
                "total_tokens": self.total_tokens,
            }
        )

    @property
    def anthropic_input_tokens(self) -> int:
        """Uncached input tokens: Anthropic reports cache reads and writes separately."""
        return max(0, self.prompt_tokens - self.cached_tokens - self.cache_write_tokens)

    def anthropic(self, *, output_tokens: int | None = None) -> JSONObject:
        """The Message ``usage`` object (``output_tokens`` overridable for message_start)."""
        usage: JSONObject = {
            "input_tokens": self.anthropic_input_tokens,
            "cache_creation_input_tokens": self.cache_write_tokens,
            "cache_read_input_tokens": self.cached_tokens,
            "cache_creation": {"ephemeral_5m_input_tokens": self.cache_write_tokens, "ephemeral_1h_input_tokens": 0},
            "output_tokens": self.completion_tokens if output_tokens is None else output_tokens,
            "service_tier": "standard",
        }
        if self.reasoning_tokens and output_tokens is None:
            usage["output_tokens_details"] = {"thinking_tokens": self.reasoning_tokens}
        return self._overridden(usage)

    def anthropic_delta(self) -> JSONObject:
        """The cumulative ``usage`` of Anthropic's message_delta event."""
        usage: JSONObject = {
            "input_tokens": self.anthropic_input_tokens,
            "cache_creation_input_tokens": self.cache_write_tokens,
            "cache_read_input_tokens": self.cached_tokens,
            "output_tokens": self.completion_tokens,
        }
        if self.reasoning_tokens:
            usage["output_tokens_details"] = {"thinking_tokens": self.reasoning_tokens}
        return self._overridden(usage)

    def _overridden(self, usage: JSONObject) -> JSONObject:
        return {**usage, **self.overrides} if self.overrides else usage


# --- text and token helpers -------------------------------------------------------------------------


def count_words(text: str) -> int:
    """Whitespace-separated words: the fake's unit of tokens."""
    return len(text.split())


def content_text(content: Any) -> str:
    """The text of a message content: a string, or the ``text`` of its parts joined by spaces."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def count_message_tokens(texts: Iterable[str]) -> int:
    """Prompt tokens of a message list: priming plus, per message, overhead plus words."""
    return REPLY_PRIMING_TOKENS + sum(MESSAGE_OVERHEAD_TOKENS + count_words(text) for text in texts)


def last_user_text(messages: Sequence[Any]) -> str:
    """The text of the last ``role: "user"`` message, or "" when there is none."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def default_reply(prompt_text: str) -> str:
    """``"Echo:"`` + the first prompt words, padded with filler to exactly REPLY_WORDS words."""
    words = ["Echo:", *prompt_text.split()[: REPLY_WORDS - 1], *FILLER_WORDS]
    return " ".join(words[:REPLY_WORDS])


def split_words(text: str) -> list[str]:
    """Split text into words that keep the whitespace before them (and the text's trailing whitespace)."""
    pieces = re.findall(r"\s*\S+", text)
    if not pieces:
        return [text] if text else []
    consumed = sum(len(piece) for piece in pieces)
    pieces[-1] += text[consumed:]
    return pieces


def generate(prompt_text: str, scenario: Scenario, max_tokens: int | None) -> Generation:
    """The reply for a prompt under a scenario, cut to ``max_tokens`` words when given."""
    text = scenario.reply if scenario.reply is not None else default_reply(prompt_text)
    pieces = split_words(text)
    word_count = count_words(text)
    truncated = False
    if max_tokens is not None and max_tokens < word_count:
        truncated = True
        pieces = pieces[: max(0, max_tokens)]
        pieces[-1:] = [pieces[-1].rstrip()] if pieces else []
        text = "".join(pieces)
        word_count = count_words(text)
    deltas = tuple("".join(pieces[start : start + WORDS_PER_DELTA]) for start in range(0, len(pieces), WORDS_PER_DELTA))
    return Generation(text=text, deltas=deltas, visible_tokens=word_count, truncated=truncated)


def obfuscation_padding(payload: str) -> str:
    """Deterministic stand-in for OpenAI's random ``obfuscation`` field (pads to a multiple of 16)."""
    length = 16 - len(payload) % 16
    return (string.ascii_letters + string.digits)[len(payload) % 40 :][:length]


def embedding_vector(seed_text: str, dimensions: int) -> array[float]:
    """A deterministic float32 unit vector seeded by the SHA-256 of ``seed_text``."""
    seed = int.from_bytes(hashlib.sha256(seed_text.encode("utf-8")).digest()[:8], "little")
    rng = random.Random(seed)
    values = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(value * value for value in values)) or 1.0
    return array("f", (value / norm for value in values))


def random_id(prefix: str, length: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    """An id like the providers' (``chatcmpl-...``, ``msg_01...``, ``resp_...``)."""
    return prefix + "".join(secrets.choice(alphabet) for _ in range(length))


# --- request parsing ----------------------------------------------------------------------------------


def _header_int(headers: Mapping[str, str], name: str, default: int) -> int:
    raw = headers.get(name)
    if raw is None:
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise FakeRequestError(f"Header {name} must be a non-negative integer, got {raw!r}.") from None
    if value < 0:
        raise FakeRequestError(f"Header {name} must be a non-negative integer, got {raw!r}.")
    return value


def _header_object(headers: Mapping[str, str], name: str) -> JSONObject:
    raw = headers.get(name)
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise FakeRequestError(f"Header {name} must be a JSON object, got {raw!r}.")
    return value


def _header_number(headers: Mapping[str, str], name: str, default: float) -> float:
    raw = headers.get(name)
    if raw is None:
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise FakeRequestError(f"Header {name} must be a non-negative number, got {raw!r}.") from None
    if not math.isfinite(value) or value < 0:
        raise FakeRequestError(f"Header {name} must be a non-negative number, got {raw!r}.")
    return value


async def _read_body(request: web.Request, flavor: Flavor) -> JSONObject:
    raw = await request.read()
    try:
        body = json.loads(raw) if raw.strip() else None
    except ValueError:
        body = None
    if not isinstance(body, dict):
        if flavor == "anthropic":
            raise FakeRequestError("There was an issue with your request body: the body must be a JSON object.")
        raise FakeRequestError(OPENAI_PARSE_ERROR)
    return body


def _require_openai_model(body: JSONObject) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise FakeRequestError("you must provide a model parameter")
    return model


def _require_openai_field(body: JSONObject, name: str) -> Any:
    if body.get(name) is None:
        raise FakeRequestError(f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")
    return body[name]


def _optional_int(body: JSONObject, *names: str) -> int | None:
    for name in names:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _stream_options(body: JSONObject) -> tuple[bool, bool]:
    """(include_usage, include_obfuscation) from ``stream_options``."""
    options = body.get("stream_options")
    if not isinstance(options, dict):
        return False, True
    return options.get("include_usage") is True, options.get("include_obfuscation") is not False


def _prompt_parts(prompt: Any) -> list[Any]:
    """A legacy ``prompt``/embeddings ``input`` as a list of items (strings or token arrays)."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(item, int) for item in prompt):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        return list(prompt)
    raise FakeRequestError(
        "'prompt' must be a string, a non-empty array of strings or an array of token arrays.", param="prompt"
    )


def _part_tokens(part: Any) -> int:
    if isinstance(part, str):
        return count_words(part)
    if isinstance(part, list):
        return len(part)
    return 0


# --- responses ----------------------------------------------------------------------------------------


def _dumps(payload: Any, *, pretty: bool = False) -> str:
    if pretty:
        return json.dumps(payload, ensure_ascii=False, indent=2) + "\n"
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def _openai_headers() -> dict[str, str]:
    return {"x-request-id": random_id("req_", 32, string.hexdigits[:16]), "openai-version": "2020-10-01"}


def _anthropic_headers() -> dict[str, str]:
    return {"request-id": random_id("req_011", 21)}


def _openai_json(payload: JSONObject, started: float) -> web.Response:
    headers = _openai_headers()
    headers["openai-processing-ms"] = str(int((time.monotonic() - started) * 1000))
    return web.Response(text=_dumps(payload, pretty=True), content_type="application/json", headers=headers)


def _anthropic_json(payload: JSONObject) -> web.Response:
    return web.Response(text=_dumps(payload), content_type="application/json", headers=_anthropic_headers())


def openai_error_body(message: str, error_type: str, param: str | None, code: str | None) -> JSONObject:
    """OpenAI's error body."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def anthropic_error_body(error_type: str, message: str, request_id: str) -> JSONObject:
    """Anthropic's error body."""
    return {"type": "error", "error": {"type": error_type, "message": message}, "request_id": request_id}


def error_response(
    flavor: Flavor,
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An error with this message in the provider's shape; the error type follows from the status."""
    if flavor == "anthropic":
        response_headers = _anthropic_headers()
        error_type = ANTHROPIC_ERRORS.get(status, (_anthropic_fallback_type(status), ""))[0]
        payload = anthropic_error_body(error_type, message, response_headers["request-id"])
    else:
        response_headers = _openai_headers()
        error_type = OPENAI_ERRORS.get(status, (_openai_fallback_type(status), None, ""))[0]
        payload = openai_error_body(message, error_type, param, code)
    response_headers.update(headers or {})
    return web.Response(
        status=status,
        text=_dumps(payload, pretty=flavor == "openai"),
        content_type="application/json",
        headers=response_headers,
    )


def simulated_error_response(flavor: Flavor, status: int, message: str | None, retry_after: str | None) -> web.Response:
    """The error the provider usually sends for ``status`` (message overridable), for x-fake-status."""
    headers = {"retry-after": retry_after} if retry_after is not None else {}
    fallback_message = f"Simulated HTTP {status} error."
    if flavor == "anthropic":
        default_message = ANTHROPIC_ERRORS.get(status, ("", fallback_message))[1]
        return error_response(flavor, status, message or default_message, headers=headers)
    _, code, default_message = OPENAI_ERRORS.get(status, ("", None, fallback_message))
    return error_response(flavor, status, message or default_message, code=code, headers=headers)


def _openai_fallback_type(status: int) -> str:
    return "invalid_request_error" if status < 500 else "server_error"


def _anthropic_fallback_type(status: int) -> str:
    return "invalid_request_error" if status < 500 else "api_error"


def request_flavor(request: web.Request) -> Flavor:
    """Whose error shape a request gets: Anthropic for /v1/messages* or an anthropic-version header."""
    if request.path.startswith("/v1/messages") or "anthropic-version" in request.headers:
        return "anthropic"
    return "openai"


def sse_event(payload: Any, event: str | None = None) -> bytes:
    """One server-sent event (``event:`` line only when given)."""
    prefix = f"event: {event}\n" if event is not None else ""
    return f"{prefix}data: {_dumps(payload)}\n\n".encode()


async def _open_stream(request: web.Request, headers: Mapping[str, str]) -> web.StreamResponse:
    response = web.StreamResponse(
        status=200,
        headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache", **headers},
    )
    await response.prepare(request)
    return response


def _scenario(request: web.Request) -> Scenario:
    return request[SCENARIO_KEY]


# --- OpenAI chat completions --------------------------------------------------------------------------


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions``: a chat.completion object or a chat.completion.chunk stream."""
    started = time.monotonic()
    body = await _read_body(request, "openai")
    model = _require_openai_model(body)
    messages = _require_openai_field(body, "messages")
    if not isinstance(messages, list):
        raise FakeRequestError("'messages' must be an array.", param="messages")
    scenario = _scenario(request)
    generation = generate(
        last_user_text(messages), scenario, _optional_int(body, "max_completion_tokens", "max_tokens")
    )
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
        return await _stream_chat(request, body, model, completion_id, created, generation, usage, finish_reason)
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
        "usage": usage.openai_chat(),
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }
    return _openai_json(payload, started)


async def _stream_chat(
    request: web.Request,
    body: JSONObject,
    model: str,
    completion_id: str,
    created: int,
    generation: Generation,
    usage: TokenUsage,
    finish_reason: str,
) -> web.StreamResponse:
    include_usage, include_obfuscation = _stream_options(body)
    scenario = _scenario(request)

    def chunk(choices: list[JSONObject], chunk_usage: JSONObject | None, padding_seed: str) -> bytes:
        payload: JSONObject = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        }
        if include_usage:
            payload["usage"] = chunk_usage
        if include_obfuscation:
            payload["obfuscation"] = obfuscation_padding(padding_seed)
        return sse_event(payload)

    def choice(delta: JSONObject, finish: str | None) -> list[JSONObject]:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

    response = await _open_stream(request, _openai_headers())
    try:
        await response.write(chunk(choice({"role": "assistant", "content": "", "refusal": None}, None), None, ""))
        for delta in generation.deltas:
            await scenario.pace()
            await response.write(chunk(choice({"content": delta}, None), None, delta))
        await response.write(chunk(choice({}, finish_reason), None, finish_reason))
        if include_usage:
            await response.write(chunk([], usage.openai_chat(), "usage"))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    except ConnectionResetError:
        # The client went away mid-stream (a cancelled request): nothing left to send it.
        logger.debug("client disconnected during %s", request.path)
    return response


# --- OpenAI legacy completions ------------------------------------------------------------------------


async def completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/completions``: a text_completion object or stream."""
    started = time.monotonic()
    body = await _read_body(request, "openai")
    model = _require_openai_model(body)
    parts = _prompt_parts(_require_openai_field(body, "prompt"))
    scenario = _scenario(request)
    prompt_text = " ".join(part for part in parts if isinstance(part, str))
    generation = generate(prompt_text, scenario, _optional_int(body, "max_tokens"))
    usage = TokenUsage(
        prompt_tokens=sum(_part_tokens(part) for part in parts),
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
        payload["usage"] = usage.openai_legacy()
        return _openai_json(payload, started)

    include_usage, _ = _stream_options(body)

    def chunk(payload: JSONObject) -> bytes:
        if include_usage:
            payload.setdefault("usage", None)
        return sse_event(payload)

    response = await _open_stream(request, _openai_headers())
    try:
        for delta in generation.deltas:
            await scenario.pace()
            await response.write(chunk(completion(delta, None)))
        await response.write(chunk(completion("", finish_reason)))
        if include_usage:
            usage_chunk = completion("", None)
            usage_chunk["choices"] = []
            usage_chunk["usage"] = usage.openai_legacy()
            await response.write(chunk(usage_chunk))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    except ConnectionResetError:
        logger.debug("client disconnected during %s", request.path)
    return response


# --- OpenAI embeddings --------------------------------------------------------------------------------


async def embeddings(request: web.Request) -> web.StreamResponse:
    """``POST /v1/embeddings``: a list of deterministic embedding objects (float or base64)."""
    started = time.monotonic()
    body = await _read_body(request, "openai")
    model = _require_openai_model(body)
    raw_input = _require_openai_field(body, "input")
    try:
        inputs = _prompt_parts(raw_input)
    except FakeRequestError:
        raise FakeRequestError(
            "'input' must be a string, a non-empty array of strings or an array of token arrays.", param="input"
        ) from None
    encoding_format = body.get("encoding_format", "float")
    if encoding_format not in ("float", "base64"):
        raise FakeRequestError(
            f"{encoding_format!r} is not one of ['float', 'base64'] - 'encoding_format'", param="encoding_format"
        )
    dimensions = body.get("dimensions")
    if dimensions is None:
        dimensions = LARGE_EMBEDDING_DIMENSIONS if model.endswith("-large") else DEFAULT_EMBEDDING_DIMENSIONS
    if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1:
        raise FakeRequestError("'dimensions' must be a positive integer.", param="dimensions")
    data: list[JSONObject] = []
    for index, item in enumerate(inputs):
        vector = embedding_vector(item if isinstance(item, str) else json.dumps(item), dimensions)
        embedding: Any
        if encoding_format == "base64":
            if sys.byteorder != "little":
                vector.byteswap()
            embedding = base64.b64encode(vector.tobytes()).decode("ascii")
        else:
            embedding = vector.tolist()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    prompt_tokens = sum(_part_tokens(item) for item in inputs)
    payload = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
    return _openai_json(payload, started)


# --- OpenAI Responses API -----------------------------------------------------------------------------


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
    started = time.monotonic()
    body = await _read_body(request, "openai")
    model = _require_openai_model(body)
    _require_openai_field(body, "input")
    scenario = _scenario(request)
    texts, prompt_text = _responses_prompt(body)
    generation = generate(prompt_text, scenario, _optional_int(body, "max_output_tokens"))
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
            "service_tier": "default" if final else "auto",
            "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "text": body.get("text") or {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools", []),
            "top_logprobs": body.get("top_logprobs", 0),
            "top_p": body.get("top_p", 1.0),
            "truncation": body.get("truncation", "disabled"),
            "usage": usage.openai_responses() if final else None,
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
        return _openai_json(response_object(final_status, [final_item], final=True), started)

    options = body.get("stream_options")
    include_obfuscation = not (isinstance(options, dict) and options.get("include_obfuscation") is False)
    sequence_number = 0

    def event(event_type: str, **fields: Any) -> bytes:
        nonlocal sequence_number
        payload = {"type": event_type, **fields, "sequence_number": sequence_number}
        sequence_number += 1
        return sse_event(payload, event_type)

    where: JSONObject = {"item_id": message_id, "output_index": 0}
    response = await _open_stream(request, _openai_headers())
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


# --- Anthropic Messages -------------------------------------------------------------------------------


def _anthropic_prompt(body: JSONObject) -> tuple[list[str], list[Any], str]:
    """(message texts for token counting, messages, model) of a Messages request, validated."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise FakeRequestError("model: Field required")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise FakeRequestError("messages: Field required")
    texts = [content_text(message.get("content")) for message in messages if isinstance(message, dict)]
    system = body.get("system")
    if system:
        texts.insert(0, content_text(system))
    return texts, messages, model


def _require_anthropic_version(request: web.Request) -> None:
    if "anthropic-version" not in request.headers:
        raise FakeRequestError("anthropic-version: header is required")


async def messages(request: web.Request) -> web.StreamResponse:
    """``POST /v1/messages``: an Anthropic Message or its event stream."""
    _require_anthropic_version(request)
    body = await _read_body(request, "anthropic")
    texts, message_list, model = _anthropic_prompt(body)
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        raise FakeRequestError("max_tokens: Field required")
    scenario = _scenario(request)
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
        return _anthropic_json(message(content, stop_reason, usage.anthropic()))

    def event(event_type: str, **fields: Any) -> bytes:
        return sse_event({"type": event_type, **fields}, event_type)

    response = await _open_stream(request, _anthropic_headers())
    try:
        start_usage = usage.anthropic(output_tokens=ANTHROPIC_PROVISIONAL_OUTPUT_TOKENS)
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
                usage=usage.anthropic_delta(),
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
    body = await _read_body(request, "anthropic")
    texts, _, _ = _anthropic_prompt(body)
    return _anthropic_json({"input_tokens": count_message_tokens(texts)})


# --- models, fallback and control plane ---------------------------------------------------------------


async def list_models(request: web.Request) -> web.StreamResponse:
    """``GET /v1/models`` in OpenAI's shape, or Anthropic's when ``anthropic-version`` is sent."""
    if request_flavor(request) == "anthropic":
        data = [
            {"type": "model", "id": model_id, "display_name": name, "created_at": "2025-08-05T00:00:00Z"}
            for model_id, name in ANTHROPIC_MODELS
        ]
        return _anthropic_json({"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]})
    payload = {
        "object": "list",
        "data": [
            {"id": model_id, "object": "model", "created": 1_715_367_049, "owned_by": "system"}
            for model_id in OPENAI_MODELS
        ],
    }
    return _openai_json(payload, time.monotonic())


async def not_found(request: web.Request) -> web.StreamResponse:
    """Any other path: 404 in the provider's shape."""
    flavor = request_flavor(request)
    if flavor == "anthropic":
        return error_response(flavor, 404, "Not Found")
    return error_response(flavor, 404, f"Invalid URL ({request.method} {request.path})")


async def healthz(request: web.Request) -> web.StreamResponse:
    """``GET /healthz``: 200 while serving."""
    return web.json_response({"status": "ok"})


async def get_recorded_requests(request: web.Request) -> web.StreamResponse:
    """``GET /_fake/requests``: every recorded provider request, oldest first.

    ``?header=name:value`` (repeatable) keeps only requests carrying those header values, so a test that
    looks for its own requests is not handed every large body other tests sent.
    """
    state = request.app[STATE_KEY]
    wanted = [item.partition(":") for item in request.query.getall("header", [])]
    matching = [
        recorded for recorded in state.requests if all(recorded.header(name) == value for name, _, value in wanted)
    ]
    return web.json_response([recorded.to_json() for recorded in matching])


async def clear_recorded_requests(request: web.Request) -> web.StreamResponse:
    """``DELETE /_fake/requests``: forget the recorded requests."""
    request.app[STATE_KEY].requests.clear()
    return web.Response(status=204)


def _is_control_path(path: str) -> bool:
    return path == "/healthz" or path.startswith("/_fake/")


@web.middleware
async def provider_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Record provider requests, apply the ``x-fake-*`` scenario and map FakeRequestError to error bodies."""
    if _is_control_path(request.path):
        return await handler(request)
    state = request.app[STATE_KEY]
    state.record(request, await request.read())
    flavor = request_flavor(request)
    try:
        request[SCENARIO_KEY] = Scenario.from_headers(request.headers, default_delay_ms=state.delay_ms)
        status = state.simulated_failure(request.headers)
        if status is not None:
            return simulated_error_response(
                flavor, status, request.headers.get(HEADER_ERROR_MESSAGE), request.headers.get(HEADER_RETRY_AFTER)
            )
        return await handler(request)
    except FakeRequestError as error:
        return error_response(flavor, error.status, error.message, param=error.param, code=error.code)


def create_app(*, delay_ms: float = 0.0, max_recorded: int = DEFAULT_MAX_RECORDED) -> web.Application:
    """Build the fake provider app; ``delay_ms`` paces streams unless a request sets x-fake-delay-ms."""
    app = web.Application(middlewares=[provider_middleware], client_max_size=64 * 1024 * 1024)
    app[STATE_KEY] = FakeProviderState(delay_ms=delay_ms, max_recorded=max_recorded)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/_fake/requests", get_recorded_requests)
    app.router.add_delete("/_fake/requests", clear_recorded_requests)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/v1/responses", responses)
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
    app.router.add_get("/v1/models", list_models)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


# --- command line -------------------------------------------------------------------------------------


async def serve(host: str, port: int, *, delay_ms: float = 0.0) -> None:
    """Serve the fake provider on host:port until SIGTERM or SIGINT, then shut down cleanly."""
    runner = web.AppRunner(create_app(delay_ms=delay_ms), access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(stop_signal, stop.set)
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = runner.addresses[0][1] if runner.addresses else port
        logger.info("fake provider listening on http://%s:%d", host, bound_port)
        await stop.wait()
        logger.info("fake provider stopping")
    finally:
        for stop_signal in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(stop_signal)
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m candela_stack.fake_provider --port P [--host 127.0.0.1] [--delay-ms MS]``."""
    parser = argparse.ArgumentParser(
        prog="python -m candela_stack.fake_provider", description="Local fake OpenAI/Anthropic provider."
    )
    parser.add_argument("--port", type=int, required=True, help="TCP port (0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="pause before each streamed delta")
    args = parser.parse_args(argv)
    if args.host not in LOOPBACK_HOSTS:
        parser.error(f"--host must be a loopback address ({', '.join(sorted(LOOPBACK_HOSTS))}), got {args.host}")
    if args.delay_ms < 0:
        parser.error("--delay-ms must be non-negative")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args.host, args.port, delay_ms=args.delay_ms))


if __name__ == "__main__":
    main()
