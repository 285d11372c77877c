"""Exact request cost from the genai-prices table (offline: the table ships inside the package)."""

from __future__ import annotations

import functools
from decimal import Decimal

from genai_prices import Usage, calc_price

from candela_proxy.usage import ResponseFacts


@functools.lru_cache(maxsize=4096)
def _known(provider: str, model: str) -> bool:
    try:
        calc_price(Usage(input_tokens=0, output_tokens=0), model_ref=model, provider_id=provider)
    except LookupError:
        return False
    return True


def cost_usd(provider: str, model: str, facts: ResponseFacts) -> Decimal | None:
    """The cost in US dollars, or None when the model has no known price (never a silent 0)."""
    if not model or not facts.has_usage or not _known(provider, model):
        return None
    usage = Usage(
        input_tokens=facts.prompt_tokens,
        cache_read_tokens=facts.cache_read_tokens,
        cache_write_tokens=facts.cache_write_tokens,
        output_tokens=facts.completion_tokens,
        input_audio_tokens=facts.audio_prompt_tokens,
        output_audio_tokens=facts.audio_completion_tokens,
    )
    return calc_price(usage, model_ref=model, provider_id=provider).total_price
