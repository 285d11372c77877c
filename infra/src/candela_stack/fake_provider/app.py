"""The fake's server: the provider APIs it serves, the filter every provider request goes through
(recorded, its ``x-fake-*`` scenario parsed, a simulated failure answered, a rejected request mapped to
the provider's error body), the control plane, and the command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from aiohttp import web
from aiohttp.typedefs import Handler

from candela_runtime.redaction import redact_query
from candela_stack.fake_provider import (
    anthropic_messages,
    azure_openai,
    bedrock,
    gemini,
    models,
    openai_audio,
    openai_chat,
    openai_completions,
    openai_embeddings,
    openai_files,
    openai_images,
    openai_responses,
)
from candela_stack.fake_provider.errors import error_response, simulated_error_response
from candela_stack.fake_provider.recording import (
    CREDENTIAL_HEADERS,
    DEFAULT_MAX_RECORDED,
    RecordedRequest,
    redacted_credential,
)
from candela_stack.fake_provider.scenario import (
    HEADER_ERROR_MESSAGE,
    HEADER_FAIL_TIMES,
    HEADER_KEY,
    HEADER_RETRY_AFTER,
    HEADER_STATUS,
    SCENARIO_KEY,
    Scenario,
    header_int,
)
from candela_stack.fake_provider.wire import FakeRequestError, request_flavor

logger = logging.getLogger(__name__)


class ProviderApi(Protocol):
    """One provider API: a module of this package that serves its paths."""

    def add_routes(self, router: web.UrlDispatcher) -> None:
        """Serve this API's paths on ``router``."""


PROVIDER_APIS: Final[tuple[ProviderApi, ...]] = (
    openai_chat,
    openai_completions,
    openai_embeddings,
    openai_responses,
    openai_audio,
    openai_images,
    openai_files,
    anthropic_messages,
    bedrock,
    gemini,
    models,
    azure_openai,
)
"""The provider APIs served (under ``/v1``; Azure's under ``/openai``), each a module with
``add_routes(router)``: a new provider API is one more module here."""

LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass
class FakeProviderState:
    """Per-app mutable state: the request log and the simulated-failure counters."""

    delay_ms: float = 0.0
    max_recorded: int = DEFAULT_MAX_RECORDED
    requests: deque[RecordedRequest] = field(default_factory=deque)
    failures_served: dict[str, int] = field(default_factory=dict)

    def record(self, request: web.Request, body: bytes) -> None:
        """Append a request to the log, dropping the oldest beyond ``max_recorded``."""
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query_string=redact_query(request.query_string),
                headers=tuple(
                    (name, redacted_credential(value) if name.lower() in CREDENTIAL_HEADERS else value)
                    for name, value in request.headers.items()
                ),
                body=body,
                received_at=time.time(),
            )
        )
        while len(self.requests) > self.max_recorded:
            self.requests.popleft()

    def simulated_failure(self, headers: Mapping[str, str]) -> int | None:
        """The error status this request must get per ``x-fake-status``/``x-fake-fail-times``, if any."""
        status_given = HEADER_STATUS in headers
        if not status_given and HEADER_FAIL_TIMES not in headers:
            return None
        status = header_int(headers, HEADER_STATUS, 500)
        if not 400 <= status <= 599:
            raise FakeRequestError(f"{HEADER_STATUS} must be an HTTP error status (400-599), got {status}.")
        if HEADER_FAIL_TIMES not in headers:
            return status
        fail_times = header_int(headers, HEADER_FAIL_TIMES, 0)
        key = headers.get(HEADER_KEY, "")
        served = self.failures_served.get(key, 0)
        if served >= fail_times:
            return None
        self.failures_served[key] = served + 1
        return status


STATE_KEY: Final = web.AppKey("fake_provider_state", FakeProviderState)


async def healthz(request: web.Request) -> web.StreamResponse:
    """``GET /healthz``: 200 while serving."""
    return web.json_response({"status": "ok"})


