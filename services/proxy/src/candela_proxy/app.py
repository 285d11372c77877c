"""Wiring of the proxy: dependencies, the aiohttp application, and the process's main()."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from candela.auth.v1 import auth_service_pb2_grpc
from candela.prompts.v1 import prompts_service_pb2_grpc
from candela_proxy.cache import ResponseCache
from candela_proxy.config import ProxyConfig
from candela_proxy.handler import ProxyHandler
from candela_proxy.org_pricing import PricingDirectory
from candela_proxy.prompting import PromptRenderer
from candela_proxy.ratelimit import RateLimiter
from candela_proxy.redis_store import RedisStore
from candela_proxy.shipping import LogShipper
from candela_proxy.supervisor import SlotLock, WorkerRole, adopt_orphaned_slots, metrics_exposition
from candela_proxy.targets import PolicyResolver, TargetSession
from candela_runtime.channels import internal_channel
from candela_runtime.config import load_config
from candela_runtime.lifecycle import shutdown_step, wait_for_shutdown_signal
from candela_runtime.logs import configure_logging
from candela_runtime.security import KeyAuthenticator
from candela_runtime.telemetry import setup_telemetry

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProxyDeps:
    """What the proxy talks to."""

    session: aiohttp.ClientSession
    """The operator's providers (CANDELA_OPENAI_BASE_URL, CANDELA_ANTHROPIC_BASE_URL): trusted, any address."""
    targets: TargetSession
    """Client-named targets: only public addresses or the operator's CANDELA_TARGET_HOSTS."""
    auth_channel: grpc.aio.Channel
    ingest_channel: grpc.aio.Channel
    authenticator: KeyAuthenticator
    shipper: LogShipper
    redis: RedisStore
    prompts_channel: grpc.aio.Channel | None = None
    """None when no prompts service is configured (a named prompt is then refused with 503)."""
    pricing: PricingDirectory | None = None
    """Organizations' price overrides and model aliases (None: genai-prices alone)."""


@asynccontextmanager
async def build_deps(config: ProxyConfig) -> AsyncIterator[ProxyDeps]:
    """Opens the upstream HTTP pool and the channels to auth, ingest and prompts; starts the log shipper.

    On exit the shipper sends what it still holds (within the grace period) before the channels close.
    """
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60),
        timeout=aiohttp.ClientTimeout(
            total=None, connect=config.upstream_connect_timeout_s, sock_read=config.upstream_read_timeout_s
        ),
        auto_decompress=True,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
    )
    targets = TargetSession(
        PolicyResolver(config.target_allow_list), config.upstream_connect_timeout_s, config.upstream_read_timeout_s
    )
    auth_channel = internal_channel(config.auth_addr)
    ingest_channel = internal_channel(config.ingest_addr)
    prompts_channel = internal_channel(config.prompts_addr) if config.prompts_addr else None
    shipper = LogShipper(
        ingest_channel,
        config.service_token,
        queue_size=config.log_queue_size,
        batch_size=config.log_batch_size,
        max_batch_bytes=config.log_batch_max_bytes,
        flush_interval_s=config.log_flush_interval_s,
        spool_dir=config.spool_dir,
        spool_max_bytes=config.spool_max_bytes,
        send_timeout_s=config.ingest_timeout_s,
        wal_dir=config.wal_path,
        wal_commit_interval_s=config.wal_commit_interval_s,
        hold_when_spool_full=config.refuse_when_log_full,
    )
    redis = RedisStore(config.redis_url, timeout_s=config.redis_timeout_s)
    pricing = PricingDirectory(auth_service_pb2_grpc.AuthServiceStub(auth_channel), config.service_token)
    shipper.start()
    pricing.start()
    try:
        yield ProxyDeps(
            session=session,
            targets=targets,
            auth_channel=auth_channel,
            ingest_channel=ingest_channel,
            authenticator=KeyAuthenticator(
                auth_service_pb2_grpc.AuthServiceStub(auth_channel), config.service_token, config.auth_cache_ttl_s
            ),
            shipper=shipper,
            redis=redis,
            prompts_channel=prompts_channel,
            pricing=pricing,
        )
    finally:
        await pricing.close()
        await shutdown_step("log shipper", lambda: shipper.stop(config.shutdown_grace_s), config.shutdown_grace_s + 1)
        await ingest_channel.close(None)
        if prompts_channel is not None:
            await prompts_channel.close(None)
        await auth_channel.close(None)
        await session.close()
        await targets.close()
        await redis.close()


