"""Token usage, the answering model and the finish reason, read from provider responses.

Non-streamed answers carry a ``usage`` object; streams carry it in a final chunk (OpenAI chat and
completions with ``stream_options.include_usage``), in ``response.completed`` (OpenAI Responses), or split
over ``message_start`` and ``message_delta`` (Anthropic); Google's (Gemini, Vertex) carry ``usageMetadata``
in each answer and stream chunk. Anthropic's ``input_tokens`` exclude cache reads
and writes; Candela's ``prompt_tokens`` always include them, so totals compare across providers.

A count no log can store (negative, above :data:`~candela_runtime.limits.MAX_TOKEN_COUNT`, fractional, not
a number) reads as 0 and marks the usage clamped, as does a total above the bound: the log is kept, with
zeroed counts, the flag ``usage_clamped`` and no cost, rather than refused by ingest or failing the request.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import orjson

from candela.logs.v1 import log_record_pb2
from candela_proxy.providers import Provider
from candela_proxy.sse import EventSplitter, event_data
from candela_proxy.usage_extras import apply_anthropic_extras, apply_service_tier
from candela_runtime.limits import MAX_TOKEN_COUNT


@dataclass
class ResponseFacts:
    """What Candela learns from a response body."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    audio_prompt_tokens: int = 0
    audio_completion_tokens: int = 0
    # The audio share of cache_read_tokens when the provider breaks its cache reads down by modality (Gemini's
    # cacheTokensDetails), else None: with it, cached audio is priced at the audio cache-read price.
    cache_audio_read_tokens: int | None = None
    has_usage: bool = False
    response_model: str = ""
    # The provider's id of the answer (chatcmpl-..., msg_..., resp_...), the first one a stream names.
    response_id: str = ""
    finish_reason: str = ""
    # A reported count was out of range and read as 0 (see the module's docstring).
    usage_clamped: bool = False
    # Pricing extras (see candela_proxy.pricing and candela_proxy.usage_extras): the part of
    # cache_write_tokens written for one hour, Anthropic's server-tool requests, the tier that served.
    cache_write_1h_tokens: int = 0
    web_search_requests: int = 0
    web_fetch_requests: int = 0
    service_tier: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for storing with a cached answer."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ResponseFacts:
        """The inverse of :meth:`as_dict` (unknown keys ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    @property
    def clamped(self) -> bool:
        """Whether the usage as logged is not what the provider reported (a count was out of range)."""
        return self.usage_clamped or self.prompt_tokens + self.completion_tokens > MAX_TOKEN_COUNT

    def to_proto(self) -> log_record_pb2.TokenUsage:
        """The TokenUsage message; all zeros when the total is out of range (each count alone is within)."""
        if self.prompt_tokens + self.completion_tokens > MAX_TOKEN_COUNT:
            return log_record_pb2.TokenUsage()
        return log_record_pb2.TokenUsage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.prompt_tokens + self.completion_tokens,
            cache_read_tokens=self.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens,
            reasoning_tokens=self.reasoning_tokens,
            audio_prompt_tokens=self.audio_prompt_tokens,
            audio_completion_tokens=self.audio_completion_tokens,
        )


def _count(facts: ResponseFacts, value: Any) -> int:
    """A reported token count; 0 when there is none (absent or null), and 0 with the usage marked clamped
    when it is no count a log can store."""
    if value is None:
        return 0
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 12.0: JSON does not tell integers from floats
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKEN_COUNT:
        return value
    facts.usage_clamped = True
    return 0


def reported_count(facts: ResponseFacts, value: Any) -> int:
    """A provider's token count as a log stores it (see :func:`_count`), for the other providers' readers."""
    return _count(facts, value)


def _details(usage: dict[str, Any], key: str) -> dict[str, Any]:
    value = usage.get(key)
    return value if isinstance(value, dict) else {}


def _apply_openai_usage(facts: ResponseFacts, usage: dict[str, Any]) -> None:
    facts.has_usage = True
    if "input_tokens" in usage:  # the Responses API's naming
        facts.prompt_tokens = _count(facts, usage.get("input_tokens"))
        facts.completion_tokens = _count(facts, usage.get("output_tokens"))
        facts.cache_read_tokens = _count(facts, _details(usage, "input_tokens_details").get("cached_tokens"))
        # Audio transcriptions name it input_token_details (no s).
        facts.audio_prompt_tokens = _count(facts, _details(usage, "input_token_details").get("audio_tokens"))
        facts.reasoning_tokens = _count(facts, _details(usage, "output_tokens_details").get("reasoning_tokens"))
        return
    prompt_details = _details(usage, "prompt_tokens_details")
    completion_details = _details(usage, "completion_tokens_details")
    facts.prompt_tokens = _count(facts, usage.get("prompt_tokens"))
    facts.completion_tokens = _count(facts, usage.get("completion_tokens"))
    facts.cache_read_tokens = _count(facts, prompt_details.get("cached_tokens"))
    facts.audio_prompt_tokens = _count(facts, prompt_details.get("audio_tokens"))
    facts.reasoning_tokens = _count(facts, completion_details.get("reasoning_tokens"))
    facts.audio_completion_tokens = _count(facts, completion_details.get("audio_tokens"))


def _apply_anthropic_usage(facts: ResponseFacts, usage: dict[str, Any]) -> None:
    """Anthropic reports usage in parts; a later event's fields replace an earlier one's."""
    facts.has_usage = True
    if "cache_read_input_tokens" in usage and usage["cache_read_input_tokens"] is not None:
        facts.cache_read_tokens = _count(facts, usage["cache_read_input_tokens"])
    if "cache_creation_input_tokens" in usage and usage["cache_creation_input_tokens"] is not None:
        facts.cache_write_tokens = _count(facts, usage["cache_creation_input_tokens"])
    if usage.get("input_tokens") is not None:
        input_tokens = _count(facts, usage["input_tokens"])
        facts.prompt_tokens = input_tokens + facts.cache_read_tokens + facts.cache_write_tokens
    if usage.get("output_tokens") is not None:
        facts.completion_tokens = _count(facts, usage["output_tokens"])
    apply_anthropic_extras(facts, usage, _count)


def _first_choice_finish(document: dict[str, Any]) -> str:
    choices = document.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        reason = choices[0].get("finish_reason")
        return reason if isinstance(reason, str) else ""
    return ""


def facts_from_json(provider: Provider, body: bytes) -> ResponseFacts:
    """Facts from a complete (non-streamed) JSON response; empty facts when the body is not JSON."""
    facts = ResponseFacts()
    try:
        document = orjson.loads(body)
    except ValueError:
        return facts
    if not isinstance(document, dict):
        return facts
    _apply_document(facts, provider, document)
    return facts


def _apply_document(facts: ResponseFacts, provider: Provider, document: dict[str, Any]) -> None:
    if provider is Provider.GOOGLE:
        apply_gemini_document(facts, document)
        return
    model = document.get("model")
    if isinstance(model, str) and model:
        facts.response_model = model
    answer_id = document.get("id")
    if isinstance(answer_id, str) and not facts.response_id:
        facts.response_id = answer_id[:256]
    usage = document.get("usage")
    apply_service_tier(facts, document)
    if provider is Provider.ANTHROPIC:
        if isinstance(usage, dict):
            _apply_anthropic_usage(facts, usage)
        if isinstance(document.get("stop_reason"), str):
            facts.finish_reason = document["stop_reason"]
        return
    if isinstance(usage, dict):
        _apply_openai_usage(facts, usage)
    facts.finish_reason = _first_choice_finish(document) or facts.finish_reason
    if document.get("object") == "response" and isinstance(document.get("status"), str):
        facts.finish_reason = document["status"]


def apply_gemini_document(facts: ResponseFacts, document: dict[str, Any]) -> None:
    """The facts of one GenerateContentResponse (or one stream chunk, or an embedding answer).

    Each ``usageMetadata`` is a whole snapshot (a stream's chunks repeat it, the last with the final
    counts), so every count is set from it. Billed input is ``promptTokenCount`` (cached tokens included)
    plus ``toolUsePromptTokenCount``; billed output is ``candidatesTokenCount`` plus ``thoughtsTokenCount``,
    as genai-prices reads Google's usage.
    """
    model = document.get("modelVersion")
    if isinstance(model, str) and model:
        facts.response_model = model
    usage = document.get("usageMetadata")
    if isinstance(usage, dict):
        facts.has_usage = True
        thoughts = _count(facts, usage.get("thoughtsTokenCount"))
        facts.prompt_tokens = _count(facts, usage.get("promptTokenCount")) + _count(
            facts, usage.get("toolUsePromptTokenCount")
        )
        facts.completion_tokens = _count(facts, usage.get("candidatesTokenCount")) + thoughts
        facts.reasoning_tokens = thoughts
        facts.cache_read_tokens = _count(facts, usage.get("cachedContentTokenCount"))
        # Audio input has its own prices (fresh and cache read); with cache reads genai-prices needs the audio
        # share of them, which Google gives in cacheTokensDetails. Without that breakdown the split cannot be
        # known, and audio is counted (and priced) as text rather than guessed.
        audio = _modality_tokens(facts, usage.get("promptTokensDetails"), "AUDIO")
        cached_details = usage.get("cacheTokensDetails")
        if not facts.cache_read_tokens:
            facts.audio_prompt_tokens, facts.cache_audio_read_tokens = audio, None
        elif isinstance(cached_details, list):
            facts.audio_prompt_tokens = audio
            facts.cache_audio_read_tokens = _modality_tokens(facts, cached_details, "AUDIO")
        else:
            facts.audio_prompt_tokens, facts.cache_audio_read_tokens = 0, None
    candidates = document.get("candidates")
    if isinstance(candidates, list) and candidates and isinstance(candidates[0], dict):
        reason = candidates[0].get("finishReason")
        if isinstance(reason, str) and reason:
            facts.finish_reason = reason


def _modality_tokens(facts: ResponseFacts, details: Any, modality: str) -> int:
    """The tokens of one modality in a ``*TokensDetails`` list (``[{"modality", "tokenCount"}]``)."""
    if not isinstance(details, list):
        return 0
    return sum(
        _count(facts, item.get("tokenCount"))
        for item in details
        if isinstance(item, dict) and item.get("modality") == modality
    )


class StreamFacts:
    """Reads facts from a server-sent-event stream as its events pass through, without holding them up."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self.facts = ResponseFacts()
        self._splitter: EventSplitter | None = None

    def observe(self, event: bytes) -> None:
        """Consumes one event (from an :class:`~candela_proxy.sse.EventSplitter`, or the unterminated tail)."""
        data = event_data(event)  # one `data: ...` line, the usual shape, is read without splitting lines
        if data is not None:
            self._event(data.strip())

    def observe_json(self, payload: bytes) -> None:
        """Consumes one event's JSON as it came without SSE framing (Bedrock's InvokeModel stream chunks)."""
        self._event(payload.strip())

    def feed(self, chunk: bytes) -> None:
        """Consumes one chunk as received (events may span chunks), for a caller that does not split them."""
        if self._splitter is None:
            self._splitter = EventSplitter()
        for event in self._splitter.feed(chunk):
            self.observe(event)

    def finish(self) -> ResponseFacts:
        """The facts, after the last chunk (an event the stream did not end with a blank line counts too)."""
        if self._splitter is not None and (tail := self._splitter.finish()):
            self.observe(tail)
        return self.facts

    def _event(self, payload: bytes) -> None:
        if not payload or payload == b"[DONE]":
            return
        try:
            event = orjson.loads(payload)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        if self.provider is Provider.ANTHROPIC:
            if kind == "message_start" and isinstance(event.get("message"), dict):
                _apply_document(self.facts, self.provider, event["message"])
            elif kind == "message_delta":
                if isinstance(event.get("usage"), dict):
                    _apply_anthropic_usage(self.facts, event["usage"])
                delta = event.get("delta")
                if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                    self.facts.finish_reason = delta["stop_reason"]
            return
        if isinstance(kind, str) and kind.startswith("response."):
            response = event.get("response")
            if isinstance(response, dict):
                _apply_document(self.facts, self.provider, response)
            return
        _apply_document(self.facts, self.provider, event)
