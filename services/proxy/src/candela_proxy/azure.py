"""Azure OpenAI under ``/azure``: deployment paths and the v1 API of an Azure resource.

The openai SDK's ``AzureOpenAI(azure_endpoint=<gateway>/azure, api_version=..., api_key=...)`` sends
``/azure/openai/deployments/{deployment}/chat/completions?api-version=...`` (and ``/embeddings``,
``/completions``, ``/audio/...``, ``/images/...``); ``OpenAI(base_url=<gateway>/azure/openai/v1)`` sends the
v1 API, ``/azure/openai/v1/chat/completions`` (``/responses``, ``/embeddings``, ...). Anything else under
``/azure/openai/`` (files, batches) passes through too. The path after ``/azure`` goes to the resource as
it is, query string (``api-version``) included. ``/openai/v1/...`` without ``/azure`` stays OpenAI's.

The resource is ``CANDELA_AZURE_BASE_URL``, or the one a request names in ``Candela-OpenAI-Api-Base`` (or
Helicone's ``Helicone-OpenAI-Api-Base``): a client-chosen resource is a custom target like
``Candela-Target-Url``, reached only under the same address policy (:mod:`candela_proxy.targets`). The key
travels in ``api-key`` (or ``Authorization: Bearer``) and passes through, never logged.

A deployment is named by its owner, not by the model it runs. The record keeps the deployment (its path,
and the property ``azure-deployment``) and the model: the one ``CANDELA_AZURE_DEPLOYMENTS`` maps the
deployment to, else the body's ``model``; the cost is priced (genai-prices, provider ``azure``) from the
model the answer names, else that model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final
from urllib.parse import parse_qs

from candela_proxy.exchange import ProxyError
from candela_proxy.providers import Provider, Route
from candela_proxy.targets import TargetUrlError, parse_target_url

PREFIX: Final = "/azure"
DEPLOYMENT_PROPERTY: Final = "azure-deployment"
RESOURCE_HEADERS: Final = ("Candela-OpenAI-Api-Base", "Helicone-OpenAI-Api-Base")
_DEPLOYMENTS: Final = "/openai/deployments/"
# Azure takes stream_options from api-version 2024-08-01-preview on; older versions refuse the request.
STREAM_OPTIONS_SINCE: Final = "2024-08-01"
_API_DATE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def parse_deployments(text: str) -> dict[str, str]:
    """``CANDELA_AZURE_DEPLOYMENTS`` (``deployment=model,...``); raises ValueError naming a malformed entry."""
    deployments: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        deployment, separator, model = (part.strip() for part in item.partition("="))
        if not separator or not deployment or not model:
            raise ValueError(f"CANDELA_AZURE_DEPLOYMENTS entry {item.strip()!r} is not deployment=model")
        deployments[deployment] = model
    return deployments


def resolve(
    path: str, query_string: str, headers: Mapping[str, str], base_url: str, deployments: Mapping[str, str]
) -> Route | None:
    """The route of an ``/azure/openai/...`` path, or None for any other path.

    Raises ProxyError (400) when the resource header is malformed, or when no resource is named at all.
    """
    if not path.startswith(PREFIX + "/openai/"):
        return None
    provider_path = path[len(PREFIX) :]
    deployment = ""
    if provider_path.startswith(_DEPLOYMENTS):
        deployment, _, operation = provider_path[len(_DEPLOYMENTS) :].partition("/")
        api_path = "/v1/" + operation
        stream_options = _takes_stream_options(query_string)
    elif provider_path.startswith("/openai/v1/"):
        api_path = provider_path[len("/openai") :]
        stream_options = True
    else:
        stream_options = False
        api_path = "/v1" + provider_path[len("/openai") :]
    client_base_url = _resource_header(headers)
    base = client_base_url or base_url
    if not base:
        raise ProxyError(
            400,
            "Azure OpenAI needs a resource: send the header Candela-OpenAI-Api-Base: https://<resource>.openai.azure.com"
            " (or ask the operator to set CANDELA_AZURE_BASE_URL)",
            "azure_resource_missing",
        )
    url = base.rstrip("/") + provider_path
    return Route(
        provider=Provider.OPENAI,
        upstream_url=f"{url}?{query_string}" if query_string else url,
        provider_path=provider_path,
        query_string=query_string,
        label="azure",
        price_id="azure",
        api_path=api_path,
        stream_options=stream_options,
        client_base_url=client_base_url,
        model=deployments.get(deployment, ""),
        properties=((DEPLOYMENT_PROPERTY, deployment),) if deployment else (),
    )


def _takes_stream_options(query_string: str) -> bool:
    """Whether the request's ``api-version`` (a date, maybe ``-preview``) takes ``stream_options``."""
    versions = parse_qs(query_string).get("api-version", [])
    match = _API_DATE.match(versions[0]) if versions else None
    return match is not None and match.group() >= STREAM_OPTIONS_SINCE


def _resource_header(headers: Mapping[str, str]) -> str:
    """The resource a request names (Candela's header first), checked like Candela-Target-Url; "" when none."""
    for name in RESOURCE_HEADERS:
        value = headers.get(name)
        if value:
            try:
                return parse_target_url(value)
            except TargetUrlError as err:
                raise ProxyError(400, f"header {name} {err}", "invalid_candela_header") from None
    return ""
