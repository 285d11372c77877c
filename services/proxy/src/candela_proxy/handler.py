"""The proxy's request path: authenticate, limit, look in the cache, forward (with retries and
fallbacks), stream back untouched, and hand the log off.

Nothing on this path waits for ingest: the finished record is handed to :mod:`candela_proxy.shipping`.
It waits only for the record to be durable in the proxy's write-ahead log (one group-committed fsync),
and does so before the client can see the end of its answer: a client that got a whole answer and its
``Candela-Id`` will find the log, even if the proxy is killed right after. Storing an answer in the cache
and counting a cents rate limit happen in owned background tasks after the answer is sent.

Errors Candela itself raises are JSON in the provider's own error shape so the SDK raises its usual
exception; the provider's own errors pass through unchanged (and are logged like any answer).

Custom targets (``Candela-Target-Url`` and each ``Candela-Fallbacks`` ``target-url``) are base URLs to
which the provider path (``/v1/chat/completions``, ...) is appended, as Helicone's gateway does: e.g.
``https://api.groq.com/openai`` or ``http://127.0.0.1:8000`` for vLLM. They go out through their own
session, which reaches only public addresses or the hosts the operator allowed (:mod:`candela_proxy.targets`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDictProxy
from opentelemetry import propagate, trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from candela.auth.v1 import auth_service_pb2 as auth_pb
from candela.ingest.v1 import ingest_service_pb2
from candela.logs.v1 import log_record_pb2
from candela_proxy import metrics, pricing, prompting
from candela_proxy.cache import CachedAnswer, ResponseCache, cache_key
from candela_proxy.config import ProxyConfig
from candela_proxy.headers import CandelaHeaders, HeaderError, RetryPolicy, bearer_secret, parse_candela_headers
from candela_proxy.providers import Provider, Route, error_body, resolve_route
from candela_proxy.ratelimit import RateLimitDecision, RateLimiter, SegmentMissing, subject
from candela_proxy.response_usage import ResponseFacts, StreamFacts, facts_from_json
from candela_proxy.shipping import LogShipper
from candela_proxy.targets import TargetRefused, TargetSession, provider_name
from candela_runtime.errors import PermissionDenied, Unauthenticated, Unavailable
from candela_runtime.limits import MAX_MODEL_NAME_LENGTH, MAX_RECORD_BYTES, MAX_RECORD_METADATA_BYTES
from candela_runtime.redaction import redact_url, redact_urls_in
from candela_runtime.security import KeyAuthenticator

logger = logging.getLogger(__name__)
tracer = trace.get_tracer("candela.proxy")
_W3C = TraceContextTextMapPropagator()
_UNIT_NAMES = {"request": "requests", "cents": "cents"}

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
# The bodies one log may carry: ingest's limit on a whole log, less its largest metadata and the fields' keys
# and lengths.
_LOG_BODY_BUDGET = MAX_RECORD_BYTES - MAX_RECORD_METADATA_BYTES - 64
# OpenAI endpoints whose streams can carry a usage chunk on request (stream_options.include_usage).
_STREAM_USAGE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})


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
    facts: ResponseFacts = field(default_factory=ResponseFacts)
    attempts: list[log_record_pb2.UpstreamAttempt] = field(default_factory=list)
    record: log_record_pb2.LogRecord | None = None
    """The log record, once built (see ProxyHandler._finish)."""
    durable: asyncio.Future[None] | None = None
    """Done once the record is in the write-ahead log; None when there is nothing to wait for."""


# What a gateway in front of the proxy (Envoy, a load balancer) adds about its own hop: the provider needs
# none of it, and it would tell the provider about Candela's network (addresses, Envoy's request ids).
# X-Request-ID goes too: Envoy sets one on every request (a client's own cannot be told from it), and
# providers do not read it (OpenAI's client-side id is X-Client-Request-Id, which passes through).
_GATEWAY_HEADERS = frozenset(
    {
        "x-request-id",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-client-cert",
        "x-real-ip",
        "forwarded",
        "via",
    }
)


def _upstream_headers(headers: CIMultiDictProxy[str]) -> dict[str, str]:
    """The client's headers minus hop-by-hop, Candela's own and a gateway's (the provider key passes through).

    Envoy's `x-envoy-*` headers are dropped whoever set them: Envoy strips a client's own at the edge, so any
    that arrive are the gateway's.
    """
    forwarded: dict[str, str] = {}
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in _HOP_BY_HOP or lowered in _GATEWAY_HEADERS:
            continue
        if lowered.startswith(("candela-", "helicone-", "x-envoy-")):
            continue
        forwarded[name] = value
    return forwarded


def _retryable(status: int) -> bool:
    """A status worth another try: none at all (connection error), rate limited, or a server error."""
    return status == 0 or status == 429 or status >= 500


class ProxyHandler:
    """Handles every provider path."""

    def __init__(
        self,
        config: ProxyConfig,
        session: aiohttp.ClientSession,
        targets: TargetSession,
        authenticator: KeyAuthenticator,
        shipper: LogShipper,
        cache: ResponseCache | None = None,
        limiter: RateLimiter | None = None,
        tracing: bool = True,
        prompts: prompting.PromptRenderer | None = None,
    ) -> None:
        self._config = config
        self._session = session
        # Client-named targets never ride on the providers' session (see candela_proxy.targets).
        self._targets = targets
        self._authenticator = authenticator
        self._shipper = shipper
        self._cache = cache
        self._limiter = limiter
        self._prompts = prompts
        self._background: set[asyncio.Task[None]] = set()
        # Spans cost ~50 us a request; without an exporter nobody sees them, so none are made (the client's
        # traceparent still reaches the provider, as every other header does).
        self._tracing = tracing

    async def close(self) -> None:
        """Waits for the cache writes and rate-limit counts still under way."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Proxies one request; always answers, and logs every request Candela accepted."""
        route = resolve_route(
            request.path, request.query_string, self._config.openai_base_url, self._config.anthropic_base_url
        )
        if route is None:
            provider = Provider.ANTHROPIC if request.path.startswith("/anthropic") else Provider.OPENAI
            metrics.count_request(provider.value, "", 404)
            return _error_response(
                provider,
                ProxyError(
                    404,
                    f"no provider serves {request.path}; use /v1/..., /openai/v1/... or /anthropic/v1/...",
                    "unknown_route",
                ),
                None,
            )
        if not self._tracing:
            return await self._admit_and_serve(request, route, None)
        # The span opens before admission, so the key check (AuthService.Authenticate) is part of it; it is
        # renamed "<operation> <model>" (GenAI conventions) once the body says which model. Only the W3C trace
        # context is taken from the client: its baggage does not ride along into the internal calls.
        with tracer.start_as_current_span(
            f"{_operation(route.provider_path)} {route.provider_path}",
            context=_W3C.extract(request.headers),
            kind=trace.SpanKind.CLIENT,
        ) as span:
            return await self._admit_and_serve(request, route, span)

    async def _admit_and_serve(self, request: web.Request, route: Route, span: trace.Span | None) -> web.StreamResponse:
        """Admits, serves and logs one request; ``span`` (when tracing) is the LLM span to annotate."""
        try:
            exchange = await self._admit(request, route)
        except ProxyError as err:
            metrics.count_request(route.provider.value, route.provider_path, err.status)
            if span is not None:
                span.set_attribute("http.response.status_code", err.status)
                span.set_status(trace.Status(trace.StatusCode.ERROR, err.code))
            return _error_response(route.provider, err, None)
        except ConnectionResetError:
            # The client left before its request arrived whole: nothing reached a provider, nothing to log.
            return web.Response(status=400)
        if span is not None and exchange.model:
            span.update_name(f"{_operation(route.provider_path)} {exchange.model}")
        try:
            response = await self._serve(request, exchange)
            # aiohttp writes a non-streamed answer after this returns, so its log is durable first; a
            # stream's last write waits for it in _relay_stream / _replay_cached.
            await self._log_durably(exchange)
            return response
        except asyncio.CancelledError:
            exchange.error = exchange.error or "client disconnected"
            raise
        finally:
            # No answer went out whole (an error, a client gone): the log is kept without waiting for it.
            record = exchange.record if exchange.record is not None else self._finish(exchange)
            if span is not None and span.is_recording():
                _annotate_span(span, record)

    async def _log_durably(self, exchange: Exchange) -> None:
        """Builds and hands over the log record (once), then waits until it is durable."""
        if exchange.record is None:
            self._finish(exchange)
        if exchange.durable is not None:
            # Shielded: the future is shared by a whole group commit, and this request may be cancelled.
            await asyncio.shield(exchange.durable)

    async def _admit(self, request: web.Request, route: Route) -> Exchange:
        """Checks the Candela key, the headers and the body before anything goes upstream."""
        if self._config.refuse_when_log_full and (reason := self._shipper.at_risk):
            raise ProxyError(
                503,
                f"Candela cannot keep this request's log right now ({reason}); retry shortly",
                "candela_log_unavailable",
                {"Retry-After": "1"},
            )
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
        await self._check_targets(options)
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
            target_url=options.target_url,
        )
        if options.rate_limit is not None:
            try:
                exchange.rate_limit_subject = subject(
                    options.rate_limit, caller.organization_id, options.user_id, options.properties
                )
            except SegmentMissing as err:
                raise ProxyError(400, str(err), "invalid_candela_header") from None
        if body and request.method == "POST":
            try:
                document = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise ProxyError(400, "the request body is not valid JSON", "invalid_json") from None
            if isinstance(document, dict):
                if prompting.names_prompt(options, document):
                    document = await self._render_prompt(exchange, document)
                exchange.document = document
                model = document.get("model")
                exchange.model = model if isinstance(model, str) else ""
                if len(exchange.model) > MAX_MODEL_NAME_LENGTH:
                    # Logged with the request: a longer one could make its log too large to keep.
                    raise ProxyError(
                        400, f"the model name is longer than {MAX_MODEL_NAME_LENGTH} characters", "invalid_model"
                    )
                exchange.streamed = document.get("stream") is True
                self._inject_stream_usage(exchange, document)
        elif options.fallbacks and any(fallback.body_overrides for fallback in options.fallbacks):
            raise ProxyError(
                400, "Candela-Fallbacks bodyKeyOverride needs a JSON object body", "invalid_candela_header"
            )
        if exchange.document is None and prompting.names_prompt(options, None):
            raise ProxyError(
                400, "a named prompt is rendered into a JSON object request body", "invalid_prompt_request"
            )
        return exchange

    async def _check_targets(self, options: CandelaHeaders) -> None:
        """Refuses (403) a Candela-Target-Url or fallback the address policy keeps the proxy from reaching."""
        for url in (options.target_url, *(fallback.target_url for fallback in options.fallbacks)):
            if not url:
                continue
            try:
                await self._targets.admit(url)
            except TargetRefused as err:
                logger.info("refused target %s at admission: %s", provider_name(url), err.detail)
                raise ProxyError(403, str(err), "target_not_allowed") from None

    async def _render_prompt(self, exchange: Exchange, document: dict[str, Any]) -> dict[str, Any]:
        """Renders the named prompt into the body sent upstream (and logged); the log gets its version."""
        try:
            if self._prompts is None:
                raise prompting.unavailable()
            named = prompting.prompt_request(exchange.options, document)
            rendered = await self._prompts.render(exchange.route, exchange.organization_id, named)
        except prompting.PromptError as err:
            raise ProxyError(err.status, err.message, err.code) from None
        options = exchange.options
        options.prompt_id, options.prompt_version = rendered.prompt_id, str(rendered.version)
        options.prompt_environment, options.prompt_inputs = named.environment, rendered.inputs
        exchange.request_body = orjson.dumps(rendered.document)
        return rendered.document

    @staticmethod
    def _inject_stream_usage(exchange: Exchange, document: dict[str, Any]) -> None:
        """Candela-Stream-Usage: asks an OpenAI stream for its usage chunk, hidden from a client that did not."""
        if not (
            exchange.options.stream_usage
            and exchange.streamed
            and exchange.route.provider is Provider.OPENAI
            and exchange.route.provider_path in _STREAM_USAGE_PATHS
        ):
            return
        stream_options = document.get("stream_options")
        if isinstance(stream_options, dict) and stream_options.get("include_usage") is True:
            return
        changed = dict(document)
        changed["stream_options"] = {
            **(stream_options if isinstance(stream_options, dict) else {}),
            "include_usage": True,
        }
        exchange.upstream_body = orjson.dumps(changed)
        exchange.strip_usage_chunk = True

    async def _serve(self, request: web.Request, exchange: Exchange) -> web.StreamResponse:
        extra_headers: dict[str, str] = {}
        policy = exchange.options.rate_limit
        if policy is not None and self._limiter is not None:
            decision = await self._limiter.admit(policy, exchange.rate_limit_subject)
            if decision is not None:
                extra_headers.update(decision.headers())
                if not decision.admitted:
                    return self._refuse_rate_limited(exchange, decision)
        cache_policy = exchange.options.cache
        if cache_policy is not None and self._cache is not None:
            exchange.cache_key = cache_key(
                exchange.organization_id,
                cache_policy,
                request.method,
                exchange.route.url_at(exchange.target_url) if exchange.target_url else exchange.route.upstream_url,
                exchange.request_body,
                request.headers,
            )
            answer = await self._cache.lookup(exchange.cache_key, cache_policy)
            metrics.CACHE_LOOKUPS.labels("hit" if answer is not None else "miss").inc()
            if answer is not None:
                extra_headers["Candela-Cache"] = "HIT"
                return await self._replay_cached(request, exchange, answer, extra_headers)
            extra_headers["Candela-Cache"] = "MISS"
        metrics.OVERHEAD.observe(time.perf_counter() - exchange.started)
        return await self._forward(request, exchange, extra_headers)

    def _refuse_rate_limited(self, exchange: Exchange, decision: RateLimitDecision) -> web.Response:
        metrics.RATE_LIMITED.inc()
        exchange.status = 429
        exchange.error = f"rate limited by Candela-RateLimit-Policy {decision.policy.header_value}"
        headers = {**decision.headers(), "Retry-After": str(decision.reset_s)}
        err = ProxyError(
            429,
            f"Candela rate limit exceeded: {decision.limit} {_UNIT_NAMES[decision.policy.unit]} per"
            f" {decision.policy.window_s}s"
            f" (policy {decision.policy.header_value}); retry after {decision.reset_s}s",
            "candela_rate_limited",
            headers,
        )
        return _error_response(exchange.route.provider, err, exchange.request_id)

    async def _replay_cached(
        self, request: web.Request, exchange: Exchange, answer: CachedAnswer, extra_headers: dict[str, str]
    ) -> web.StreamResponse:
        """Answers from the cache exactly as the provider answered the first time (SSE replayed as SSE)."""
        exchange.cache_hit = True
        exchange.status = answer.status
        exchange.streamed = answer.streamed
        exchange.facts = ResponseFacts.from_dict(answer.facts)
        exchange.cost_saved_usd = answer.cost_usd
        exchange.response_chunks.append(answer.body)
        headers = {"Content-Type": answer.content_type, "Candela-Id": exchange.request_id, **extra_headers}
        if not answer.streamed:
            exchange.complete = True
            return web.Response(body=answer.body, status=answer.status, headers=headers)
        response = web.StreamResponse(status=answer.status, headers=headers)
        await response.prepare(request)
        exchange.first_byte = time.perf_counter()
        await response.write(answer.body)
        exchange.complete = True
        await self._log_durably(exchange)
        await response.write_eof()
        return response

    def _plan(self, exchange: Exchange) -> list[tuple[str, dict[str, str], bytes | None]]:
        """(target base URL or "" for the default, extra headers, body) for the main call and each fallback."""
        body = exchange.upstream_body if exchange.upstream_body is not None else exchange.request_body
        plan: list[tuple[str, dict[str, str], bytes | None]] = [(exchange.target_url, {}, body or None)]
        for fallback in exchange.options.fallbacks:
            fallback_body = body
            if fallback.body_overrides and exchange.document is not None:
                base = orjson.loads(body) if exchange.upstream_body is not None else dict(exchange.document)
                base.update(dict(fallback.body_overrides))
                fallback_body = orjson.dumps(base)
            plan.append((fallback.target_url, dict(fallback.headers), fallback_body or None))
        return plan

    async def _forward(
        self, request: web.Request, exchange: Exchange, extra_headers: dict[str, str]
    ) -> web.StreamResponse:
        """The main call, with retries, then each fallback in order while the last status asks for one."""
        headers = _upstream_headers(request.headers)
        if self._tracing:
            propagate.inject(headers)
        fallbacks = exchange.options.fallbacks
        plan = self._plan(exchange)
        for index, (target, overrides, body) in enumerate(plan):
            url = exchange.route.url_at(target) if target else exchange.route.upstream_url
            try:
                upstream = await self._attempt(request.method, url, target, {**headers, **overrides}, body, exchange)
            except ProxyError as err:
                # Refused where it connects (its DNS answer changed since admission): answered and logged.
                exchange.target_url, exchange.status = target, err.status
                return _error_response(exchange.route.provider, err, exchange.request_id)
            status = upstream.status if upstream is not None else 0
            if index < len(fallbacks) and (upstream is None or status in fallbacks[index].on_codes):
                if upstream is not None:
                    upstream.close()
                continue
            exchange.target_url = target
            if upstream is None:
                exchange.status = 502
                return _error_response(
                    exchange.route.provider,
                    ProxyError(502, "Candela could not reach the provider", "upstream_unreachable"),
                    exchange.request_id,
                )
            exchange.error = ""
            return await self._relay(request, upstream, exchange, extra_headers)
        raise AssertionError("the plan always has a last entry")  # pragma: no cover

    async def _attempt(
        self,
        method: str,
        url: str,
        target: str,
        headers: dict[str, str],
        body: bytes | None,
        exchange: Exchange,
    ) -> aiohttp.ClientResponse | None:
        """One target, retried on 429, 5xx and connection errors when Candela-Retry-Enabled asks for it."""
        retry: RetryPolicy | None = exchange.options.retry
        tries = 1 + (retry.num if retry is not None else 0)
        for attempt in range(1, tries + 1):
            started = time.perf_counter()
            upstream: aiohttp.ClientResponse | None
            try:
                if target:
                    upstream = await self._targets.request(method, url, data=body, headers=headers)
                else:
                    upstream = await self._session.request(method, url, data=body, headers=headers)
                error = ""
            except TargetRefused as err:
                # The record (which the caller can read) names the host, the proxy's log what it resolved to.
                exchange.error = f"refused where it connects: {err}"
                logger.warning("request %s: target refused where it connects: %s", exchange.request_id, err.detail)
                exchange.attempts.append(
                    log_record_pb2.UpstreamAttempt(
                        target_url=target,
                        error=exchange.error,
                        latency_ms=round((time.perf_counter() - started) * 1000),
                    )
                )
                raise ProxyError(403, str(err), "target_not_allowed") from None
            except (aiohttp.ClientError, TimeoutError) as err:
                # aiohttp's messages can quote the URL, query string (`?key=`) and userinfo included.
                error = redact_urls_in(f"upstream request failed: {type(err).__name__}: {err}")
                upstream = None
                exchange.error = error
                logger.warning("request %s: %s", exchange.request_id, error)
            status = upstream.status if upstream is not None else 0
            metrics.count_attempt(status)
            exchange.attempts.append(
                log_record_pb2.UpstreamAttempt(
                    target_url=redact_url(target),
                    status_code=status,
                    error=error,
                    latency_ms=round((time.perf_counter() - started) * 1000),
                )
            )
            if retry is None or attempt == tries or not _retryable(status):
                return upstream
            delay = retry.delay_s(attempt)
            if upstream is not None:
                delay = max(delay, _retry_after_s(upstream, retry))
                upstream.close()
            await asyncio.sleep(delay)
        return None  # pragma: no cover

    async def _relay(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        exchange: Exchange,
        extra_headers: dict[str, str],
    ) -> web.StreamResponse:
        exchange.status = upstream.status
        reply_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _NOT_RETURNED}
        reply_headers["Candela-Id"] = exchange.request_id
        reply_headers.update(extra_headers)
        exchange.response_content_type = upstream.headers.get("Content-Type", "")
        try:
            if upstream.content_type == "text/event-stream":
                return await self._relay_stream(request, upstream, reply_headers, exchange)
            try:
                body = await upstream.read()
            except (aiohttp.ClientError, TimeoutError) as err:
                exchange.status = 502
                exchange.error = f"upstream failed mid-answer: {type(err).__name__}: {err}"
                return _error_response(
                    exchange.route.provider,
                    ProxyError(502, "the provider stopped answering mid-response", "upstream_failed"),
                    exchange.request_id,
                )
            exchange.response_chunks.append(body)
            exchange.facts = facts_from_json(exchange.route.provider, body)
            exchange.complete = True
            return web.Response(body=body, status=upstream.status, headers=reply_headers)
        finally:
            # Closing (not releasing) an unfinished answer cancels the upstream call.
            if exchange.complete:
                upstream.release()
            else:
                upstream.close()

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
        hidden = _UsageChunkFilter() if exchange.strip_usage_chunk else None
        try:
            async for chunk in upstream.content.iter_any():
                if exchange.first_byte is None:
                    exchange.first_byte = time.perf_counter()
                stream.feed(chunk)
                if hidden is not None:
                    chunk = hidden.feed(chunk)
                    if not chunk:
                        continue
                exchange.response_chunks.append(chunk)
                await response.write(chunk)
            if hidden is not None and (tail := hidden.finish()):
                exchange.response_chunks.append(tail)
                await response.write(tail)
            exchange.facts = stream.finish()
            exchange.complete = True
            # The end of the stream reaches the client only once its log is durable. Should the client
            # leave during write_eof, it already had every byte of the answer: the log says complete.
            await self._log_durably(exchange)
            await response.write_eof()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            exchange.error = "client disconnected mid-stream"
            logger.info("request %s: %s", exchange.request_id, exchange.error)
        except (aiohttp.ClientError, TimeoutError) as err:
            exchange.error = f"upstream failed mid-stream: {type(err).__name__}: {err}"
            logger.warning("request %s: %s", exchange.request_id, exchange.error)
        finally:
            if exchange.record is None:
                exchange.facts = stream.finish()
        return response

    def _finish(self, exchange: Exchange) -> log_record_pb2.LogRecord:
        """Builds the log record and hands it over (``exchange.durable`` says when it is on disk); schedules
        the cache write and the cents count."""
        finished = time.perf_counter()
        options = exchange.options
        facts = exchange.facts
        # The record, and the span made from it, never carry a URL's credentials (userinfo, `?key=`).
        target = redact_url(exchange.target_url)
        provider = provider_name(target) if target else exchange.route.provider.value
        model = exchange.model or facts.response_model
        record = log_record_pb2.LogRecord(
            request_id=exchange.request_id,
            organization_id=exchange.organization_id,
            api_key_id=exchange.api_key_id,
            provider=provider,
            model=model,
            response_model=facts.response_model,
            path=exchange.route.provider_path,
            status_code=exchange.status,
            error=redact_urls_in(exchange.error),
            streamed=exchange.streamed,
            latency_ms=round((finished - exchange.started) * 1000),
            usage=facts.to_proto(),
            usage_clamped=facts.clamped,
            user_id=options.user_id,
            session_id=options.session_id,
            session_path=options.session_path,
            session_name=options.session_name,
            properties=options.properties,
            prompt_id=options.prompt_id or options.prompt_tag,
            prompt_version=options.prompt_version,
            prompt_inputs=options.prompt_inputs,
            cache_hit=exchange.cache_hit,
            request_body_omitted=options.omit_request,
            response_body_omitted=options.omit_response,
            finish_reason=facts.finish_reason,
            target_url=target,
            attempts=exchange.attempts,
        )
        # Set directly: Timestamp.FromMicroseconds validates in Python and showed in profiles.
        record.created_at.seconds, micros = divmod(exchange.started_at_us, 1_000_000)
        record.created_at.nanos = micros * 1000
        if exchange.streamed and exchange.first_byte is not None:
            record.time_to_first_token_ms = round((exchange.first_byte - exchange.started) * 1000)
        cost: Decimal | None = None
        if exchange.cache_hit:
            # A cache hit cost nothing; what it saved is what the first answer cost (when that was known).
            if exchange.cost_saved_usd is not None:
                record.cost_usd = "0"
                record.cost_saved_usd = exchange.cost_saved_usd
        elif exchange.status:
            cost = pricing.cost_usd(exchange.route.provider.value, facts.response_model or model, facts, target)
            if cost is not None:
                record.cost_usd = format(cost, "f")
        response_body = b"".join(exchange.response_chunks)
        stored_request, stored_response = _within_log_limit(
            record,
            b"" if options.omit_request else exchange.request_body,
            b"" if options.omit_response else response_body,
        )
        exchange.record = record
        exchange.durable = self._shipper.submit(
            ingest_service_pb2.IngestRecord(
                record=record,
                request_body=stored_request,
                response_body=stored_response,
                # None (not {}) when not tracing: an empty map costs ~1 us a request to build.
                trace_context=_request_trace_context() if self._tracing else None,
            )
        )
        metrics.count_served(
            provider if not target else "custom",
            exchange.route.provider_path,
            exchange.status,
            finished - exchange.started,
        )
        self._after(exchange, response_body, cost)
        return record

    def _after(self, exchange: Exchange, response_body: bytes, cost: Decimal | None) -> None:
        """Cache write and cents count, off the request path (owned tasks, awaited on shutdown)."""
        jobs = []
        cache_policy = exchange.options.cache
        if (
            self._cache is not None
            and cache_policy is not None
            and exchange.cache_key
            and not exchange.cache_hit
            and exchange.complete
            and 200 <= exchange.status < 300
        ):
            answer = CachedAnswer(
                status=exchange.status,
                content_type=exchange.response_content_type or "application/json",
                body=response_body,
                streamed=exchange.streamed,
                facts=exchange.facts.as_dict(),
                cost_usd=format(cost, "f") if cost is not None else None,
            )
            jobs.append(self._cache.store(exchange.cache_key, cache_policy, answer))
        policy = exchange.options.rate_limit
        if self._limiter is not None and policy is not None and policy.unit == "cents" and cost:
            jobs.append(self._limiter.spend(policy, exchange.rate_limit_subject, cost))
        for job in jobs:
            task = asyncio.get_running_loop().create_task(job)
            self._background.add(task)
            task.add_done_callback(self._background.discard)


