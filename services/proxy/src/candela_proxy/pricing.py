"""Exact request cost: the organization's alias, then its override, then the genai-prices table (offline:
the table ships inside the package).

OpenAI, Anthropic, Google (Gemini, Vertex AI) and Bedrock calls are priced by provider id; a custom target
(``Candela-Target-Url`` or a fallback) is priced by its API URL, which genai-prices matches to a provider it
knows (Groq, Mistral, ...) or not at all, in which case the request stays unpriced rather than being guessed.

An organization's pricing (:mod:`candela_proxy.org_pricing`) comes first. The model names tried are the
answering model, then the requested one. An alias maps a name to a (provider, model) genai-prices knows;
an override prices a (provider, model), as logged or as an alias resolved it, at the organization's own
per-million-token prices (server-tool fees, such as web searches, still come from genai-prices).

What genai-prices 0.2.3 prices beyond plain tokens, and Candela passes on:
- Anthropic 1-hour cache writes (``usage.cache_creation.ephemeral_1h_input_tokens``) at the 1-hour price,
  the rest of ``cache_creation_input_tokens`` at the 5-minute price;
- web searches (Anthropic ``usage.server_tool_use.web_search_requests``), per thousand;
- Gemini audio input, fresh and read from the cache, at its own prices (``promptTokensDetails`` and
  ``cacheTokensDetails`` by modality; without the cache's breakdown, audio is priced as text);
- OpenAI service tiers (``service_tier`` flex / priority in the response, else the request) and Anthropic's
  batch tier (``usage.service_tier: "batch"``), as genai-prices' price variants.
Anthropic web fetches (``server_tool_use.web_fetch_requests``) are recorded and add no fee: Anthropic
charges none beyond the tokens of the fetched content, which its usage already counts as input. What it
does not price, and Candela does not invent: the OpenAI Batch API (its requests go through ``/v1/batches``
and files, which are passed through and logged, not priced per item).
"""

from __future__ import annotations

import functools
from decimal import Decimal

from genai_prices import Usage, calc_price

from candela_proxy.org_pricing import OrganizationPricing
from candela_proxy.response_usage import ResponseFacts

_PRICED_SERVICE_TIERS = frozenset({"flex", "priority"})
"""OpenAI tiers genai-prices has variants for (``default`` is the standard price, ``auto`` is not billed)."""

# The log's provider names whose genai-prices provider id differs: genai-prices has one "google" provider
# for the Gemini API and Vertex AI (Gemini and Claude models alike).
_GENAI_PRICES_IDS = {"google-vertex": "google"}


def _price(
    usage: Usage,
    model: str,
    provider: str | None,
    api_url: str | None,
    context: tuple[tuple[str, str], ...],
    web_searches: int = 0,
) -> Decimal | None:
    """genai-prices' total; None when the usage reports web searches the model has no price for (genai-prices
    would count them as free)."""
    price_context = dict(context) or None
    if web_searches:
        usage.web_searches = web_searches
    if api_url is not None:
        calculation = calc_price(usage, model_ref=model, provider_api_url=api_url, price_context=price_context)
    else:
        calculation = calc_price(usage, model_ref=model, provider_id=provider, price_context=price_context)
    if web_searches and getattr(calculation.model_price, "web_searches_kcount", None) is None:
        return None
    return calculation.total_price


@functools.lru_cache(maxsize=4096)
def _known(provider: str | None, model: str, api_url: str | None) -> bool:
    try:
        _price(Usage(input_tokens=0, output_tokens=0), model, provider, api_url, ())
    except LookupError:
        return False
    return True


def price_context(facts: ResponseFacts, request_service_tier: str = "") -> tuple[tuple[str, str], ...]:
    """The genai-prices price context of a call: its service tier or batch processing, if priced apart."""
    tier = facts.service_tier or request_service_tier
    if tier == "batch":
        return (("processing", "batch"),)
    if tier in _PRICED_SERVICE_TIERS:
        return (("service_tier", tier),)
    return ()


