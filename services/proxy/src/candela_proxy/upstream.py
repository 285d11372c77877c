"""Upstream: the calls to the provider (each target retried, then the fallbacks in order) and the relay of
its answer to the client, a stream chunk by chunk as it arrives.

The client's headers go upstream minus a connection's, Candela's own and a gateway's; the provider's
come back minus a connection's. The end of a stream reaches the client only once its log is durable
(:meth:`~candela_proxy.record.Recorder.log_durably`).

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

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDictProxy
from opentelemetry import propagate
from yarl import URL

from candela.logs.v1 import log_record_pb2
from candela_proxy import bedrock, eventstream, google, metrics
from candela_proxy.exchange import Exchange, ProxyError, error_response
from candela_proxy.headers import RetryPolicy
from candela_proxy.providers import Provider
from candela_proxy.record import Recorder
from candela_proxy.response_usage import StreamFacts, facts_from_json
from candela_proxy.sse import EventSplitter, ends_stream
from candela_proxy.stream_usage import UsageChunkFilter
from candela_proxy.targets import TargetRefused, TargetSession
from candela_runtime.redaction import redact_url, redact_urls_in

logger = logging.getLogger(__name__)

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


class Upstream:
    """Forwards an admitted request and relays the answer."""

    def __init__(
        self, session: aiohttp.ClientSession, targets: TargetSession, recorder: Recorder, tracing: bool
    ) -> None:
        self._session = session
        # Client-named targets never ride on the providers' session (see candela_proxy.targets).
        self._targets = targets
        self._recorder = recorder
        self._tracing = tracing

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

    async def forward(
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
                return error_response(exchange.route.provider, err, exchange.request_id)
            status = upstream.status if upstream is not None else 0
            if index < len(fallbacks) and (upstream is None or status in fallbacks[index].on_codes):
                if upstream is not None:
                    upstream.close()
                continue
            exchange.target_url = target
            if upstream is None:
                exchange.status = 502
                return error_response(
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
            call_url: str | URL = url
            call_headers = headers
            if exchange.route.upstream_auth is not None:
                # Signed per attempt (a fresh date on each retry, the host of each target).
                call_url, call_headers = exchange.route.upstream_auth.prepare(method, url, headers, body)
            try:
                if target:
                    upstream = await self._targets.request(method, call_url, data=body, headers=call_headers)
                else:
                    upstream = await self._session.request(method, call_url, data=body, headers=call_headers)
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
        reply_headers["Candela-Id"] = reply_headers["Helicone-Id"] = exchange.request_id
        reply_headers.update(extra_headers)
        exchange.response_content_type = upstream.headers.get("Content-Type", "")
        try:
            if upstream.content_type == "text/event-stream":
                return await self._relay_stream(request, upstream, reply_headers, exchange)
            if upstream.content_type == eventstream.CONTENT_TYPE:
                return await eventstream.relay_event_stream(request, upstream, reply_headers, exchange, self._recorder)
            if google.is_json_array_stream(exchange, upstream):
                return await google.relay_json_array(request, upstream, reply_headers, exchange, self._recorder)
            try:
                body = await upstream.read()
            except (aiohttp.ClientError, TimeoutError) as err:
                exchange.status = 502
                exchange.error = f"upstream failed mid-answer: {type(err).__name__}: {err}"
                return error_response(
                    exchange.route.provider,
                    ProxyError(502, "the provider stopped answering mid-response", "upstream_failed"),
                    exchange.request_id,
                )
            exchange.response_chunks.append(body)
            if exchange.route.provider is Provider.BEDROCK:
                exchange.facts = bedrock.response_facts(exchange.route, body, upstream.headers)
            else:
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
        """Writes the stream to the client event by event as it arrives, reading usage on the way (and
        leaving out the usage chunk a client did not ask for).

        The event that tells a client its stream is over (``data: [DONE]``, ``message_stop``) and whatever
        follows it reach the client only once the log is durable, with the end of the response: SDKs stop
        reading at that event, so a client holding it was answered.
        """
        exchange.streamed = True
        response = web.StreamResponse(status=upstream.status, headers=reply_headers)
        await response.prepare(request)
        stream = StreamFacts(exchange.route.provider)
        splitter = EventSplitter()
        hidden = UsageChunkFilter() if exchange.strip_usage_chunk else None
        held: list[bytes] = []
        try:
            async for chunk in upstream.content.iter_any():
                if exchange.first_byte is None:
                    exchange.first_byte = time.perf_counter()
                events = splitter.feed(chunk)
                for event in events:
                    stream.observe(event)
                shown = events if hidden is None else hidden.keep(events)
                if held:
                    held += shown
                    continue
                end = next((index for index, event in enumerate(shown) if ends_stream(event)), len(shown))
                shown, held = shown[:end], shown[end:]
                if shown:
                    data = b"".join(shown)
                    exchange.response_chunks.append(data)
                    await response.write(data)
            tail = splitter.finish()
            if tail:
                stream.observe(tail)
                if hidden is None or (tail := hidden.keep_tail(tail)):
                    held.append(tail)
            exchange.response_chunks += held
            exchange.facts = stream.facts
            exchange.complete = True
            # Should the client leave during the last writes, it already had every byte of the answer but
            # the end: the log says complete.
            await self._recorder.log_durably(exchange)
            if held:
                await response.write(b"".join(held))
            await response.write_eof()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            exchange.error = "client disconnected mid-stream"
            logger.info("request %s: %s", exchange.request_id, exchange.error)
        except (aiohttp.ClientError, TimeoutError) as err:
            exchange.error = f"upstream failed mid-stream: {type(err).__name__}: {err}"
            logger.warning("request %s: %s", exchange.request_id, exchange.error)
        finally:
            if exchange.record is None:
                # Cut short: what the unfinished event says counts too.
                if tail := splitter.finish():
                    stream.observe(tail)
                exchange.facts = stream.facts
        return response


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
