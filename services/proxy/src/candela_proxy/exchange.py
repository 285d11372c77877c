"""One proxied request as it happens, and a refusal Candela answers itself: what the proxy's rooms share.

:class:`Exchange` is filled in by admission, upstream and the cache, and read by the record; a
:class:`ProxyError` raised in any of them is answered by :func:`error_response` in the provider's own error
shape, so the SDK raises its usual exception.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from candela.logs.v1 import log_record_pb2
from candela_proxy.headers import CandelaHeaders
from candela_proxy.org_pricing import OrganizationPricing
from candela_proxy.providers import Provider, Route, error_body, error_headers
from candela_proxy.response_usage import ResponseFacts


class ProxyError(Exception):
    """A request Candela refuses itself, answered in the provider's error shape."""

    def __init__(self, status: int, message: str, code: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


@dataclass
class Exchange:
    """One proxied request as it happens: what the log record is built from."""

    request_id: str
    started_at_us: int
    started: float
    route: Route
    options: CandelaHeaders
    organization_id: str
    api_key_id: str
    model: str = ""
    streamed: bool = False
    status: int = 0
    error: str = ""
    first_byte: float | None = None
    request_body: bytes = b""
    request_content_type: str = ""
    # The body sent upstream, when Candela changed it (stream usage injection).
    upstream_body: bytes | None = None
    document: dict[str, Any] | None = None
    strip_usage_chunk: bool = False
    rate_limit_subject: str = ""
    target_url: str = ""
    cache_key: str = ""
    cache_hit: bool = False
    cost_saved_usd: str | None = None
    complete: bool = False
    response_chunks: list[bytes] = field(default_factory=list)
    response_content_type: str = ""
    response_log: bytes | None = None
    """The response as logged, when it differs from the bytes relayed (a binary event stream, as text)."""
    facts: ResponseFacts = field(default_factory=ResponseFacts)
    attempts: list[log_record_pb2.UpstreamAttempt] = field(default_factory=list)
    record: log_record_pb2.LogRecord | None = None
    """The log record, once built (see Recorder.finish)."""
    durable: asyncio.Future[None] | None = None
    """Done once the record is in the write-ahead log; None when there is nothing to wait for."""
    pricing: OrganizationPricing | None = None
    """The organization's overrides and aliases, when cached at admission (None: genai-prices alone)."""
    pricing_fetch: asyncio.Task[OrganizationPricing] | None = None
    """The fetch of the organization's pricing when it was not cached, started at admission and read only
    when the log is priced (see Recorder.log_durably); shared with other requests, never cancelled here."""


def error_response(provider: Provider, err: ProxyError, request_id: str | None) -> web.Response:
    """``err`` as the provider would have answered it, with the request's id as Candela-Id and Helicone-Id.

    A refusal answered before a request was admitted (``request_id`` None) is not logged; it still gets an
    id of its own, as Helicone's answers always carry one, so a client can quote it (it names no log).
    """
    request_id = request_id or str(uuid.uuid4())
    headers = {
        "Candela-Id": request_id,
        "Helicone-Id": request_id,
        **error_headers(provider, err.status),
        **err.headers,
    }
    return web.Response(
        body=error_body(provider, err.status, err.message, err.code),
        status=err.status,
        content_type="application/json",
        headers=headers,
    )