async def get_recorded_requests(request: web.Request) -> web.StreamResponse:
    """``GET /_fake/requests``: every recorded provider request, oldest first.

    ``?header=name:value`` (repeatable) keeps only requests carrying those header values, so a test that
    looks for its own requests is not handed every large body other tests sent.
    """
    state = request.app[STATE_KEY]
    wanted = [item.partition(":") for item in request.query.getall("header", [])]
    matching = [
        recorded for recorded in state.requests if all(recorded.header(name) == value for name, _, value in wanted)
    ]
    return web.json_response([recorded.to_json() for recorded in matching])


async def clear_recorded_requests(request: web.Request) -> web.StreamResponse:
    """``DELETE /_fake/requests``: forget the recorded requests."""
    request.app[STATE_KEY].requests.clear()
    return web.Response(status=204)


def _is_control_path(path: str) -> bool:
    return path == "/healthz" or path.startswith("/_fake/")


@web.middleware
async def provider_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Record provider requests, apply the ``x-fake-*`` scenario and map FakeRequestError to error bodies."""
    if _is_control_path(request.path):
        return await handler(request)
    state = request.app[STATE_KEY]
    state.record(request, await request.read())
    flavor = request_flavor(request)
    try:
        request[SCENARIO_KEY] = Scenario.from_headers(request.headers, default_delay_ms=state.delay_ms)
        status = state.simulated_failure(request.headers)
        if status is not None:
            return simulated_error_response(
                flavor, status, request.headers.get(HEADER_ERROR_MESSAGE), request.headers.get(HEADER_RETRY_AFTER)
            )
        return await handler(request)
    except FakeRequestError as error:
        return error_response(flavor, error.status, error.message, param=error.param, code=error.code)


def create_app(*, delay_ms: float = 0.0, max_recorded: int = DEFAULT_MAX_RECORDED) -> web.Application:
    """Build the fake provider app; ``delay_ms`` paces streams unless a request sets x-fake-delay-ms."""
    app = web.Application(middlewares=[provider_middleware], client_max_size=64 * 1024 * 1024)
    app[STATE_KEY] = FakeProviderState(delay_ms=delay_ms, max_recorded=max_recorded)
    app[openai_files.STORE_KEY] = openai_files.FileStore()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/_fake/requests", get_recorded_requests)
    app.router.add_delete("/_fake/requests", clear_recorded_requests)
    for api in PROVIDER_APIS:
        api.add_routes(app.router)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


async def not_found(request: web.Request) -> web.StreamResponse:
    """Any other path: 404 in the provider's shape."""
    flavor = request_flavor(request)
    if flavor == "anthropic":
        return error_response(flavor, 404, "Not Found")
    if flavor == "bedrock":
        return error_response(
            flavor, 404, f"Unknown operation {request.method} {request.path}", code="UnknownOperationException"
        )
    if flavor == "google":
        return error_response(flavor, 404, f"Method not found: {request.method} {request.path}")
    return error_response(flavor, 404, f"Invalid URL ({request.method} {request.path})")


async def serve(host: str, port: int, *, delay_ms: float = 0.0) -> None:
    """Serve the fake provider on host:port until SIGTERM or SIGINT, then shut down cleanly."""
    runner = web.AppRunner(create_app(delay_ms=delay_ms), access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(stop_signal, stop.set)
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = runner.addresses[0][1] if runner.addresses else port
        logger.info("fake provider listening on http://%s:%d", host, bound_port)
        await stop.wait()
        logger.info("fake provider stopping")
    finally:
        for stop_signal in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(stop_signal)
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m candela_stack.fake_provider --port P [--host 127.0.0.1] [--delay-ms MS]``."""
    parser = argparse.ArgumentParser(
        prog="python -m candela_stack.fake_provider", description="Local fake OpenAI/Anthropic provider."
    )
    parser.add_argument("--port", type=int, required=True, help="TCP port (0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="pause before each streamed delta")
    args = parser.parse_args(argv)
    if args.host not in LOOPBACK_HOSTS:
        parser.error(f"--host must be a loopback address ({', '.join(sorted(LOOPBACK_HOSTS))}), got {args.host}")
    if args.delay_ms < 0:
        parser.error("--delay-ms must be non-negative")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args.host, args.port, delay_ms=args.delay_ms))
