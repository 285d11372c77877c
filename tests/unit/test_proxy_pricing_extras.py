"""Pricing beyond plain tokens (1-hour cache writes, web searches, service tiers, batch) and an organization's
aliases and overrides. Expected costs are worked out here from the providers' published per-token prices
(which genai-prices 0.2.3 carries), never from the code under test.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from candela_proxy.org_pricing import PRICING_UNAVAILABLE, OrganizationPricing, PriceOverride
from candela_proxy.pricing import cost_usd
from candela_proxy.providers import Provider
from candela_proxy.response_usage import StreamFacts, facts_from_json

pytestmark = pytest.mark.unit

MILLION = Decimal(1_000_000)
# Claude Opus 4.1, US dollars per million tokens: input 15, output 75, cache read 1.50, 5-minute cache write
# 18.75, 1-hour cache write 30; web search $10 per thousand; the Batch API halves token prices.
OPUS_INPUT, OPUS_OUTPUT, OPUS_READ = Decimal(15), Decimal(75), Decimal("1.5")
OPUS_WRITE_5M, OPUS_WRITE_1H, SEARCH = Decimal("18.75"), Decimal(30), Decimal(10) / 1000
# GPT-5 per million tokens: standard 1.25 / 10, flex 0.625 / 5, priority 2.50 / 20.
GPT5 = {
    "default": (Decimal("1.25"), Decimal(10)),
    "flex": (Decimal("0.625"), Decimal(5)),
    "priority": (Decimal("2.5"), Decimal(20)),
}


def _anthropic(usage: dict[str, object], model: str = "claude-opus-4-1-20250805") -> bytes:
    return json.dumps(
        {"type": "message", "model": model, "stop_reason": "end_turn", "content": [], "usage": usage}
    ).encode()


def test_anthropic_one_hour_cache_writes_are_priced_apart_from_five_minute_ones() -> None:
    facts = facts_from_json(
        Provider.ANTHROPIC,
        _anthropic(
            {
                "input_tokens": 1000,
                "cache_read_input_tokens": 2000,
                "cache_creation_input_tokens": 3000,
                "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000},
                "output_tokens": 500,
            }
        ),
    )
    assert (facts.prompt_tokens, facts.cache_write_tokens, facts.cache_write_1h_tokens) == (6000, 3000, 2000)
    expected = (
        1000 * OPUS_INPUT + 2000 * OPUS_READ + 1000 * OPUS_WRITE_5M + 2000 * OPUS_WRITE_1H + 500 * OPUS_OUTPUT
    ) / MILLION
    assert cost_usd("anthropic", facts.response_model, facts) == expected
    # The same usage without the breakdown is all 5-minute writes, and cheaper.
    plain = facts_from_json(
        Provider.ANTHROPIC,
        _anthropic(
            {
                "input_tokens": 1000,
                "cache_read_input_tokens": 2000,
                "cache_creation_input_tokens": 3000,
                "output_tokens": 500,
            }
        ),
    )
    assert (
        cost_usd("anthropic", plain.response_model, plain)
        == expected - 2000 * (OPUS_WRITE_1H - OPUS_WRITE_5M) / MILLION
    )


def test_anthropic_stream_web_searches_add_their_fee_and_web_fetches_are_recorded_unpriced() -> None:
    stream = StreamFacts(Provider.ANTHROPIC)
    events = [
        {
            "type": "message_start",
            "message": {"model": "claude-opus-4-1-20250805", "usage": {"input_tokens": 400, "output_tokens": 1}},
        },
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {
                "input_tokens": 400,
                "output_tokens": 120,
                "server_tool_use": {"web_search_requests": 3, "web_fetch_requests": 2},
            },
        },
    ]
    stream.feed(b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events))
    facts = stream.finish()
    assert (facts.web_search_requests, facts.web_fetch_requests) == (3, 2)
    expected = (400 * OPUS_INPUT + 120 * OPUS_OUTPUT) / MILLION + 3 * SEARCH
    assert cost_usd("anthropic", facts.response_model, facts) == expected


def test_web_fetches_alone_are_priced_as_their_tokens() -> None:
    """Anthropic charges no fee per web fetch: the fetched content is billed as input tokens, already counted."""
    usage = {"input_tokens": 12_000, "output_tokens": 300, "server_tool_use": {"web_fetch_requests": 4}}
    facts = facts_from_json(Provider.ANTHROPIC, _anthropic(usage))
    assert facts.web_fetch_requests == 4
    assert cost_usd("anthropic", facts.response_model, facts) == (12_000 * OPUS_INPUT + 300 * OPUS_OUTPUT) / MILLION


def test_web_searches_on_a_model_without_a_search_price_leave_the_call_unpriced() -> None:
    facts = facts_from_json(
        Provider.ANTHROPIC,
        _anthropic(
            {"input_tokens": 10, "output_tokens": 1, "server_tool_use": {"web_search_requests": 1}},
            model="claude-3-haiku-20240307",
        ),
    )
    assert cost_usd("anthropic", facts.response_model, facts) is None


def test_anthropic_batch_tier_is_half_price() -> None:
    # Claude Haiku 4.5: $1 input and $5 output per million tokens; batches at half that.
    facts = facts_from_json(
        Provider.ANTHROPIC,
        _anthropic({"input_tokens": 1000, "output_tokens": 100, "service_tier": "batch"}, model="claude-haiku-4-5"),
    )
    assert facts.service_tier == "batch"
    assert cost_usd("anthropic", facts.response_model, facts) == Decimal(1000 * 1 + 100 * 5) / 2 / MILLION
    facts.service_tier = "standard"
    assert cost_usd("anthropic", facts.response_model, facts) == Decimal(1000 * 1 + 100 * 5) / MILLION


@pytest.mark.parametrize("tier", ["default", "flex", "priority"])
def test_openai_service_tier_in_the_response_selects_its_price(tier: str) -> None:
    body = {
        "model": "gpt-5-2025-08-07",
        "service_tier": tier,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}],
        "usage": {"prompt_tokens": 2000, "completion_tokens": 300, "total_tokens": 2300},
    }
    facts = facts_from_json(Provider.OPENAI, json.dumps(body).encode())
    assert facts.service_tier == tier
    input_price, output_price = GPT5[tier]
    assert cost_usd("openai", facts.response_model, facts) == (2000 * input_price + 300 * output_price) / MILLION


def test_openai_stream_chunks_carry_the_tier_and_the_request_tier_is_the_fallback() -> None:
    stream = StreamFacts(Provider.OPENAI)
    chunk = {"model": "gpt-5-2025-08-07", "service_tier": "flex", "choices": [{"index": 0, "delta": {"content": "x"}}]}
    usage = {"model": "gpt-5-2025-08-07", "choices": [], "usage": {"prompt_tokens": 100, "completion_tokens": 10}}
    stream.feed(f"data: {json.dumps(chunk)}\n\ndata: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
    facts = stream.finish()
    assert facts.service_tier == "flex"
    assert cost_usd("openai", facts.response_model, facts) == (100 * GPT5["flex"][0] + 10 * GPT5["flex"][1]) / MILLION
    silent = facts_from_json(
        Provider.OPENAI,
        json.dumps({"model": "gpt-5", "usage": {"prompt_tokens": 100, "completion_tokens": 10}}).encode(),
    )
    priority = (100 * GPT5["priority"][0] + 10 * GPT5["priority"][1]) / MILLION
    assert cost_usd("openai", "gpt-5", silent, request_service_tier="priority") == priority
    assert (
        cost_usd("openai", "gpt-5", silent, request_service_tier="auto")
        == (100 * GPT5["default"][0] + 10 * GPT5["default"][1]) / MILLION
    )


def test_an_override_prices_the_call_exactly_at_the_organization_prices() -> None:
    facts = facts_from_json(
        Provider.OPENAI,
        json.dumps(
            {
                "model": "gpt-4o-2024-08-06",
                "usage": {
                    "prompt_tokens": 1234,
                    "completion_tokens": 567,
                    "prompt_tokens_details": {"cached_tokens": 200},
                },
            }
        ).encode(),
    )
    override = PriceOverride(
        input_per_mtok=Decimal("0.1"),
        output_per_mtok=Decimal("0.3"),
        cached_input_per_mtok=Decimal("0.01"),
        cache_write_per_mtok=Decimal("0.1"),
    )
    organization = OrganizationPricing(overrides={("openai", "gpt-4o"): override})
    # The answering model has a dated name: the requested one matches the override.
    cost = cost_usd("openai", facts.response_model, facts, requested_model="gpt-4o", organization=organization)
    assert cost == Decimal("0.0002755")  # (1034 * 0.1 + 200 * 0.01 + 567 * 0.3) / 1e6 = 275.5 / 1e6
    # Another model of the organization is still priced by genai-prices: gpt-4o-mini 0.15 / 0.60, cached 0.075.
    mini = facts_from_json(
        Provider.OPENAI,
        json.dumps({"model": "gpt-4o-mini", "usage": {"prompt_tokens": 1000, "completion_tokens": 100}}).encode(),
    )
    assert cost_usd("openai", "gpt-4o-mini", mini, organization=organization) == Decimal("0.00021")


def test_an_alias_prices_an_unknown_model_and_an_override_on_its_target_wins() -> None:
    facts = facts_from_json(
        Provider.OPENAI,
        json.dumps({"model": "acme-support-ft", "usage": {"prompt_tokens": 1000, "completion_tokens": 100}}).encode(),
    )
    assert cost_usd("openai", "acme-support-ft", facts) is None
    aliased = OrganizationPricing(aliases={"acme-support-ft": ("openai", "gpt-4o-mini")})
    # gpt-4o-mini: 1000 * 0.15 + 100 * 0.60 per million.
    assert cost_usd("openai", "acme-support-ft", facts, organization=aliased) == Decimal("0.00021")
    both = OrganizationPricing(
        aliases={"acme-support-ft": ("openai", "gpt-4o-mini")},
        overrides={("openai", "gpt-4o-mini"): PriceOverride(Decimal(1), Decimal(2), Decimal(1), Decimal(1))},
    )
    assert cost_usd("openai", "acme-support-ft", facts, organization=both) == Decimal("0.0012")


def test_without_the_organization_pricing_a_call_stays_unpriced() -> None:
    facts = facts_from_json(
        Provider.OPENAI,
        json.dumps({"model": "gpt-4o-mini", "usage": {"prompt_tokens": 1000, "completion_tokens": 100}}).encode(),
    )
    assert cost_usd("openai", "gpt-4o-mini", facts, organization=PRICING_UNAVAILABLE) is None