class _UsageChunkFilter:
    """Drops the usage-only chunk (``"choices": []``) of an OpenAI stream, passing every other byte as is."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        """The bytes of the complete events in ``pending + chunk`` that the client should see."""
        data = self._pending + chunk
        end = data.rfind(b"\n\n")
        if end < 0:
            self._pending = data
            return b""
        self._pending = data[end + 2 :]
        return b"".join(event + b"\n\n" for event in data[:end].split(b"\n\n") if not _is_usage_chunk(event))

    def finish(self) -> bytes:
        """Whatever trailing bytes never formed a complete event."""
        tail, self._pending = self._pending, b""
        return b"" if _is_usage_chunk(tail) else tail


def _is_usage_chunk(event: bytes) -> bool:
    if not event.startswith(b"data: {") or b'"usage"' not in event:
        return False
    try:
        document = orjson.loads(event[6:])
    except orjson.JSONDecodeError:
        return False
    return isinstance(document, dict) and document.get("choices") == [] and document.get("usage") is not None


def _retry_after_s(upstream: aiohttp.ClientResponse, retry: RetryPolicy) -> float:
    """The provider's Retry-After (seconds), capped by the retry policy's longest wait."""
    value = upstream.headers.get("Retry-After", "")
    try:
        seconds = float(value)
    except ValueError:
        return 0.0
    if math.isnan(seconds):  # "nan" parses, and asyncio.sleep(nan) never returns
        return 0.0
    return min(max(seconds, 0.0), retry.max_timeout_ms / 1000)


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The whole request body, however it arrives (Content-Length or chunked, in parts, slowly), up to
    ``limit`` bytes; a larger one is a 413, refused at once when its Content-Length says so.

    ``readany`` hands over what the connection has delivered so far, so the body is read until its end:
    one read would return only the first parts of a body larger than a socket buffer, or of one sent in
    pieces.
    """
    if request.content_length is not None and request.content_length > limit:
        raise ProxyError(413, f"the request body is larger than the {limit}-byte limit", "request_too_large")
    parts: list[bytes] = []
    size = 0
    while part := await request.content.readany():
        size += len(part)
        if size > limit:
            raise ProxyError(413, f"the request body is larger than the {limit}-byte limit", "request_too_large")
        parts.append(part)
    # join() returns a lone part itself, uncopied: the common small body costs nothing more.
    return b"".join(parts)


