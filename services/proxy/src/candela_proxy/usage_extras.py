"""Usage fields that change a call's price beyond its token counts, read from responses and streams.

- Anthropic ``usage.cache_creation``: ``ephemeral_1h_input_tokens`` (written for one hour, dearer) and
  ``ephemeral_5m_input_tokens``; their sum is ``cache_creation_input_tokens``. The 1-hour part is kept
  apart; the total stays in ``cache_write_tokens``.
- Anthropic ``usage.server_tool_use``: ``web_search_requests`` and ``web_fetch_requests``.
- ``service_tier``: OpenAI's top-level ``service_tier`` (``default``, ``flex``, ``priority``) in a response
  or a stream's chunks, and Anthropic's ``usage.service_tier`` (``standard``, ``priority``, ``batch``).

Anthropic streams report usage in ``message_start`` and again (cumulative) in ``message_delta``; a later
event's value replaces an earlier one's, as for the token counts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from candela_proxy.response_usage import ResponseFacts

MAX_SERVICE_TIER_LENGTH = 32
"""A longer ``service_tier`` is no tier a provider names; it is not kept (nor priced)."""

Count = Callable[["ResponseFacts", Any], int]


def apply_anthropic_extras(facts: ResponseFacts, usage: dict[str, Any], count: Count) -> None:
    """The 1-hour cache writes, the server-tool requests and the tier from an Anthropic ``usage``."""
    creation = usage.get("cache_creation")
    if isinstance(creation, dict) and creation.get("ephemeral_1h_input_tokens") is not None:
        facts.cache_write_1h_tokens = min(count(facts, creation["ephemeral_1h_input_tokens"]), facts.cache_write_tokens)
    tools = usage.get("server_tool_use")
    if isinstance(tools, dict):
        if tools.get("web_search_requests") is not None:
            facts.web_search_requests = count(facts, tools["web_search_requests"])
        if tools.get("web_fetch_requests") is not None:
            facts.web_fetch_requests = count(facts, tools["web_fetch_requests"])
    tier = usage.get("service_tier")
    if isinstance(tier, str) and tier and len(tier) <= MAX_SERVICE_TIER_LENGTH:
        facts.service_tier = tier


def apply_service_tier(facts: ResponseFacts, document: dict[str, Any]) -> None:
    """OpenAI's ``service_tier``: the tier that served the call (chat, completions, Responses)."""
    tier = document.get("service_tier")
    if isinstance(tier, str) and tier and len(tier) <= MAX_SERVICE_TIER_LENGTH:
        facts.service_tier = tier
