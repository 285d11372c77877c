"""The proxy's request path, top to bottom: admit, limit, look in the cache, forward, record.

Each step lives in a room of its own: :mod:`candela_proxy.admission` (the key, the headers, the body and
the rate limit, and their refusals), :mod:`candela_proxy.upstream` (the attempts, retries, fallbacks and
the relay of the answer, streamed back untouched) and :mod:`candela_proxy.record` (the log record, handed
to shipping and durable before the client sees the end of its answer). This module holds them together,
with the cache and the LLM span.

Errors Candela itself raises are JSON in the provider's own error shape so the SDK raises its usual
exception; the provider's own errors pass through unchanged (and are logged like any answer).
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from candela_proxy import bedrock, eventstream, genai_telemetry, google, helicone, metrics, prompting
from candela_proxy.admission import Admission
from candela_proxy.cache import CachedAnswer, ResponseCache, cache_key
from candela_proxy.config import ProxyConfig
from candela_proxy.exchange import Exchange, ProxyError, error_response
from candela_proxy.named_routes import NamedRoutes
from candela_proxy.org_pricing import OrganizationPricing, PricingDirectory
from candela_proxy.providers import Provider, Route, resolve_route
from candela_proxy.ratelimit import RateLimiter
from candela_proxy.record import Recorder
from candela_proxy.response_usage import ResponseFacts
from candela_proxy.shipping import LogShipper
from candela_proxy.targets import TargetSession
from candela_proxy.upstream import Upstream
from candela_runtime.redaction import redact_url
from candela_runtime.security import KeyAuthenticator

tracer = trace.get_tracer("candela.proxy")
_W3C = TraceContextTextMapPropagator()


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
        pricing: PricingDirectory | None = None,
    ) -> None:
        self._config = config
        self._pricing = pricing
        self._cache = cache
        self._admission = Admission(config, authenticator, targets, shipper, limiter, prompts)
        self._recorder = Recorder(
            shipper, cache, limiter, tracing, config.log_binary_body_max_bytes, config.pricing_wait_s
        )
        self._named_routes = NamedRoutes(config)
        self._upstream = Upstream(session, targets, self._recorder, tracing)
        # Spans cost ~50 us a request; without an exporter nobody sees them, so none are made (the client's
        # traceparent still reaches the provider, as every other header does).
        self._tracing = tracing
        self._genai_metrics = genai_telemetry.GenAIMetrics() if tracing else None

    async def close(self) -> None:
        """Waits for the cache writes and rate-limit counts still under way."""
        await self._recorder.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Proxies one request; always answers, and logs every request Candela accepted."""
        config = self._config
        try:
            route = self._named_routes.resolve(request.path, request.query_string, request.headers)
        except ProxyError as err:
            metrics.count_request(Provider.OPENAI.value, None, err.status)
            return error_response(Provider.OPENAI, err, None)
        route = (
            route
            or google.resolve_google_route(
                request.path, request.query_string, config.gemini_base_url, config.vertex_base_url
            )
            or resolve_route(request.path, request.query_string, config.openai_base_url, config.anthropic_base_url)
        )
        if route is None and bedrock.serves(request.path):
            try:
                route = bedrock.resolve_route(request, config)
            except ProxyError as err:
                metrics.count_request(Provider.BEDROCK.value, None, err.status)
                return error_response(Provider.BEDROCK, err, None)
        if route is None:
            provider = Provider.ANTHROPIC if request.path.startswith("/anthropic") else Provider.OPENAI
            if google.is_google_path(request.path):
                provider = Provider.GOOGLE
            metrics.count_request(provider.value, None, 404)
            return error_response(
                provider,
                ProxyError(
                    404,
                    f"no provider serves {request.path}; use /v1/..., /openai/v1/..., /anthropic/v1/...,"
                    " /gemini/v1beta/... or /vertex/v1/projects/{project}/locations/{location}/...",
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
            f"{genai_telemetry.operation_name(route.provider_path)} {route.provider_path}",
            context=_W3C.extract(request.headers),
            kind=trace.SpanKind.CLIENT,
            attributes=genai_telemetry.route_attributes(route),
        ) as span:
            return await self._admit_and_serve(request, route, span)

    async def _admit_and_serve(self, request: web.Request, route: Route, span: trace.Span | None) -> web.StreamResponse:
        """Admits, serves and logs one request; ``span`` (when tracing) is the LLM span to annotate."""
        try:
            exchange = await self._admission.admit(request, route)
        except ProxyError as err:
            metrics.count_request(route.provider_name, route, err.status)
            if span is not None:
                span.set_attributes({"http.response.status_code": err.status, "error.type": str(err.status)})
                span.set_status(trace.Status(trace.StatusCode.ERROR, err.code))
            return error_response(route.provider, err, None)
        except ConnectionResetError:
            # The client left before its request arrived whole: nothing reached a provider, nothing to log.
            return web.Response(status=400)
        if self._pricing is not None:
            # Cached per organization until AuthService says it changed (see candela_proxy.org_pricing); when
            # not, fetched while the request is served, and awaited (bounded) only to price its log.
            pricing = self._pricing.lookup(exchange.organization_id)
            if isinstance(pricing, OrganizationPricing):
                exchange.pricing = pricing
            else:
                exchange.pricing_fetch = pricing
        if span is not None and exchange.model:
            span.update_name(f"{genai_telemetry.operation_name(route.provider_path)} {exchange.model}")
        try:
            response = await self._serve(request, exchange)
            # aiohttp writes a non-streamed answer after this returns, so its log is durable first; a
            # stream's last write waits for it in _relay_stream / _replay_cached.
            await self._recorder.log_durably(exchange)
            _add_cost_header(response, exchange)
            return response
        except asyncio.CancelledError:
            exchange.error = exchange.error or "client disconnected"
            raise
        finally:
            # No answer went out whole (an error, a client gone): the log is kept without waiting for it.
            record = exchange.record if exchange.record is not None else self._recorder.finish(exchange)
            recording = span is not None and span.is_recording()
            if recording or self._genai_metrics is not None:
                common = genai_telemetry.common_attributes(exchange, record)
                if span is not None and recording:
                    genai_telemetry.annotate_span(span, exchange, record, common)
                if self._genai_metrics is not None:
                    self._genai_metrics.record(exchange, record, common)

    async def _serve(self, request: web.Request, exchange: Exchange) -> web.StreamResponse:
        extra_headers: dict[str, str] = {}
        refusal = await self._admission.rate_limit(exchange, extra_headers)
        if refusal is not None:
            return refusal
        cache_policy = exchange.options.cache
        if cache_policy is not None and self._cache is not None:
            exchange.cache_key = cache_key(
                exchange.organization_id,
                cache_policy,
                request.method,
                # Without a key in the URL (Gemini's ?key=): the provider key is never part of the cache key.
                redact_url(
                    exchange.route.url_at(exchange.target_url) if exchange.target_url else exchange.route.upstream_url
                ),
                exchange.request_body,
                request.headers,
            )
            answer = await self._cache.lookup(exchange.cache_key, cache_policy)
            metrics.CACHE_LOOKUPS.labels("hit" if answer is not None else "miss").inc()
            if answer is not None:
                extra_headers["Candela-Cache"] = "HIT"
                helicone.mirror_response_headers(extra_headers)
                return await self._replay_cached(request, exchange, answer, extra_headers)
            extra_headers["Candela-Cache"] = "MISS"
        metrics.OVERHEAD.observe(time.perf_counter() - exchange.started)
        helicone.mirror_response_headers(extra_headers)
        return await self._upstream.forward(request, exchange, extra_headers)

    async def _replay_cached(
        self, request: web.Request, exchange: Exchange, answer: CachedAnswer, extra_headers: dict[str, str]
    ) -> web.StreamResponse:
        """Answers from the cache exactly as the provider answered the first time (SSE replayed as SSE)."""
        exchange.cache_hit = True
        exchange.status = answer.status
        exchange.streamed = answer.streamed
        exchange.facts = ResponseFacts.from_dict(answer.facts)
        exchange.cost_saved_usd = answer.cost_usd
        exchange.response_content_type = answer.content_type
        exchange.response_chunks.append(answer.body)
        if answer.content_type == eventstream.CONTENT_TYPE:
            exchange.response_log = eventstream.readable(answer.body)
        headers = {
            "Content-Type": answer.content_type,
            "Candela-Id": exchange.request_id,
            "Helicone-Id": exchange.request_id,
            **extra_headers,
        }
        if not answer.streamed:
            exchange.complete = True
            return web.Response(body=answer.body, status=answer.status, headers=headers)
        response = web.StreamResponse(status=answer.status, headers=headers)
        await response.prepare(request)
        exchange.first_byte = time.perf_counter()
        await response.write(answer.body)
        exchange.complete = True
        await self._recorder.log_durably(exchange)
        await response.write_eof()
        return response


def _add_cost_header(response: web.StreamResponse, exchange: Exchange) -> None:
    """Candela-Cost-Usd on a non-streamed answer with a known cost, the decimal string the log stores (a
    stream's headers left before its usage was known: its cost is in the log only)."""
    record = exchange.record
    if record is not None and record.cost_usd and not response.prepared:
        response.headers["Candela-Cost-Usd"] = record.cost_usd
