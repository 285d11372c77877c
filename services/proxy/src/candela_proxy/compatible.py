"""The OpenAI-compatible family: providers that speak OpenAI's API at a base URL of their own, each under a
path prefix of the gateway (``/groq/...``, ``/mistral/...``, ...).

Path layout: ``<gateway>/<name>/v1/<OpenAI path>`` for every member, so an SDK's base URL is always
``<gateway>/<name>/v1``; the provider's own layout is accepted too (``/groq/openai/v1/...`` as
``https://api.groq.com/openai/v1``, ``/fireworks/inference/v1/...``, ``/openrouter/api/v1/...``,
``/perplexity/chat/completions``), so a base URL copied from the provider's documentation works once its host
is replaced by ``<gateway>/<name>``. Either way the request goes to ``CANDELA_<NAME>_BASE_URL`` (the
provider's base URL, with its version path) + the OpenAI path, and the record's path is ``/v1/<OpenAI path>``.

The record's provider is the member's name; its cost comes from genai-prices under the member's provider id
(``x-ai`` for ``xai``); vLLM and Ollama serve models of the operator's choosing and stay unpriced. Members
that take ``stream_options`` get the usage injection of :mod:`candela_proxy.stream_usage`; the others report
a stream's usage unasked (Mistral, Together, Fireworks, OpenRouter, Perplexity, Cerebras), or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from candela_proxy.providers import Provider, Route


@dataclass(frozen=True)
class CompatibleProvider:
    """One member of the family."""

    name: str
    """Its path prefix and the record's provider; ``CANDELA_<NAME>_BASE_URL`` sets its upstream."""
    price_id: str
    """Its genai-prices provider id; "" when nothing it serves has a list price."""
    native_prefix: str
    """The path of its public base URL (``/openai/v1`` for Groq), accepted after the prefix like ``/v1``."""
    stream_options: bool
    """Whether it takes ``stream_options.include_usage`` (streams are then asked for their usage)."""


MEMBERS: Final = (
    CompatibleProvider("groq", "groq", "/openai/v1", stream_options=True),
    CompatibleProvider("mistral", "mistral", "/v1", stream_options=False),
    CompatibleProvider("deepseek", "deepseek", "/v1", stream_options=True),
    CompatibleProvider("xai", "x-ai", "/v1", stream_options=True),
    CompatibleProvider("together", "together", "/v1", stream_options=False),
    CompatibleProvider("fireworks", "fireworks", "/inference/v1", stream_options=False),
    CompatibleProvider("openrouter", "openrouter", "/api/v1", stream_options=False),
    CompatibleProvider("perplexity", "perplexity", "", stream_options=False),
    CompatibleProvider("cerebras", "cerebras", "/v1", stream_options=False),
    CompatibleProvider("vllm", "", "/v1", stream_options=True),
    CompatibleProvider("ollama", "", "/v1", stream_options=True),
)
"""Every member; the base URL defaults are ProxyConfig's ``<name>_base_url`` fields."""

_BY_NAME: Final = {member.name: member for member in MEMBERS}


def resolve(path: str, query_string: str, base_urls: dict[str, str]) -> Route | None:
    """The route of a ``/<name>/...`` path, or None when no configured member serves it.

    ``base_urls`` maps each member's name to its base URL; a member without one (vLLM, Ollama unless
    configured) serves nothing.
    """
    name, separator, rest = path[1:].partition("/")
    member = _BY_NAME.get(name)
    if member is None or not separator:
        return None
    base_url = base_urls.get(name, "")
    if not base_url:
        return None
    tail = "/" + rest
    if tail.startswith("/v1/"):
        tail = tail[len("/v1") :]
    elif member.native_prefix and tail.startswith(member.native_prefix + "/"):
        tail = tail[len(member.native_prefix) :]
    elif member.native_prefix:
        return None
    url = base_url.rstrip("/") + tail
    return Route(
        provider=Provider.OPENAI,
        upstream_url=f"{url}?{query_string}" if query_string else url,
        provider_path="/v1" + tail,
        query_string=query_string,
        label=member.name,
        price_id=member.price_id,
        stream_options=member.stream_options,
    )


def prefixes() -> tuple[str, ...]:
    """The path prefix of every member (``/groq/``, ...), configured or not."""
    return tuple(f"/{member.name}/" for member in MEMBERS)
