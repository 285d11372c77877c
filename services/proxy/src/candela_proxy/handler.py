"""The proxy's request path: authenticate, forward, stream back untouched, and hand the log off.

Nothing on this path waits for logging: the finished record is queued (see :mod:`candela_proxy.shipping`).
Errors Candela itself raises are JSON in the provider's own error shape so the SDK raises its usual
exception; the provider's own errors pass through unchanged (and are logged like any answer).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from multidict import CIMultiDictProxy
from opentelemetry import propagate, trace

from candela.auth.v1 import auth_service_pb2 as auth_pb
from candela.ingest.v1 import ingest_service_pb2
from candela.logs.v1 import log_record_pb2
from candela_proxy import pricing
from candela_proxy.config import ProxyConfig
from candela_proxy.headers import CandelaHeaders, HeaderError, bearer_secret, parse_candela_headers
from candela_proxy.providers import Provider, Route, error_body, resolve_route
from candela_proxy.shipping import LogShipper
from candela_proxy.usage import ResponseFacts, StreamFacts, facts_from_json
from candela_runtime.errors import PermissionDenied, Unauthenticated, Unavailable
from candela_runtime.security import KeyAuthenticator

logger = logging.getLogger(__name__)
tracer = trace.get_tracer("candela.proxy")

# Headers that describe one connection, not the message; never forwarded either way.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
# aiohttp decompresses upstream bodies, so the encoding header no longer describes what we send.
_NOT_RETURNED = _HOP_BY_HOP | {"content-encoding"}


class ProxyError(Exception):
    """A request Candela refuses itself, answered in the provider's error shape."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


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
    response_chunks: list[bytes] = field(default_factory=list)
    facts: ResponseFacts = field(default_factory=ResponseFacts)


def _upstream_headers(headers: CIMultiDictProxy[str]) -> dict[str, str]:
    """The client's headers minus hop-by-hop and Candela's own (the provider key passes through)."""
    return {
        name: value
        for name, value in headers.items()
        if name.lower() not in _HOP_BY_HOP and not name.lower().startswith(("candela-", "helicone-"))
    }


