"""Wiring of a storage writer: its config, its store clients, its health server, and the process's main().

The consumer loop they serve is :class:`~candela_ingest.writer.consumer.StorageWriter`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import asyncpg

from candela_ingest.config import WriterConfig
from candela_ingest.kafka import Producer
from candela_ingest.stalls import StallWatch
from candela_ingest.writer.body_deletion import S3BodyDeleter
from candela_ingest.writer.clickhouse import ClickHouseRowSink
from candela_ingest.writer.consumer import STEP_TIMEOUT_S, StorageWriter, WriterDeps, WriterHealth, WriterStats
from candela_ingest.writer.dead_letters import KafkaDeadLetterSink, PostgresParking
from candela_ingest.writer.postgres import PostgresUsageLedger
from candela_runtime.config import load_config
from candela_runtime.grpc_server import GrpcServer, create_grpc_server
from candela_runtime.lifecycle import shutdown_step, wait_for_shutdown_signal
from candela_runtime.logs import configure_logging
from candela_runtime.telemetry import setup_telemetry

logger = logging.getLogger(__name__)


@asynccontextmanager
async def build_writer_deps(config: WriterConfig) -> AsyncIterator[WriterDeps]:
    """Creates the store clients without connecting (readiness waits for them); closes them on exit."""
    # min_size=0: no connection is opened here, so a writer starts (NOT_SERVING) while Postgres is down.
    pool = await asyncpg.create_pool(
        config.postgres_dsn, min_size=0, max_size=config.postgres_pool_size, command_timeout=60
    )
    rows = tuple(
        ClickHouseRowSink(
            host=config.clickhouse_host,
            port=config.clickhouse_port,
            database=config.clickhouse_database,
            user=config.clickhouse_user,
            password=config.clickhouse_password,
            table=config.clickhouse_table,
            cluster=config.clickhouse_cluster,
            alt_members=config.clickhouse_alt_members,
            member_retry_s=config.clickhouse_member_retry_s,
        )
        for _ in range(config.consumers + 1)
    )
    producer = Producer(config, client_id="candela-writer-dlq")
    stalls = StallWatch()
    bodies = (
        S3BodyDeleter(
            endpoint=config.s3_endpoint,
            access_key=config.s3_access_key,
            secret_key=config.s3_secret_key,
            bucket=config.s3_bucket,
            region=config.s3_region,
            connect_timeout_s=config.s3_connect_timeout_s,
            read_timeout_s=config.s3_read_timeout_s,
            max_attempts=config.s3_max_attempts,
            stalls=stalls,
        )
        if config.s3_endpoint
        else None
    )
    try:
        yield WriterDeps(
            pool=pool,
            rows=rows,
            ledger=PostgresUsageLedger(pool),
            dead_letter_producer=producer,
            dead_letters=KafkaDeadLetterSink(producer, config.kafka_dlq_topic, stalls),
            parking=PostgresParking(pool),
            bodies=bodies,
            stalls=stalls,
        )
    finally:
        if bodies is not None:
            bodies.close()
        await shutdown_step("dead-letter producer", producer.stop, STEP_TIMEOUT_S)
        for sink in rows:
            await shutdown_step("clickhouse", sink.close, STEP_TIMEOUT_S)
        await shutdown_step("postgres pool", pool.close, STEP_TIMEOUT_S)


async def run_writer(
    config: WriterConfig,
    stop: asyncio.Event,
    *,
    on_started: Callable[[StorageWriter, GrpcServer], None] | None = None,
) -> WriterStats:
    """Runs one writer (and its gRPC health server) until ``stop`` is set; returns its counters.

    On stop the writer stops fetching, finishes and commits the batch in flight (unless a store is down,
    in which case the batch is left uncommitted for redelivery), leaves the group and closes its stores.
    ``on_started`` receives the writer and its health server once both exist (tests use it for the port).
    """
    server = await create_grpc_server(host=config.grpc_host, port=config.grpc_port, service_names=[], registrars=[])
    try:
        async with build_writer_deps(config) as deps:
            writer = StorageWriter(config, deps, WriterHealth(server))
            if on_started is not None:
                on_started(writer, server)
            await writer.run(stop)
            return writer.stats
    finally:
        await shutdown_step("grpc health server", lambda: server.stop(0), STEP_TIMEOUT_S)


async def _stop_on_signal(stop: asyncio.Event) -> None:
    await wait_for_shutdown_signal()
    stop.set()


async def main() -> None:
    """Runs a writer until SIGTERM/SIGINT."""
    config = load_config(WriterConfig)
    configure_logging("candela-writer", config.log_level)
    telemetry = setup_telemetry("candela-writer")
    stop = asyncio.Event()
    signals = asyncio.create_task(_stop_on_signal(stop), name="shutdown-signal")
    try:
        stats = await run_writer(config, stop)
        logger.info(
            "writer stopped: %d batches, %d messages stored, %d newly counted, %d dead letters",
            stats.batches,
            stats.stored,
            stats.newly_counted,
            stats.dead_letters,
        )
    finally:
        signals.cancel()
        await asyncio.gather(signals, return_exceptions=True)
        telemetry.shutdown()
