"""Wiring of the prompts service: dependencies, server, and the process's main()."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
import grpc

from candela.auth.v1 import auth_service_pb2_grpc
from candela.prompts.v1 import prompts_service_pb2, prompts_service_pb2_grpc
from candela_prompts.config import PromptsConfig
from candela_prompts.service import PromptsServicer
from candela_runtime.channels import internal_channel
from candela_runtime.config import load_config
from candela_runtime.grpc_server import GrpcServer, create_grpc_server
from candela_runtime.lifecycle import serve_until_signal
from candela_runtime.logs import configure_logging
from candela_runtime.security import KeyAuthenticator
from candela_runtime.telemetry import setup_telemetry

SERVICE_NAME = prompts_service_pb2.DESCRIPTOR.services_by_name["PromptsService"].full_name


@dataclass(frozen=True)
class PromptsDeps:
    """What the prompts service talks to."""

    pool: asyncpg.Pool
    auth_channel: grpc.aio.Channel
    authenticator: KeyAuthenticator


@asynccontextmanager
async def build_deps(config: PromptsConfig) -> AsyncIterator[PromptsDeps]:
    """Opens the Postgres pool and the channel to auth; closes both on exit."""
    pool = await asyncpg.create_pool(config.postgres_dsn, min_size=1, max_size=config.postgres_pool_size)
    channel = internal_channel(config.auth_addr)
    try:
        authenticator = KeyAuthenticator(
            auth_service_pb2_grpc.AuthServiceStub(channel), config.service_token, ttl_s=config.key_cache_ttl_s
        )
        yield PromptsDeps(pool=pool, auth_channel=channel, authenticator=authenticator)
    finally:
        await channel.close(None)
        await pool.close()


async def create_server(config: PromptsConfig, deps: PromptsDeps) -> GrpcServer:
    """The prompts gRPC server, started and NOT_SERVING until the caller marks it ready."""
    servicer = PromptsServicer(deps.pool, deps.authenticator, config.service_token)
    return await create_grpc_server(
        host=config.grpc_host,
        port=config.grpc_port,
        service_names=[SERVICE_NAME],
        registrars=[lambda server: prompts_service_pb2_grpc.add_PromptsServiceServicer_to_server(servicer, server)],
    )


async def main() -> None:
    """Runs the prompts service until SIGTERM/SIGINT."""
    config = load_config(PromptsConfig)
    configure_logging("candela-prompts", config.log_level)
    telemetry = setup_telemetry("candela-prompts")
    async with build_deps(config) as deps:
        server = await create_server(config, deps)
        await serve_until_signal(server, config.shutdown_grace_s)
    telemetry.shutdown()
