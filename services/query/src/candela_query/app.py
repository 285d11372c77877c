"""Wiring of the query service: dependencies, server, and the process's main()."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc

from candela.auth.v1 import auth_service_pb2_grpc
from candela.ingest.v1 import ingest_service_pb2_grpc
from candela.query.v1 import query_service_pb2, query_service_pb2_grpc
from candela_query.body_reader import BodyReader
from candela_query.clickhouse import ClickHouseReader, ClusterMember, cluster_members
from candela_query.config import QueryConfig
from candela_query.scores import ScoreWriter
from candela_query.service import QueryServicer
from candela_query.store import RequestStore
from candela_query.usage_reader import UsageReader
from candela_runtime.channels import internal_channel
from candela_runtime.config import load_config
from candela_runtime.grpc_server import GrpcServer, create_grpc_server
from candela_runtime.lifecycle import serve_until_signal
from candela_runtime.logs import configure_logging
from candela_runtime.security import KeyAuthenticator
from candela_runtime.telemetry import setup_telemetry

SERVICE_NAME = query_service_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name


@dataclass(frozen=True)
class QueryDeps:
    """What the query service talks to."""

    clickhouse: ClickHouseReader
    bodies: BodyReader
    auth_channel: grpc.aio.Channel
    authenticator: KeyAuthenticator
    usage: UsageReader | None = None
    ingest: ingest_service_pb2_grpc.IngestServiceAsyncStub | None = None
    """Where submitted scores go (None: the service was started without an ingest address)."""
    clickhouse_members: list[ClusterMember] | None = None
    """In cluster mode, each member of the cluster read directly (the copy-free proofs read their parts)."""


@asynccontextmanager
async def build_deps(config: QueryConfig) -> AsyncIterator[QueryDeps]:
    """Connects to ClickHouse, S3 and auth, checking the stores answer; closes them on exit."""
    clickhouse = ClickHouseReader(
        config.clickhouse_host,
        config.clickhouse_port,
        config.clickhouse_database,
        config.clickhouse_connections,
        user=config.clickhouse_user,
        password=config.clickhouse_password,
        cluster=config.clickhouse_cluster,
        alt_members=config.clickhouse_alt_members,
        member_retry_s=config.clickhouse_member_retry_s,
    )
    bodies = BodyReader(
        config.s3_endpoint, config.s3_access_key, config.s3_secret_key, config.s3_bucket, config.s3_region
    )
    channel = internal_channel(config.auth_addr)
    ingest_channel = internal_channel(config.ingest_addr) if config.ingest_addr else None
    usage: UsageReader | None = None
    members: list[ClusterMember] = []
    try:
        await clickhouse.fetch("SELECT 1", {})
        if config.clickhouse_cluster:
            members = await cluster_members(
                clickhouse,
                config.clickhouse_cluster,
                config.clickhouse_database,
                # Only the proofs' small reads of parts and counts go to a member directly.
                connections=2,
                user=config.clickhouse_user,
                password=config.clickhouse_password,
            )
        await bodies.check()
        if config.postgres_dsn:
            usage = await UsageReader.connect(config.postgres_dsn)
        authenticator = KeyAuthenticator(auth_service_pb2_grpc.AuthServiceStub(channel), config.service_token)
        yield QueryDeps(
            clickhouse=clickhouse,
            bodies=bodies,
            auth_channel=channel,
            authenticator=authenticator,
            usage=usage,
            ingest=ingest_service_pb2_grpc.IngestServiceStub(ingest_channel) if ingest_channel else None,
            clickhouse_members=members if config.clickhouse_cluster else None,
        )
    finally:
        for member in members:
            member.reader.close()
        if usage is not None:
            await usage.close()
        if ingest_channel is not None:
            await ingest_channel.close(None)
        await channel.close(None)
        clickhouse.close()


async def create_server(config: QueryConfig, deps: QueryDeps) -> GrpcServer:
    """The query gRPC server, started and NOT_SERVING until the caller marks it ready."""
    servicer = QueryServicer(
        RequestStore(deps.clickhouse, final=config.clickhouse_final, cluster_members=deps.clickhouse_members),
        deps.bodies,
        deps.authenticator,
        max_page_size=config.max_page_size,
        # Cursors are signed with a key derived from the service token, shared by every query replica.
        cursor_secret=config.service_token,
        usage=deps.usage,
        scores=ScoreWriter(deps.ingest, config.service_token, config.score_wait_s) if deps.ingest else None,
        export_page_size=config.export_page_size,
    )
    return await create_grpc_server(
        host=config.grpc_host,
        port=config.grpc_port,
        service_names=[SERVICE_NAME],
        registrars=[lambda server: query_service_pb2_grpc.add_QueryServiceServicer_to_server(servicer, server)],
    )


async def main() -> None:
    """Runs the query service until SIGTERM/SIGINT."""
    config = load_config(QueryConfig)
    configure_logging("candela-query", config.log_level)
    telemetry = setup_telemetry("candela-query")
    async with build_deps(config) as deps:
        server = await create_server(config, deps)
        await serve_until_signal(server, config.shutdown_grace_s)
    telemetry.shutdown()