def create_app(config: ProxyConfig, deps: ProxyDeps, tracing: bool = True) -> web.Application:
    """The aiohttp application: health and metrics endpoints, then every other path proxied.

    ``tracing`` makes a span per request (with the GenAI attributes); off when no exporter is configured.
    """
    handler = ProxyHandler(
        config,
        deps.session,
        deps.targets,
        deps.authenticator,
        deps.shipper,
        cache=ResponseCache(deps.redis),
        limiter=RateLimiter(deps.redis),
        prompts=_prompt_renderer(config, deps),
        tracing=tracing,
        pricing=deps.pricing,
    )
    app = web.Application(client_max_size=config.max_body_bytes + 1)
    role = WorkerRole.from_environ()
    ready = asyncio.Event()
    app["ready"] = ready
    app["handler"] = handler

    async def finish_background(_: web.Application) -> None:
        await handler.close()

    app.on_cleanup.append(finish_background)

    async def healthz(_: web.Request) -> web.Response:
        if not ready.is_set():
            return web.json_response({"status": "NOT_SERVING"}, status=503)
        state = {"pending_logs": deps.shipper.pending, "spool_bytes": deps.shipper.spool_bytes}
        if role is not None:
            state["worker"] = role.slot  # the state above is this worker's (see candela_proxy.supervisor)
        if reason := deps.shipper.at_risk:
            # Unhealthy (503), so an orchestrator or Envoy sends traffic to a proxy that can keep its logs
            # (with a single proxy, Envoy's panic threshold still routes to it).
            return web.json_response({"status": "LOGS_AT_RISK", "reason": reason, **state}, status=503)
        return web.json_response({"status": "SERVING", **state})

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=metrics_exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_route("*", "/{tail:.*}", handler.handle)
    return app


def _prompt_renderer(config: ProxyConfig, deps: ProxyDeps) -> PromptRenderer | None:
    if deps.prompts_channel is None:
        return None
    stub = prompts_service_pb2_grpc.PromptsServiceStub(deps.prompts_channel)
    return PromptRenderer(stub, config.service_token, config.prompts_timeout_s)


async def main() -> None:
    """Runs the proxy (alone, or as one supervised worker) until SIGTERM/SIGINT, then drains requests and logs
    in order."""
    config = load_config(ProxyConfig)
    configure_logging("candela-proxy", config.log_level)
    role = WorkerRole.from_environ()
    slot_lock = SlotLock(config.spool_dir)
    if role is None:
        await asyncio.to_thread(
            adopt_orphaned_slots, config.spool_dir, Path(config.wal_dir) if config.wal_dir else None, 1
        )
    else:
        role.follow_supervisor()
        # The slot's spool and write-ahead log are this worker's alone: a predecessor still draining them
        # (its supervisor was killed) finishes first.
        await asyncio.to_thread(slot_lock.acquire)
    telemetry = setup_telemetry("candela-proxy")
    async with build_deps(config) as deps:
        app = create_app(config, deps, tracing=bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")))
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=config.shutdown_grace_s)
        await runner.setup()
        site: web.BaseSite
        if role is None:
            site = web.TCPSite(runner, config.http_host, config.http_port, backlog=1024)
        else:
            site = web.SockSite(runner, role.listening_socket())
        await site.start()
        # Long-lived objects (modules, price tables, pools) leave the collector's view, and young
        # collections run less often: the request path allocates many short-lived objects, and cyclic GC
        # passes over the whole heap showed up as ~5% of the proxy's CPU under load.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 20)
        app["ready"].set()
        logger.info(
            "proxy%s listening on %s:%d",
            "" if role is None else f" worker {role.slot}",
            config.http_host,
            config.http_port,
        )
        await wait_for_shutdown_signal()
        app["ready"].clear()
        # Stops accepting, lets in-flight requests (and streams) finish within the grace period.
        await shutdown_step("http server", runner.cleanup, config.shutdown_grace_s + 2)
    slot_lock.release()  # the log shipper has stopped: the slot's next worker may take its directories
    telemetry.shutdown()