def cost_usd(
    provider: str,
    model: str,
    facts: ResponseFacts,
    api_url: str = "",
    *,
    requested_model: str = "",
    logged_provider: str = "",
    organization: OrganizationPricing | None = None,
    request_service_tier: str = "",
) -> Decimal | None:
    """The cost in US dollars, or None when the model has no known price (never a silent 0), the usage
    was out of range (a clamped usage is not what was billed: such a log stays unpriced), or the
    organization's pricing could not be learnt.

    ``api_url`` is the custom target's base URL, if the call went to one; ``provider`` is then ignored by
    genai-prices. ``logged_provider`` (default ``provider``) is the provider as logged, which overrides name.
    """
    if not model or not facts.has_usage or facts.clamped:
        return None
    context = price_context(facts, request_service_tier)
    if organization is not None:
        if not organization.available:
            return None
        if organization.overrides or organization.aliases:
            matched, cost = _organization_cost(
                organization, logged_provider or provider, model, requested_model, facts, context
            )
            if matched:
                return cost
    if not provider and not api_url:
        return None  # a named provider genai-prices has no id for (vLLM, Ollama): never guessed from the model
    return _genai_cost(None if api_url else provider, model, api_url or None, facts, context)


def _organization_cost(
    organization: OrganizationPricing,
    provider: str,
    model: str,
    requested_model: str,
    facts: ResponseFacts,
    context: tuple[tuple[str, str], ...],
) -> tuple[bool, Decimal | None]:
    """Whether an alias or override of the organization applies to the call, and then its cost (None
    when what it points at has no price)."""
    names = [model] if not requested_model or requested_model == model else [model, requested_model]
    candidates = [organization.aliases.get(name, (provider, name)) for name in names]
    for candidate in candidates:
        override = organization.overrides.get(candidate)
        if override is None:
            continue
        token_cost = override.cost(
            facts.prompt_tokens, facts.cache_read_tokens, facts.cache_write_tokens, facts.completion_tokens
        )
        if not facts.web_search_requests:
            return True, token_cost
        # The override prices tokens; the search fee is genai-prices' for the model, if it knows one.
        fee = _genai_fee(candidate[0], candidate[1], facts.web_search_requests)
        return True, None if fee is None else token_cost + fee
    for name, candidate in zip(names, candidates, strict=True):
        if name in organization.aliases:
            return True, _genai_cost(candidate[0], candidate[1], None, facts, context)
    return False, None


def _genai_fee(provider: str, model: str, web_searches: int) -> Decimal | None:
    provider = _GENAI_PRICES_IDS.get(provider, provider)
    if not _known(provider, model, None):
        return None
    return _price(Usage(input_tokens=0, output_tokens=0), model, provider, None, (), web_searches)


def _genai_cost(
    provider: str | None,
    model: str,
    api_url: str | None,
    facts: ResponseFacts,
    context: tuple[tuple[str, str], ...],
) -> Decimal | None:
    return _cost(
        _GENAI_PRICES_IDS.get(provider, provider) if provider else None,
        model,
        api_url,
        facts.prompt_tokens,
        facts.cache_read_tokens,
        facts.cache_write_tokens,
        facts.cache_write_1h_tokens,
        facts.completion_tokens,
        facts.audio_prompt_tokens,
        facts.audio_completion_tokens,
        facts.web_search_requests,
        context,
        facts.cache_audio_read_tokens,
    )


# genai-prices resolves the model and walks its price rules on every call (~0.3 ms, a quarter of the
# proxy's CPU per request when measured); the answer only depends on these arguments, so it is memoised.
@functools.lru_cache(maxsize=65536)
def _cost(
    provider: str | None,
    model: str,
    api_url: str | None,
    input_tokens: int,
    cache_read_tokens: int,
    cache_write_tokens: int,
    cache_write_1h_tokens: int,
    output_tokens: int,
    input_audio_tokens: int,
    output_audio_tokens: int,
    web_searches: int,
    context: tuple[tuple[str, str], ...],
    cache_audio_read_tokens: int | None = None,
) -> Decimal | None:
    if not _known(provider, model, api_url):
        return None
    usage = Usage(
        input_tokens=input_tokens,
        cache_read_tokens=cache_read_tokens,
        cache_write_tokens=cache_write_tokens,
        output_tokens=output_tokens,
        input_audio_tokens=input_audio_tokens,
        output_audio_tokens=output_audio_tokens,
    )
    # Only when reported: a zero of a unit the model has no price for would still be looked up.
    if cache_write_1h_tokens:
        usage.cache_write_1h_tokens = cache_write_1h_tokens
    if cache_audio_read_tokens is not None and input_audio_tokens and cache_read_tokens:
        usage.cache_audio_read_tokens = cache_audio_read_tokens
    return _price(usage, model, provider, api_url, context, web_searches)
