"""Admission: what the proxy checks before anything goes upstream, and the refusals that answer a failed check.

In order: the write-ahead log can keep the log, the Candela headers parse, the Candela key authenticates
with the proxy scope, the targets are reachable under the address policy, the body fits the size limit
and (when JSON) names a model of a loggable length; a named prompt is rendered into it. A refusal here is
answered at once and not logged: nothing reached a provider. The rate limit is checked later, once the
request is admitted (:meth:`Admission.rate_limit`): its refusal is an answer like any other, and logged.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import orjson
from aiohttp import web

from candela.auth.v1 import auth_service_pb2 as auth_pb
from candela_proxy import binary_bodies, helicone, metrics, prompting
from candela_proxy.config import ProxyConfig
from candela_proxy.exchange import Exchange, ProxyError, error_response
from candela_proxy.headers import CandelaHeaders, HeaderError, bearer_secret, parse_candela_headers
from candela_proxy.providers import Provider, Route
from candela_proxy.ratelimit import RateLimitDecision, RateLimiter, SegmentMissing, subject
from candela_proxy.shipping import LogShipper
from candela_proxy.stream_usage import STREAM_USAGE_PATHS, usage_requested
from candela_proxy.targets import TargetRefused, TargetSession, provider_name
from candela_runtime.errors import PermissionDenied, Unauthenticated, Unavailable
from candela_runtime.limits import MAX_MODEL_NAME_LENGTH
from candela_runtime.security import KeyAuthenticator

logger = logging.getLogger(__name__)
_UNIT_NAMES = {"request": "requests", "cents": "cents"}


class Admission:
    """Admits a request (key, headers, targets, body, prompt) and applies its rate limit."""

    def __init__(
        self,
        config: ProxyConfig,
        authenticator: KeyAuthenticator,
        targets: TargetSession,
        shipper: LogShipper,
        limiter: RateLimiter | None,
        prompts: prompting.PromptRenderer | None,
    ) -> None:
        self._config = config
        self._authenticator = authenticator
        self._targets = targets
        self._shipper = shipper
        self._limiter = limiter
        self._prompts = prompts

    async def admit(self, request: web.Request, route: Route) -> Exchange:
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
        await self._check_targets(options, route)
        body = await _read_body(request, self._config.max_body_bytes)
        content_type = request.headers.get("Content-Type", "")
        exchange = Exchange(
            request_id=options.request_id or str(uuid.uuid4()),
            started_at_us=started_at_us,
            started=started,
            route=route,
            options=options,
            organization_id=caller.organization_id,
            api_key_id=caller.api_key_id,
            request_body=body,
            request_content_type=content_type,
            target_url=options.target_url or route.client_base_url,
            model=route.model,
            streamed=route.streamed,
        )
        if options.rate_limit is not None:
            try:
                exchange.rate_limit_subject = subject(
                    options.rate_limit, caller.organization_id, options.user_id, options.properties
                )
            except SegmentMissing as err:
                raise ProxyError(400, str(err), "invalid_candela_header") from None
        if body and request.method == "POST" and binary_bodies.is_json(content_type):
            try:
                document = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise ProxyError(400, "the request body is not valid JSON", "invalid_json") from None
            if isinstance(document, dict):
                if prompting.names_prompt(options, document):
                    document = await self._render_prompt(exchange, document)
                exchange.document = document
                model = document.get("model")
                exchange.model = route.model or (model if isinstance(model, str) else "")
                if len(exchange.model) > MAX_MODEL_NAME_LENGTH:
                    # Logged with the request: a longer one could make its log too large to keep.
                    raise ProxyError(
                        400, f"the model name is longer than {MAX_MODEL_NAME_LENGTH} characters", "invalid_model"
                    )
                exchange.streamed = route.streamed or document.get("stream") is True
                self._inject_stream_usage(exchange, document)
        elif options.fallbacks and any(fallback.body_overrides for fallback in options.fallbacks):
            raise ProxyError(
                400, "Candela-Fallbacks bodyKeyOverride needs a JSON object body", "invalid_candela_header"
            )
        elif body:
            # Not JSON (a multipart upload, audio, a file): passed through as is; a form names its model.
            exchange.model = binary_bodies.multipart_field(body, content_type, "model")[:MAX_MODEL_NAME_LENGTH]
        if exchange.document is None and prompting.names_prompt(options, None):
            raise ProxyError(
                400, "a named prompt is rendered into a JSON object request body", "invalid_prompt_request"
            )
        return exchange

    async def _check_targets(self, options: CandelaHeaders, route: Route) -> None:
        """Refuses (403) a Candela-Target-Url, fallback or client-chosen base URL (Azure's resource header) the
        address policy keeps the proxy from reaching."""
        main = options.target_url or route.client_base_url
        for url in (main, *(fallback.target_url for fallback in options.fallbacks)):
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
        """Asks an OpenAI-format stream for its usage chunk (unless the client chose, or Candela-Stream-Usage:
        false), hidden from the client on the way back (see :mod:`candela_proxy.stream_usage`)."""
        if not (
            exchange.streamed
            and exchange.options.stream_usage
            and exchange.route.provider is Provider.OPENAI
            and exchange.route.stream_options
            and exchange.route.openai_path in STREAM_USAGE_PATHS
        ):
            return
        requested = usage_requested(document)
        if requested is None:
            return
        exchange.upstream_body = orjson.dumps(requested)
        exchange.strip_usage_chunk = True

    async def rate_limit(self, exchange: Exchange, extra_headers: dict[str, str]) -> web.Response | None:
        """The Candela-RateLimit-Policy check: the refusal (429) when over the limit, else None; the policy's
        headers are added to ``extra_headers`` either way."""
        policy = exchange.options.rate_limit
        if policy is not None and self._limiter is not None:
            decision = await self._limiter.admit(policy, exchange.rate_limit_subject)
            if decision is not None:
                extra_headers.update(decision.headers())
                if not decision.admitted:
                    return _refuse_rate_limited(exchange, decision)
        return None


def _refuse_rate_limited(exchange: Exchange, decision: RateLimitDecision) -> web.Response:
    """The 429 of a request over its Candela-RateLimit-Policy, logged like any answer."""
    metrics.RATE_LIMITED.inc()
    exchange.status = 429
    exchange.error = f"rate limited by Candela-RateLimit-Policy {decision.policy.header_value}"
    headers = {**decision.headers(), "Retry-After": str(decision.reset_s)}
    helicone.mirror_response_headers(headers)
    err = ProxyError(
        429,
        f"Candela rate limit exceeded: {decision.limit} {_UNIT_NAMES[decision.policy.unit]} per"
        f" {decision.policy.window_s}s"
        f" (policy {decision.policy.header_value}); retry after {decision.reset_s}s",
        "candela_rate_limited",
        headers,
    )
    return error_response(exchange.route.provider, err, exchange.request_id)


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
