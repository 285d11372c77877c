"""Gemini and Vertex AI in the proxy: routes and upstream hosts, usageMetadata read (streamed and not), cost."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from genai_prices import Usage, calc_price

from candela_proxy.google import facts_from_json_array, resolve_google_route
from candela_proxy.pricing import cost_usd
from candela_proxy.providers import Provider, error_body
from candela_proxy.response_usage import StreamFacts, facts_from_json

pytestmark = pytest.mark.unit

GEMINI = "https://generativelanguage.googleapis.com"


def _resolve(path: str, query: str = "", vertex_base_url: str = "") -> tuple[object, ...] | None:
    route = resolve_google_route(path, query, GEMINI, vertex_base_url)
    if route is None:
        return None
    return (route.provider, route.provider_name, route.model, route.streamed, route.upstream_url, route.provider_path)


def test_gemini_paths_name_their_model_and_keep_the_key_out_of_the_logged_path() -> None:
    assert _resolve("/gemini/v1beta/models/gemini-2.5-flash:generateContent", "key=secret") == (
        Provider.GOOGLE,
        "google",
        "gemini-2.5-flash",
        False,
        f"{GEMINI}/v1beta/models/gemini-2.5-flash:generateContent?key=secret",
        "/v1beta/models/gemini-2.5-flash:generateContent",
    )
    streamed = _resolve("/gemini/v1/models/gemini-2.5-pro:streamGenerateContent", "alt=sse")
    assert streamed is not None
    assert streamed[2:4] == ("gemini-2.5-pro", True)
    assert _resolve("/gemini/v1beta/models")[2:4] == ("", False)  # type: ignore[index]


def test_gemini_openai_compatible_endpoint_is_openai_wire_logged_as_google() -> None:
    route = resolve_google_route("/gemini/v1beta/openai/chat/completions", "", GEMINI, "")
    assert route is not None
    assert (route.provider, route.provider_name) == (Provider.OPENAI, "google")
    assert route.upstream_url == f"{GEMINI}/v1beta/openai/chat/completions"


@pytest.mark.parametrize(
    ("location", "host"),
    [
        ("us-central1", "https://us-central1-aiplatform.googleapis.com"),
        ("europe-west4", "https://europe-west4-aiplatform.googleapis.com"),
        ("global", "https://aiplatform.googleapis.com"),
    ],
)
def test_vertex_upstream_host_follows_the_location(location: str, host: str) -> None:
    path = f"/v1/projects/p/locations/{location}/publishers/google/models/gemini-2.5-flash:generateContent"
    expected = (Provider.GOOGLE, "google-vertex", "gemini-2.5-flash", False, host + path, path)
    assert _resolve("/vertex" + path) == expected


def test_vertex_base_url_overrides_every_location() -> None:
    path = "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict"
    assert _resolve("/vertex" + path, vertex_base_url="http://127.0.0.1:9/") == (
        Provider.ANTHROPIC,
        "google-vertex",
        "claude-sonnet-4-5@20250929",
        True,
        "http://127.0.0.1:9" + path,
        path,
    )


@pytest.mark.parametrize(
    "path",
    [
        "/vertex/v1/projects/p/locations/evil.example.com/publishers/google/models/m:generateContent",
        "/vertex/v1/projects/p/locations/a@b/publishers/google/models/m:generateContent",
        "/vertex/v1/projects/p/locations/US/publishers/google/models/m:generateContent",
        "/vertex/v1/projects/p",
        "/vertex/models",
        "/gemini/models/m:generateContent",
        "/v1/chat/completions",
    ],
)
def test_no_route_for_other_paths_or_a_location_that_is_no_host_label(path: str) -> None:
    # The location becomes part of the upstream host: anything but a host label could send the call elsewhere.
    assert resolve_google_route(path, "", GEMINI, "") is None


def test_google_error_shape() -> None:
    assert json.loads(error_body(Provider.GOOGLE, 401, "missing Candela key", "missing_candela_key")) == {
        "error": {"code": 401, "message": "missing Candela key", "status": "UNAUTHENTICATED"}
    }


USAGE: dict[str, object] = {
    "promptTokenCount": 1200,
    "candidatesTokenCount": 300,
    "cachedContentTokenCount": 1000,
    "thoughtsTokenCount": 50,
    "toolUsePromptTokenCount": 40,
    "totalTokenCount": 1590,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1100}, {"modality": "AUDIO", "tokenCount": 100}],
}
ANSWER: dict[str, object] = {
    "candidates": [{"content": {"role": "model", "parts": [{"text": "hi"}]}, "finishReason": "STOP", "index": 0}],
    "usageMetadata": USAGE,
    "modelVersion": "gemini-2.5-flash",
    "responseId": "abc",
}


def test_generate_content_usage_and_exact_cost() -> None:
    facts = facts_from_json(Provider.GOOGLE, json.dumps(ANSWER).encode())
    assert (facts.prompt_tokens, facts.completion_tokens) == (1240, 350)
    assert (facts.cache_read_tokens, facts.reasoning_tokens, facts.audio_prompt_tokens) == (1000, 50, 0)
    assert (facts.response_model, facts.finish_reason) == ("gemini-2.5-flash", "STOP")
    expected = calc_price(
        Usage(input_tokens=1240, cache_read_tokens=1000, output_tokens=350),
        model_ref="gemini-2.5-flash",
        provider_id="google",
    ).total_price
    assert cost_usd("google", "gemini-2.5-flash", facts) == expected
    assert cost_usd("google-vertex", "gemini-2.5-flash", facts) == expected
    assert expected > 0


def test_audio_input_is_priced_at_its_own_rate() -> None:
    answer = {**ANSWER, "usageMetadata": {k: v for k, v in USAGE.items() if k != "cachedContentTokenCount"}}
    facts = facts_from_json(Provider.GOOGLE, json.dumps(answer).encode())
    assert facts.audio_prompt_tokens == 100
    # gemini-2.5-flash: $0.30 / MTok text in, $1 / MTok audio in, $2.50 / MTok out.
    assert cost_usd("google", "gemini-2.5-flash", facts) == Decimal("0.000342") + Decimal("0.0001") + Decimal(
        "0.000875"
    )


def test_audio_input_read_from_the_cache_is_priced_at_the_audio_cache_rate() -> None:
    usage = {
        **USAGE,
        "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 940}, {"modality": "AUDIO", "tokenCount": 60}],
    }
    facts = facts_from_json(Provider.GOOGLE, json.dumps({**ANSWER, "usageMetadata": usage}).encode())
    assert (facts.audio_prompt_tokens, facts.cache_read_tokens, facts.cache_audio_read_tokens) == (100, 1000, 60)
    # gemini-2.5-flash per MTok: text in $0.30, audio in $1, text cache read $0.03, audio cache read $0.10,
    # out $2.50. Input 1240: 1000 cached (60 audio), 240 fresh (40 audio: 100 - 60).
    fresh_text, fresh_audio, cached_text, cached_audio = 200, 40, 940, 60
    expected = (
        fresh_text * Decimal("0.30")
        + fresh_audio * Decimal("1")
        + cached_text * Decimal("0.03")
        + cached_audio * Decimal("0.10")
        + 350 * Decimal("2.50")
    ) / 1_000_000
    assert cost_usd("google", "gemini-2.5-flash", facts) == expected
    # Without Google's breakdown of the cache, the audio share of the cache reads is unknown: priced as text.
    assert facts_from_json(Provider.GOOGLE, json.dumps(ANSWER).encode()).cache_audio_read_tokens is None


def test_claude_on_vertex_is_priced_by_googles_table() -> None:
    facts = facts_from_json(
        Provider.ANTHROPIC,
        json.dumps(
            {"model": "claude-sonnet-4-5", "usage": {"input_tokens": 1000, "output_tokens": 100}, "stop_reason": "x"}
        ).encode(),
    )
    # $3 / MTok in, $15 / MTok out.
    assert cost_usd("google-vertex", "claude-sonnet-4-5@20250929", facts) == Decimal("0.0045")


def _chunk(text: str, usage: dict[str, int], finish: str | None = None) -> dict[str, object]:
    candidate: dict[str, object] = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": "gemini-2.5-flash"}


CHUNKS = [
    _chunk("Echo:", {"promptTokenCount": 8, "totalTokenCount": 8, "cachedContentTokenCount": 4}),
    _chunk(" hi", {"promptTokenCount": 8, "candidatesTokenCount": 12, "totalTokenCount": 20}, "MAX_TOKENS"),
]


def test_sse_stream_usage_comes_from_the_last_chunk_whole() -> None:
    stream = StreamFacts(Provider.GOOGLE)
    payload = b"".join(b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n" for chunk in CHUNKS)
    for start in range(0, len(payload), 7):
        stream.feed(payload[start : start + 7])
    facts = stream.finish()
    # The last chunk's snapshot replaces the first's: its missing cachedContentTokenCount is 0, not 4.
    assert (facts.prompt_tokens, facts.completion_tokens, facts.cache_read_tokens) == (8, 12, 0)
    assert facts.finish_reason == "MAX_TOKENS"


def test_json_array_stream_usage() -> None:
    body = ("[" + ",\r\n".join(json.dumps(chunk, indent=2) for chunk in CHUNKS) + "]").encode()
    facts = facts_from_json_array(body)
    assert (facts.prompt_tokens, facts.completion_tokens, facts.finish_reason) == (8, 12, "MAX_TOKENS")
    assert not facts_from_json_array(body[:-40]).has_usage  # cut short: no usage rather than a guess


def test_out_of_range_counts_leave_the_answer_unpriced() -> None:
    answer = {**ANSWER, "usageMetadata": {**USAGE, "candidatesTokenCount": -5}}
    facts = facts_from_json(Provider.GOOGLE, json.dumps(answer).encode())
    assert facts.clamped
    assert cost_usd("google", "gemini-2.5-flash", facts) is None
