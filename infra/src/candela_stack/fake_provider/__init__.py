"""A local fake LLM provider that speaks OpenAI's, Anthropic's, Google's and Bedrock's exact wire formats.

No real provider is reachable from the test machines, so Candela's tests and its local demo point the
proxy here. The bodies, headers and server-sent-event streams copy what the real APIs send (field for
field, key order included, captured from real traffic and checked against the installed ``openai`` and
``anthropic`` SDKs), and the content is deterministic so a test can predict every number.

Endpoints (everything but the control plane is "provider" traffic, recorded and subject to error simulation):

- OpenAI: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``POST /v1/embeddings``,
  ``POST /v1/responses`` (all but embeddings stream with ``"stream": true``), ``GET /v1/models``.
  The same paths serve the OpenAI-compatible providers (Groq, Mistral, ... vLLM, Ollama) in the local stack.
- OpenAI, not JSON (``openai_audio``, ``openai_images``, ``openai_files``): ``POST /v1/audio/transcriptions``
  and ``/v1/audio/translations`` (multipart uploads), ``POST /v1/audio/speech`` (binary audio, its size set
  by ``x-fake-audio-bytes``), ``POST /v1/images/generations`` and ``/v1/images/edits`` (multipart),
  ``POST /v1/files`` (multipart), ``GET /v1/files[/{id}[/content]]``, ``DELETE /v1/files/{id}``,
  ``POST /v1/batches``, ``GET /v1/batches/{id}``; each module's docstring gives its deterministic answers.
- Azure OpenAI (``azure_openai``): ``POST /openai/deployments/{deployment}/{chat/completions, completions,
  embeddings, responses}?api-version=...`` and ``POST /openai/v1/{...}``, answering as OpenAI with the
  deployment's model (``x-fake-azure-model``) and Azure's content-filter event first in a chat stream.
- Anthropic: ``POST /v1/messages`` (streams with ``"stream": true``), ``POST /v1/messages/count_tokens``,
  ``GET /v1/models`` when the request carries ``anthropic-version``. ``/v1/messages*`` requires the
  ``anthropic-version`` header, as the real API does.
- AWS Bedrock Runtime: ``POST /model/{modelId}/converse``, ``/converse-stream``, ``/invoke`` and
  ``/invoke-with-response-stream`` (streams in AWS's binary event-stream framing), every request's SigV4
  signature checked with botocore; see :mod:`candela_stack.fake_provider.bedrock`.
- Google (module ``gemini``, see its docstring): the Gemini API's ``POST /v1beta/models/{model}:generateContent``,
  ``:streamGenerateContent`` (SSE with ``?alt=sse``, else a JSON array), ``:countTokens``, ``:embedContent``,
  ``:batchEmbedContents`` (also under ``/v1``), its OpenAI-compatible ``POST /v1beta/openai/chat/completions``,
  and Vertex AI's ``/v1/projects/{p}/locations/{l}/publishers/google/models/{model}:...`` and
  ``.../publishers/anthropic/models/{model}:rawPredict|streamRawPredict``. Google's error shape is
  ``{"error": {"code", "message", "status"}}``.
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
- OpenAI answers (chat, chat chunks, Responses) report the ``service_tier`` that served them: the request's
  ``flex`` or ``priority``, else ``default``, as OpenAI does. Anthropic's 1-hour cache writes and server-tool
  use are played with ``x-fake-usage``, e.g. ``{"cache_creation": {"ephemeral_5m_input_tokens": 100,
  "ephemeral_1h_input_tokens": 400}, "server_tool_use": {"web_search_requests": 2}}``.
- ``x-fake-reasoning-tokens: N`` reports N reasoning tokens, counted inside the completion/output tokens:
  OpenAI ``completion_tokens_details.reasoning_tokens``, Responses ``output_tokens_details.reasoning_tokens``,
  Anthropic ``usage.output_tokens_details.thinking_tokens`` (only present when N > 0). The limit that
  truncates the reply applies to the visible words only.
- Streaming usage: OpenAI chat and completions send a usage chunk (``choices: []``) only when
  ``stream_options.include_usage`` is true, and then ``"usage": null`` in every other chunk. With
  ``x-fake-stream-usage: unasked`` a chat stream that did not ask carries its usage in the last chunk (the
  one with ``finish_reason``), as Mistral, Together, Fireworks, OpenRouter, Perplexity and Cerebras do. Anthropic's
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

Stream framing (all providers' streams): ``x-fake-line-ending: lf|crlf|cr`` (default ``lf``, what the real
providers send) ends every SSE line with that ending, as the SSE spec allows; ``x-fake-write-bytes: N``
writes each event in pieces of at most N bytes (a CRLF may be cut between its CR and LF), and
``x-fake-write-delay-ms: MS`` pauses after each piece, so they reach the reader as separate TCP segments.

Error simulation (error bodies in the provider's exact shape: OpenAI
``{"error": {"message", "type", "param", "code"}}``, Anthropic
``{"type": "error", "error": {"type", "message"}, "request_id"}``, Bedrock ``{"message"}`` with
``x-amzn-ErrorType``; ``/v1/messages*`` or a request with ``anthropic-version`` gets Anthropic's shape,
``/model/*`` Bedrock's, everything else OpenAI's):

- ``x-fake-status: S`` (400-599) answers every such request with status S.
- ``x-fake-fail-times: N`` with ``x-fake-key: K`` fails only the first N requests carrying key K (a
  counter per key kept in the app; the key defaults to ""), then answers normally, so retries can be
  tested. The status is ``x-fake-status``, default 500.
- ``x-fake-error-message: TEXT`` replaces the default message; ``x-fake-retry-after: SECONDS`` adds a
  ``retry-after`` header to the error.
- A missing or non-JSON body, or a body without the endpoint's required fields, is a 400 in the
  provider's shape; so is a malformed ``x-fake-*`` header.

Layout: one module per provider API, each with ``add_routes(router)`` and listed in ``app.PROVIDER_APIS``:
``openai_chat``, ``openai_completions``, ``openai_embeddings``, ``openai_responses``, ``openai_audio``,
``openai_images``, ``openai_files`` (with ``openai_common``, what OpenAI's APIs share),
``anthropic_messages``, ``models``, ``azure_openai``, ``bedrock`` and ``gemini``. The shared core: ``app``
(the server, the filter every provider request goes through, the control plane, the command line),
``recording`` (the request log), ``scenario`` (the ``x-fake-*`` headers), ``generation`` (reply text and
token counts), ``errors`` (each provider's error body) and ``wire`` (JSON, server-sent events, response
headers and ids). A new provider is one module with its handlers and its usage shape, added to
``PROVIDER_APIS``, plus its error body in ``errors`` and its name in ``wire.Flavor``.
"""

from candela_stack.fake_provider.app import create_app, main, serve
from candela_stack.fake_provider.generation import count_message_tokens, default_reply, generate
from candela_stack.fake_provider.recording import CREDENTIAL_HEADERS, redacted_credential
from candela_stack.fake_provider.scenario import Scenario
from candela_stack.fake_provider.wire import FakeRequestError

__all__ = [
    "CREDENTIAL_HEADERS",
    "FakeRequestError",
    "Scenario",
    "count_message_tokens",
    "create_app",
    "default_reply",
    "generate",
    "main",
    "redacted_credential",
    "serve",
]
