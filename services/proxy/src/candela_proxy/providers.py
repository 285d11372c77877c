"""Which provider a path belongs to, where it goes upstream, and each provider's error shape."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from yarl import URL


class Provider(Enum):
    """A provider family: decides the upstream base URL, the usage format and the error shape."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    # Google's generateContent family (the Gemini API and Gemini on Vertex AI): usageMetadata, Google's errors.
    GOOGLE = "google"
    # genai-prices' id for AWS Bedrock (its records and prices go by it).
    BEDROCK = "aws"


class UpstreamAuth(Protocol):
    """How a request is authenticated upstream when its headers cannot go as they came (Bedrock's SigV4)."""

    def prepare(self, method: str, url: str, headers: dict[str, str], body: bytes | None) -> tuple[URL, dict[str, str]]:
        """The URL (already percent-encoded, sent as is) and the headers of one attempt at ``url``."""
        ...


@dataclass(frozen=True)
class Route:
    """Where one request goes: the provider family and the full upstream URL."""

    provider: Provider
    upstream_url: str
    # The provider's own path, e.g. "/v1/chat/completions", whatever prefix the client used.
    provider_path: str
    query_string: str = ""
    # A named provider's route (Azure, the OpenAI-compatible family: candela_proxy.named_routes; Gemini and
    # Vertex AI: candela_proxy.google) fills these; the defaults are what the two families' own paths mean.
    label: str = ""
    """The provider the record names (``azure``, ``groq``, ``google-vertex``, ...), whatever the target; "" for
    the family's."""
    price_id: str = ""
    """Its genai-prices provider id (``x-ai`` for ``xai``); "" with a label: never priced (vLLM, Ollama)."""
    api_path: str = ""
    """The OpenAI API path the request is (``/v1/chat/completions``) when ``provider_path`` spells it otherwise
    (an Azure deployment path); "" when ``provider_path`` is it."""
    stream_options: bool = True
    """Whether the upstream takes ``stream_options`` (Candela asks OpenAI-format streams for their usage)."""
    client_base_url: str = ""
    """A base URL the client chose in a header (Azure's resource): reached like ``Candela-Target-Url``."""
    model: str = ""
    """The model the path names (Gemini's models/{m}:..., Bedrock's /model/{modelId}/..., an Azure deployment
    mapped in ``CANDELA_AZURE_DEPLOYMENTS``), whatever the body says."""
    streamed: bool = False
    """Whether the path asks for a stream (Gemini's :streamGenerateContent, Bedrock's converse-stream)."""
    properties: tuple[tuple[str, str], ...] = ()
    """Properties the record gets from the path (``azure-deployment``)."""
    upstream_path: str = ""
    """The provider path as sent upstream, when it differs from the logged one (still percent-encoded)."""
    upstream_auth: UpstreamAuth | None = field(default=None, repr=False, compare=False)

    @property
    def provider_name(self) -> str:
        """The record's ``provider``: the named provider, else the family (``openai``, ``anthropic``, ``aws``)."""
        return self.label or self.provider.value

    @property
    def openai_path(self) -> str:
        """The OpenAI API path this request is, however the provider spells it."""
        return self.api_path or self.provider_path

    def url_at(self, target_base_url: str) -> str:
        """The upstream URL at a custom target (``Candela-Target-Url``, a fallback): base + provider path."""
        url = target_base_url.rstrip("/") + (self.upstream_path or self.provider_path)
        return f"{url}?{self.query_string}" if self.query_string else url


def resolve_route(path: str, query_string: str, openai_base_url: str, anthropic_base_url: str) -> Route | None:
    """Maps a request path to its upstream, or None when no provider serves it.

    ``openai_base_url`` includes ``/v1`` (as the OpenAI SDK's base URL does); ``anthropic_base_url`` does not.
    """
    if path.startswith("/openai/v1/"):
        provider, tail = Provider.OPENAI, path[len("/openai/v1") :]
    elif path.startswith("/anthropic/v1/"):
        provider, tail = Provider.ANTHROPIC, path[len("/anthropic") :]
    elif path == "/v1/messages" or path.startswith("/v1/messages/"):
        provider, tail = Provider.ANTHROPIC, path
    elif path.startswith("/v1/"):
        provider, tail = Provider.OPENAI, path[len("/v1") :]
    else:
        return None
    if provider is Provider.OPENAI:
        url, provider_path = openai_base_url.rstrip("/") + tail, "/v1" + tail
    else:
        url, provider_path = anthropic_base_url.rstrip("/") + tail, tail
    if query_string:
        url = f"{url}?{query_string}"
    return Route(provider=provider, upstream_url=url, provider_path=provider_path, query_string=query_string)


_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
}


_GOOGLE_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
}


# status -> the exception name Bedrock Runtime answers it with (boto3 raises it as a ClientError).
_BEDROCK_TYPES = {
    400: "ValidationException",
    401: "AccessDeniedException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    413: "ValidationException",
    429: "ThrottlingException",
    503: "ServiceUnavailableException",
}


def error_headers(provider: Provider, status: int) -> dict[str, str]:
    """Headers an error needs besides its body (Bedrock names its exception in ``x-amzn-ErrorType``)."""
    if provider is Provider.BEDROCK:
        return {"x-amzn-ErrorType": _BEDROCK_TYPES.get(status, "InternalServerException")}
    return {}


def error_body(provider: Provider, status: int, message: str, code: str) -> bytes:
    """A JSON error in the shape ``provider``'s SDK parses, so it raises its usual exception."""
    if provider is Provider.BEDROCK:
        return json.dumps({"message": message, "code": code}).encode()
    if provider is Provider.GOOGLE:
        kind = _GOOGLE_STATUSES.get(status, "INTERNAL")
        return json.dumps({"error": {"code": status, "message": message, "status": kind}}).encode()
    if provider is Provider.ANTHROPIC:
        kind = _ANTHROPIC_TYPES.get(status, "api_error")
        return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()
    kind = _OPENAI_TYPES.get(status, "server_error")
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()