def _within_log_limit(
    record: log_record_pb2.LogRecord, request_body: bytes, response_body: bytes
) -> tuple[bytes, bytes]:
    """The bodies to log with ``record``: both, unless together they exceed what one stored log holds.

    Ingest refuses a whole log above MAX_RECORD_BYTES, so rather than lose it, the larger body is left out
    (and then the other, if it alone is still too large), each marked on the record as omitted and over the
    limit: the log is kept with its metadata, and says why a body is missing.
    """
    if len(request_body) + len(response_body) <= _LOG_BODY_BUDGET:
        return request_body, response_body
    for _ in range(2):
        if len(response_body) >= len(request_body):
            record.response_body_omitted = record.response_body_over_limit = True
            logger.warning("request %s: response body of %d bytes not logged", record.request_id, len(response_body))
            response_body = b""
        else:
            record.request_body_omitted = record.request_body_over_limit = True
            logger.warning("request %s: request body of %d bytes not logged", record.request_id, len(request_body))
            request_body = b""
        if len(request_body) + len(response_body) <= _LOG_BODY_BUDGET:
            break
    return request_body, response_body


def _error_response(provider: Provider, err: ProxyError, request_id: str | None) -> web.Response:
    headers = {"Candela-Id": request_id} if request_id else {}
    headers.update(err.headers)
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
            "gen_ai.operation.name": _operation(record.path),
            "gen_ai.request.model": record.model,
            "gen_ai.response.model": record.response_model,
            "gen_ai.usage.input_tokens": record.usage.prompt_tokens,
            "gen_ai.usage.output_tokens": record.usage.completion_tokens,
            "http.response.status_code": record.status_code,
            "candela.request_id": record.request_id,
            "candela.cache_hit": record.cache_hit,
        }
    )
    if record.finish_reason:
        span.set_attribute("gen_ai.response.finish_reasons", [record.finish_reason])
    if record.status_code >= 400 or record.error:
        span.set_status(trace.Status(trace.StatusCode.ERROR, record.error or str(record.status_code)))


def _request_trace_context() -> dict[str, str]:
    """The W3C context (traceparent, tracestate) of the current span, the LLM span, for the log to carry.

    Only trace context is taken, never baggage: whatever a client put in its baggage stays out of the log.
    """
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier


def _operation(path: str) -> str:
    if path.endswith("/embeddings"):
        return "embeddings"
    if path.endswith("/completions") and not path.endswith("/chat/completions"):
        return "text_completion"
    return "chat"
