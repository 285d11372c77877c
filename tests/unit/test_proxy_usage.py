"""Token usage, model and finish reason read from provider responses, streamed and not, and their cost."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from candela_proxy.pricing import cost_usd
from candela_proxy.providers import Provider
from candela_proxy.response_usage import ResponseFacts, StreamFacts, facts_from_json

pytestmark = pytest.mark.unit


def _sse(*events: object, event_names: bool = False) -> bytes:
    lines = []
    for event in events:
        if event_names and isinstance(event, dict):
            lines.append(f"event: {event['type']}")
        lines.append("data: " + (event if isinstance(event, str) else json.dumps(event)))
        lines.append("")
    return ("\n".join(lines) + "\n").encode()


def _feed_in_pieces(stream: StreamFacts, payload: bytes, size: int) -> ResponseFacts:
    for start in range(0, len(payload), size):
        stream.feed(payload[start : start + size])
    return stream.finish()


def test_openai_chat_completion() -> None:
    body = {
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": "hi"}}],
        "usage": {
            "prompt_tokens": 120,
            "completion_tokens": 30,
            "total_tokens": 150,
            "prompt_tokens_details": {"cached_tokens": 100, "audio_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 12, "audio_tokens": 2},
        },
    }
    facts = facts_from_json(Provider.OPENAI, json.dumps(body).encode())
    assert (facts.prompt_tokens, facts.completion_tokens, facts.cache_read_tokens) == (120, 30, 100)
    assert (facts.reasoning_tokens, facts.audio_prompt_tokens, facts.audio_completion_tokens) == (12, 4, 2)
    assert facts.response_model == "gpt-4o-mini-2024-07-18"
    assert facts.finish_reason == "length"
    assert facts.to_proto().total_tokens == 150


def test_openai_responses_api() -> None:
    body = {
        "object": "response",
        "model": "gpt-4.1",
        "status": "completed",
        "usage": {
            "input_tokens": 50,
            "input_tokens_details": {"cached_tokens": 10},
            "output_tokens": 20,
            "output_tokens_details": {"reasoning_tokens": 5},
            "total_tokens": 70,
        },
    }
    facts = facts_from_json(Provider.OPENAI, json.dumps(body).encode())
    assert (facts.prompt_tokens, facts.completion_tokens, facts.cache_read_tokens, facts.reasoning_tokens) == (
        50,
        20,
        10,
        5,
    )
    assert facts.finish_reason == "completed"


def test_anthropic_message_counts_cache_tokens_into_the_prompt() -> None:
    body = {
        "type": "message",
        "model": "claude-sonnet-4-5",
        "stop_reason": "end_turn",
        "usage": {
            "input_tokens": 10,
            "cache_creation_input_tokens": 200,
            "cache_read_input_tokens": 300,
            "output_tokens": 40,
        },
    }
    facts = facts_from_json(Provider.ANTHROPIC, json.dumps(body).encode())
    assert (facts.prompt_tokens, facts.cache_write_tokens, facts.cache_read_tokens) == (510, 200, 300)
    assert facts.completion_tokens == 40
    assert facts.finish_reason == "end_turn"


def test_not_json_gives_no_usage() -> None:
    facts = facts_from_json(Provider.OPENAI, b"<html>bad gateway</html>")
    assert facts.has_usage is False


@pytest.mark.parametrize("piece_size", [1, 7, 64, 100_000])
def test_openai_stream_usage_chunk_split_anywhere(piece_size: int) -> None:
    chunk = {"object": "chat.completion.chunk", "model": "gpt-4o-mini", "usage": None}
    payload = _sse(
        {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {**chunk, "choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}]},
        {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {**chunk, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}},
        "[DONE]",
    )
    facts = _feed_in_pieces(StreamFacts(Provider.OPENAI), payload, piece_size)
    assert (facts.prompt_tokens, facts.completion_tokens, facts.has_usage) == (9, 2, True)
    assert facts.finish_reason == "stop"
    assert facts.response_model == "gpt-4o-mini"


def test_openai_stream_without_usage_chunk_has_no_usage() -> None:
    payload = _sse(
        {"object": "chat.completion.chunk", "model": "m", "choices": [{"delta": {}, "finish_reason": "stop"}]},
        "[DONE]",
    )
    assert _feed_in_pieces(StreamFacts(Provider.OPENAI), payload, 5).has_usage is False


def test_anthropic_stream_combines_start_and_delta() -> None:
    payload = _sse(
        {
            "type": "message_start",
            "message": {
                "model": "claude-3-5-haiku-20241022",
                "usage": {"input_tokens": 25, "cache_read_input_tokens": 5, "output_tokens": 1},
            },
        },
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 15}},
        {"type": "message_stop"},
        event_names=True,
    )
    facts = _feed_in_pieces(StreamFacts(Provider.ANTHROPIC), payload, 13)
    assert (facts.prompt_tokens, facts.cache_read_tokens, facts.completion_tokens) == (30, 5, 15)
    assert facts.finish_reason == "end_turn"
    assert facts.response_model == "claude-3-5-haiku-20241022"


def test_responses_stream_reads_the_completed_event() -> None:
    payload = _sse(
        {"type": "response.created", "sequence_number": 0, "response": {"model": "gpt-4.1", "status": "in_progress"}},
        {"type": "response.output_text.delta", "sequence_number": 1, "delta": "Hi"},
        {
            "type": "response.completed",
            "sequence_number": 2,
            "response": {
                "object": "response",
                "model": "gpt-4.1",
                "status": "completed",
                "usage": {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10},
            },
        },
        event_names=True,
    )
    facts = _feed_in_pieces(StreamFacts(Provider.OPENAI), payload, 11)
    assert (facts.prompt_tokens, facts.completion_tokens, facts.finish_reason) == (7, 3, "completed")


def test_cost_is_exact_and_unknown_models_are_unpriced() -> None:
    facts = ResponseFacts(prompt_tokens=1000, completion_tokens=500, cache_read_tokens=100, has_usage=True)
    # gpt-4o-mini: $0.15/M input, $0.075/M cached input, $0.60/M output.
    assert cost_usd("openai", "gpt-4o-mini", facts) == Decimal("0.0004425")
    assert cost_usd("openai", "no-such-model-anywhere", facts) is None
    assert cost_usd("openai", "gpt-4o-mini", ResponseFacts()) is None


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 5e9, "completion_tokens": 3},
        {"prompt_tokens": 5_000_000_000, "completion_tokens": 3},
        {"prompt_tokens": -7, "completion_tokens": 3},
        {"prompt_tokens": 2**63, "completion_tokens": 3},
        {"prompt_tokens": 12.5, "completion_tokens": 3},
        {"prompt_tokens": "12", "completion_tokens": 3},
        {"prompt_tokens": 12, "completion_tokens": 3, "completion_tokens_details": {"reasoning_tokens": -1}},
    ],
)
def test_out_of_range_counts_are_zeroed_flagged_and_unpriced(usage: dict[str, object]) -> None:
    body = {"model": "gpt-4o-mini", "choices": [], "usage": usage}
    facts = facts_from_json(Provider.OPENAI, json.dumps(body).encode())
    assert facts.clamped
    proto = facts.to_proto()  # no ValueError: every count fits the int64 field and the UInt32 column
    assert 0 <= proto.prompt_tokens <= 2**32 - 1
    assert proto.completion_tokens == 3
    assert proto.total_tokens == proto.prompt_tokens + proto.completion_tokens
    assert cost_usd("openai", "gpt-4o-mini", facts) is None


def test_counts_whose_total_is_out_of_range_are_all_zeroed() -> None:
    body = {"model": "gpt-4o-mini", "usage": {"prompt_tokens": 3_000_000_000, "completion_tokens": 3_000_000_000}}
    facts = facts_from_json(Provider.OPENAI, json.dumps(body).encode())
    assert facts.clamped
    assert facts.to_proto() == facts.to_proto().__class__()


def test_anthropic_stream_counts_out_of_range_are_flagged() -> None:
    stream = StreamFacts(Provider.ANTHROPIC)
    stream.feed(
        _sse(
            {"type": "message_start", "message": {"model": "claude-haiku-4-5", "usage": {"input_tokens": -7}}},
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2**63}},
        )
    )
    facts = stream.finish()
    assert facts.clamped
    assert (facts.to_proto().prompt_tokens, facts.to_proto().completion_tokens) == (0, 0)


def test_in_range_counts_are_not_flagged() -> None:
    body = {"model": "gpt-4o-mini", "usage": {"prompt_tokens": 2**32 - 4, "completion_tokens": 3.0}}
    facts = facts_from_json(Provider.OPENAI, json.dumps(body).encode())
    assert not facts.clamped
    assert (facts.prompt_tokens, facts.completion_tokens) == (2**32 - 4, 3)
