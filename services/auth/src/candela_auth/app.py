"""Wiring of the auth service: dependencies, server, and the process's main()."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg

from candela.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from candela_auth.config import AuthConfig
from candela_auth.pricing import NOTIFY_CHANNEL, PricingWatchers
from candela_auth.pricing_store import PricingStore
from candela_auth.service import AuthServicer
from candela_auth.store import AuthStore
from candela_runtime.config import load_config
from candela_runtime.grpc_server import GrpcServer, create_grpc_server
from candela_runtime.lifecycle import serve_until_signal
from candela_runtime.logs import configure_logging
from candela_runtime.telemetry import setup_telemetry

SERVICE_NAME = auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name


@dataclass(frozen=True)
class AuthDeps:
    """What the auth service talks to."""

    pool: asyncpg.Pool
    pricing_watchers: PricingWatchers
    """The WatchPricing streams, fed by this replica's writes and by LISTEN on the others'."""


@asynccontextmanager
async def build_deps(config: AuthConfig) -> AsyncIterator[AuthDeps]:
    """Opens the Postgres pool (failing fast if Postgres is unreachable) and a connection that LISTENs for
    pricing changes made through other replicas; closes both on exit."""
    pool = await asyncpg.create_pool(config.postgres_dsn, min_size=1, max_size=config.postgres_pool_size)
    watchers = PricingWatchers()
    try:
        listener = await asyncpg.connect(config.postgres_dsn)
        try:
            await listener.add_listener(NOTIFY_CHANNEL, watchers.on_postgres_notice)
            yield AuthDeps(pool=pool, pricing_watchers=watchers)
        finally:
            await listener.close()
    finally:
        await pool.close()


async def create_server(config: AuthConfig, deps: AuthDeps) -> GrpcServer:
    """The auth gRPC server, started and NOT_SERVING until the caller marks it ready."""
    servicer = AuthServicer(
        AuthStore(deps.pool),
        config.service_token,
        PricingStore(deps.pool, deps.pricing_watchers.replica_id),
        deps.pricing_watchers,
    )
    return await create_grpc_server(
        host=config.grpc_host,
        port=config.grpc_port,
        service_names=[SERVICE_NAME],
        registrars=[lambda server: auth_service_pb2_grpc.add_AuthServiceServicer_to_server(servicer, server)],
    )


async def main() -> None:
    """Runs the auth service until SIGTERM/SIGINT."""
    config = load_config(AuthConfig)
    configure_logging("candela-auth", config.log_level)
    telemetry = setup_telemetry("candela-auth")
    async with build_deps(config) as deps:
        server = await create_server(config, deps)
        await serve_until_signal(server, config.shutdown_grace_s)
    telemetry.shutdown()
