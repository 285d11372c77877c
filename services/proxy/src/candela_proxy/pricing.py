"""Exact request cost from the genai-prices table (offline: the table ships inside the package).

OpenAI, Anthropic and Google (Gemini, Vertex AI) calls are priced by provider id; a custom target
(``Candela-Target-Url`` or a fallback) is priced by its API URL, which genai-prices matches to a provider
it knows (Groq, Mistral, ...) or not at all, in which case the request stays unpriced rather than being
guessed.
"""

from __future__ import annotations

import functools
from decimal import Decimal

from genai_prices import Usage, calc_price

from candela_proxy.response_usage import ResponseFacts

# The log's provider names whose genai-prices provider id differs: genai-prices has one "google" provider
# for the Gemini API and Vertex AI (Gemini and Claude models alike).
_GENAI_PRICES_IDS = {"google-vertex": "google"}


def _price(usage: Usage, model: str, provider: str | None, api_url: str | None) -> Decimal:
    if api_url is not None:
        return calc_price(usage, model_ref=model, provider_api_url=api_url).total_price
    return calc_price(usage, model_ref=model, provider_id=provider).total_price


@functools.lru_cache(maxsize=4096)
def _known(provider: str | None, model: str, api_url: str | None) -> bool:
    try:
        _price(Usage(input_tokens=0, output_tokens=0), model, provider, api_url)
    except LookupError:
        return False
    return True


def cost_usd(provider: str, model: str, facts: ResponseFacts, api_url: str = "") -> Decimal | None:
    """The cost in US dollars, or None when the model has no known price (never a silent 0) or the usage
    was out of range (a clamped usage is not what was billed: such a log stays unpriced).

    ``api_url`` is the custom target's base URL, if the call went to one; ``provider`` is then ignored.
    """
    if not model or not facts.has_usage or facts.clamped:
        return None
    return _cost(
        None if api_url else _GENAI_PRICES_IDS.get(provider, provider),
        model,
        api_url or None,
        facts.prompt_tokens,
        facts.cache_read_tokens,
        facts.cache_write_tokens,
        facts.completion_tokens,
        facts.audio_prompt_tokens,
        facts.audio_completion_tokens,
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
    output_tokens: int,
    input_audio_tokens: int,
    output_audio_tokens: int,
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
    return _price(usage, model, provider, api_url)
