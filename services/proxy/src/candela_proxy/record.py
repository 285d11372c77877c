"""The record: the log of a request built from its exchange, handed to shipping, and what follows it.

Nothing here waits for ingest: the finished record is handed to :mod:`candela_proxy.shipping`, and the
request waits only for it to be durable in the proxy's write-ahead log (one group-committed fsync), before
the client can see the end of its answer: a client that got a whole answer and its ``Candela-Id`` will
find the log, even if the proxy is killed right after. Storing an answer in the cache and counting a cents
rate limit happen in owned background tasks after the answer is sent.

The organization's pricing, when it was not cached, has been fetched since admission (while the provider
answered); the log waits for it at most ``pricing_wait_s`` and only when there is a cost to compute. A
fetch still under way then leaves the log unpriced (counted in ``candela_proxy_pricing_late``), as a
fetch that failed does: never priced without the organization's overrides, and never holding the client's
answer longer than the bound. The ``Candela-Cost-Usd`` header is the log's cost, so it is absent then too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from decimal import Decimal
from typing import Any

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from candela.ingest.v1 import ingest_service_pb2
from candela.logs.v1 import log_record_pb2
from candela_proxy import binary_bodies, metrics, pricing
from candela_proxy.cache import CachedAnswer, ResponseCache
from candela_proxy.exchange import Exchange
from candela_proxy.org_pricing import PRICING_UNAVAILABLE, OrganizationPricing
from candela_proxy.ratelimit import RateLimiter
from candela_proxy.shipping import LogShipper
from candela_proxy.targets import provider_name
from candela_runtime.limits import MAX_RECORD_BYTES, MAX_RECORD_METADATA_BYTES
from candela_runtime.redaction import redact_url, redact_urls_in

logger = logging.getLogger(__name__)
_W3C = TraceContextTextMapPropagator()
# The bodies one log may carry: ingest's limit on a whole log, less its largest metadata and the fields' keys
# and lengths.
_LOG_BODY_BUDGET = MAX_RECORD_BYTES - MAX_RECORD_METADATA_BYTES - 64


class Recorder:
    """Builds each request's log record, hands it to shipping, and runs what follows an answer."""

    def __init__(
        self,
        shipper: LogShipper,
        cache: ResponseCache | None,
        limiter: RateLimiter | None,
        tracing: bool,
        binary_body_max_bytes: int = 1 << 20,
        pricing_wait_s: float = 1.0,
    ) -> None:
        self._shipper = shipper
        self._pricing_wait_s = pricing_wait_s
        self._binary_body_max_bytes = binary_body_max_bytes
        self._cache = cache
        self._limiter = limiter
        self._tracing = tracing
        self._background: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """Waits for the cache writes and rate-limit counts still under way."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def log_durably(self, exchange: Exchange) -> None:
        """Builds and hands over the log record (once), then waits until it is durable; first waits, at most
        ``pricing_wait_s``, for the organization's pricing if it is still being fetched and the record has a
        cost to compute."""
        if exchange.record is None:
            fetch = exchange.pricing_fetch
            if fetch is not None and not fetch.done() and _priced(exchange):
                # asyncio.wait neither cancels the shared fetch at the timeout nor when this request is.
                await asyncio.wait((fetch,), timeout=self._pricing_wait_s)
            self.finish(exchange)
        if exchange.durable is not None:
            # Shielded: the future is shared by a whole group commit, and this request may be cancelled.
            await asyncio.shield(exchange.durable)

    def finish(self, exchange: Exchange) -> log_record_pb2.LogRecord:
        """Builds the log record and hands it over (``exchange.durable`` says when it is on disk); schedules
        the cache write and the cents count. Never waits: pricing still being fetched leaves it unpriced."""
        finished = time.perf_counter()
        options = exchange.options
        facts = exchange.facts
        # The record, and the span made from it, never carry a URL's credentials (userinfo, `?key=`).
        target = redact_url(exchange.target_url)
        route = exchange.route
        # A named provider (Azure, Groq, Vertex AI, ...) stays named and priced as itself, whatever base URL it
        # went to; a custom target is named by Candela-Target-Provider, else its host.
        provider = route.label or (
            (options.target_provider or provider_name(target)) if target else route.provider.value
        )
        model = options.model_override or exchange.model or facts.response_model
        fields: dict[str, Any] = dict(
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
            properties=_properties(exchange),
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
        # Only the fields with a value: proto3 stores none of the empty ones anyway (none of these has
        # presence), and the constructor is far slower with them: an empty map goes through
        # MutableMapping.update in Python. 20 us a request with every field, 4 us with the set ones.
        record = log_record_pb2.LogRecord(**{name: value for name, value in fields.items() if value})
        if self._tracing:
            record.trace_id = format(trace.get_current_span().get_span_context().trace_id, "032x")
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
            price_id, api_url = (route.price_id, "") if route.label else (route.provider.value, target)
            cost = pricing.cost_usd(
                price_id,
                options.model_override or facts.response_model or model,
                facts,
                api_url,
                requested_model=model,
                logged_provider=provider,
                organization=_organization_pricing(exchange),
                request_service_tier=_requested_service_tier(exchange),
            )
            if cost is not None:
                record.cost_usd = format(cost, "f")
        response_body = b"".join(exchange.response_chunks)
        limit = self._binary_body_max_bytes
        request_body = binary_bodies.loggable(exchange.request_body, exchange.request_content_type, limit)
        stored_request, stored_response = _within_log_limit(
            record,
            b"" if options.omit_request else request_body,
            b"" if options.omit_response else _logged_response(exchange, response_body, limit),
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
            exchange.route,
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


def _priced(exchange: Exchange) -> bool:
    """Whether the record gets a cost that may depend on the organization's pricing (a cache hit's is the
    cached one; without usage, or with a clamped one, there is none)."""
    return bool(exchange.status) and not exchange.cache_hit and exchange.facts.has_usage and not exchange.facts.clamped


def _organization_pricing(exchange: Exchange) -> OrganizationPricing | None:
    """The organization's pricing as the record is priced: the cached one, or its fetch's answer if in."""
    fetch = exchange.pricing_fetch
    if fetch is None:
        return exchange.pricing
    if not fetch.done():
        if _priced(exchange):
            metrics.PRICING_LATE.inc()
        return PRICING_UNAVAILABLE
    # Cancelled: the proxy is stopping; an error is logged by the directory (PricingDirectory._fetch_ended).
    if fetch.cancelled() or fetch.exception() is not None:
        return PRICING_UNAVAILABLE
    return fetch.result()


def _requested_service_tier(exchange: Exchange) -> str:
    """The ``service_tier`` the request asked for, priced when the answer does not say which one served."""
    tier = exchange.document.get("service_tier") if exchange.document is not None else None
    return tier if isinstance(tier, str) else ""


def _properties(exchange: Exchange) -> dict[str, str]:
    """The client's properties, plus those of the path (an Azure deployment) and of non-JSON bodies."""
    extra = binary_bodies.content_type_properties(exchange.request_content_type, exchange.response_content_type)
    if not extra and not exchange.route.properties:
        return exchange.options.properties
    return {**exchange.options.properties, **dict(exchange.route.properties), **extra}


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


def _logged_response(exchange: Exchange, response_body: bytes, limit: int) -> bytes:
    """What the log keeps of the response: its readable form when it has one (see Exchange.response_log),
    else the body, a binary one only up to ``limit``."""
    if exchange.response_log is not None:
        return exchange.response_log
    return binary_bodies.loggable(response_body, exchange.response_content_type, limit)


def _request_trace_context() -> dict[str, str]:
    """The W3C context (traceparent, tracestate) of the current span, the LLM span, for the log to carry.

    Only trace context is taken, never baggage: whatever a client put in its baggage stays out of the log.
    """
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier
