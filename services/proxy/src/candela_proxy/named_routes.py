"""Routes of the named providers: Azure OpenAI (``/azure/...``) and the OpenAI-compatible family
(``/groq/...``, ``/mistral/...``, ...), tried before the OpenAI and Anthropic paths (no prefix is shared)."""

from __future__ import annotations

from collections.abc import Mapping

from candela_proxy import azure, compatible
from candela_proxy.config import ProxyConfig
from candela_proxy.providers import Route


class NamedRoutes:
    """Resolves a named provider's path with the operator's base URLs and Azure deployments."""

    def __init__(self, config: ProxyConfig) -> None:
        """Raises ValueError on a malformed ``CANDELA_AZURE_DEPLOYMENTS``."""
        self._azure_base_url = config.azure_base_url
        self._deployments = azure.parse_deployments(config.azure_deployments)
        self._base_urls = {
            member.name: str(getattr(config, f"{member.name}_base_url")) for member in compatible.MEMBERS
        }

    def resolve(self, path: str, query_string: str, headers: Mapping[str, str]) -> Route | None:
        """The route of a named provider's path, or None when the path is no named provider's.

        Raises :class:`~candela_proxy.exchange.ProxyError` for an Azure request that names no usable resource.
        """
        if path.startswith(azure.PREFIX + "/"):
            return azure.resolve(path, query_string, headers, self._azure_base_url, self._deployments)
        return compatible.resolve(path, query_string, self._base_urls)