class ProxyHandler:
    """Handles every provider path."""

    def __init__(
        self,
        config: ProxyConfig,
        session: aiohttp.ClientSession,
        authenticator: KeyAuthenticator,
        shipper: LogShipper,
    ) -> None:
        self._config = config
        self._session = session
        self._authenticator = authenticator
        self._shipper = shipper

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Proxies one request; always answers, and logs every request that reached a provider."""
        route = resolve_route(
            request.path, request.query_string, self._config.openai_base_url, self._config.anthropic_base_url
        )
        if route is None:
            return _error_response(
                Provider.OPENAI,
                ProxyError(
                    404,
                    f"no provider serves {request.path}; use /v1/..., /openai/v1/... or /anthropic/v1/...",
                    "unknown_route",
                ),
                None,
            )
        try:
            exchange = await self._admit(request, route)
        except ProxyError as err:
            return _error_response(route.provider, err, None)
        with tracer.start_as_current_span(
            f"llm {exchange.model or route.provider_path}",
            context=propagate.extract(request.headers),
            kind=trace.SpanKind.SERVER,
        ) as span:
            try:
                return await self._forward(request, exchange)
            finally:
                record = self._finish(exchange)
                _annotate_span(span, record)

    async def _admit(self, request: web.Request, route: Route) -> Exchange:
        """Checks the Candela key and the body before anything goes upstream."""
        started = time.perf_counter()
        started_at_us = time.time_ns() // 1000
        try:
            options = parse_candela_headers(request.headers)
        except HeaderError as err:
            raise ProxyError(400, str(err), "invalid_candela_header") from None
        secret = bearer_secret(options.auth)
        if secret is None:
            raise ProxyError(
                401, "missing Candela key: send the header 'Candela-Auth: Bearer <key>'", "missing_candela_key"
            )
        try:
            caller = await self._authenticator.authenticate(secret)
            caller.require_scope(auth_pb.API_KEY_SCOPE_PROXY)
        except Unauthenticated:
            raise ProxyError(401, "the Candela key is invalid, revoked or expired", "invalid_candela_key") from None
        except PermissionDenied as err:
            raise ProxyError(403, err.message, "candela_scope_missing") from None
        except Unavailable:
            raise ProxyError(
                503, "Candela cannot verify keys right now; retry shortly", "candela_auth_unavailable"
            ) from None
        body = await _read_body(request, self._config.max_body_bytes)
        exchange = Exchange(
            request_id=options.request_id or str(uuid.uuid4()),
            started_at_us=started_at_us,
            started=started,
            route=route,
            options=options,
            organization_id=caller.organization_id,
            api_key_id=caller.api_key_id,
            request_body=body,
        )
        if body and request.method == "POST":
            try:
                document = json.loads(body)
            except ValueError:
                raise ProxyError(400, "the request body is not valid JSON", "invalid_json") from None
            if isinstance(document, dict):
                model = document.get("model")
                exchange.model = model if isinstance(model, str) else ""
                exchange.streamed = document.get("stream") is True
        return exchange

    async def _forward(self, request: web.Request, exchange: Exchange) -> web.StreamResponse:
        headers = _upstream_headers(request.headers)
        propagate.inject(headers)
        try:
            async with self._session.request(
                request.method, exchange.route.upstream_url, data=exchange.request_body or None, headers=headers
            ) as upstream:
                exchange.status = upstream.status
                reply_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _NOT_RETURNED}
                reply_headers["Candela-Id"] = exchange.request_id
                if upstream.content_type == "text/event-stream":
                    return await self._relay_stream(request, upstream, reply_headers, exchange)
                body = await upstream.read()
                exchange.response_chunks.append(body)
                exchange.facts = facts_from_json(exchange.route.provider, body)
                return web.Response(body=body, status=upstream.status, headers=reply_headers)
        except (aiohttp.ClientError, TimeoutError) as err:
            exchange.status = 502
            exchange.error = f"upstream request failed: {type(err).__name__}: {err}"
            logger.warning("request %s: %s", exchange.request_id, exchange.error)
            return _error_response(
                exchange.route.provider,
                ProxyError(502, "Candela could not reach the provider", "upstream_unreachable"),
                exchange.request_id,
            )

    async def _relay_stream(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        reply_headers: dict[str, str],
        exchange: Exchange,
    ) -> web.StreamResponse:
        """Writes each upstream chunk to the client as it arrives, reading usage on the way."""
        exchange.streamed = True
        response = web.StreamResponse(status=upstream.status, headers=reply_headers)
        await response.prepare(request)
        stream = StreamFacts(exchange.route.provider)
        try:
            async for chunk in upstream.content.iter_any():
                if exchange.first_byte is None:
                    exchange.first_byte = time.perf_counter()
                exchange.response_chunks.append(chunk)
                stream.feed(chunk)
                await response.write(chunk)
            await response.write_eof()
        except ConnectionResetError:
            # The client went away: leaving the `async with` closes the upstream call too.
            exchange.error = "client disconnected mid-stream"
            logger.info("request %s: %s", exchange.request_id, exchange.error)
        finally:
            exchange.facts = stream.finish()
        return response

    def _finish(self, exchange: Exchange) -> log_record_pb2.LogRecord:
        """Builds the log record and queues it for ingest."""
        finished = time.perf_counter()
        options = exchange.options
        provider = exchange.route.provider.value
        facts = exchange.facts
        record = log_record_pb2.LogRecord(
            request_id=exchange.request_id,
            organization_id=exchange.organization_id,
            api_key_id=exchange.api_key_id,
            provider=provider,
            model=exchange.model or facts.response_model,
            response_model=facts.response_model,
            path=exchange.route.provider_path,
            status_code=exchange.status,
            error=exchange.error,
            streamed=exchange.streamed,
            latency_ms=round((finished - exchange.started) * 1000),
            usage=facts.to_proto(),
            user_id=options.user_id,
            session_id=options.session_id,
            session_path=options.session_path,
            session_name=options.session_name,
            properties=options.properties,
            prompt_id=options.prompt_id,
            prompt_version=options.prompt_version,
            request_body_omitted=options.omit_request,
            response_body_omitted=options.omit_response,
            finish_reason=facts.finish_reason,
        )
        record.created_at.FromMicroseconds(exchange.started_at_us)
        if exchange.streamed and exchange.first_byte is not None:
            record.time_to_first_token_ms = round((exchange.first_byte - exchange.started) * 1000)
        cost = pricing.cost_usd(provider, facts.response_model or exchange.model, facts)
        if cost is not None:
            record.cost_usd = format(cost, "f")
        self._shipper.submit(
            ingest_service_pb2.IngestRecord(
                record=record,
                request_body=b"" if options.omit_request else exchange.request_body,
                response_body=b"" if options.omit_response else b"".join(exchange.response_chunks),
            )
        )
        return record


async def _read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise ProxyError(413, f"the request body is larger than the {limit}-byte limit", "request_too_large")
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        raise ProxyError(413, f"the request body is larger than the {limit}-byte limit", "request_too_large")
    return body


def _error_response(provider: Provider, err: ProxyError, request_id: str | None) -> web.Response:
    headers = {"Candela-Id": request_id} if request_id else {}
    return web.Response(
        body=error_body(provider, err.status, err.message, err.code),
        status=err.status,
        content_type="application/json",
        headers=headers,
    )


def _annotate_span(span: trace.Span, record: log_record_pb2.LogRecord) -> None:
    """The OpenTelemetry GenAI semantic-convention attributes of the LLM call."""
    span.set_attributes(
        {
            "gen_ai.system": record.provider,
            "gen_ai.request.model": record.model,
            "gen_ai.response.model": record.response_model,
            "gen_ai.usage.input_tokens": record.usage.prompt_tokens,
            "gen_ai.usage.output_tokens": record.usage.completion_tokens,
            "http.response.status_code": record.status_code,
            "candela.request_id": record.request_id,
        }
    )
    if record.finish_reason:
        span.set_attribute("gen_ai.response.finish_reasons", [record.finish_reason])
