"""Wiring of the ingest service: dependencies, server, readiness, and the process's main()."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

import asyncpg
from grpc_health.v1 import health_pb2

from candela_ingest.body_store import S3BodyStore
from candela_ingest.config import IngestConfig
from candela_ingest.kafka import KafkaUnavailable, Producer
from candela_ingest.organizations import OrganizationDirectory
from candela_ingest.service import SERVICE_NAME, IngestServicer, add_to_server
from candela_ingest.stalls import StallWatch, probe_until_stopped
from candela_ingest.wire.validation import BatchLimits
from candela_runtime.config import load_config
from candela_runtime.errors import Unavailable
from candela_runtime.grpc_server import GrpcServer, create_grpc_server
from candela_runtime.lifecycle import shutdown_step, wait_for_shutdown_signal
from candela_runtime.logs import configure_logging
from candela_runtime.telemetry import setup_telemetry

logger = logging.getLogger(__name__)

_PRODUCER_STOP_TIMEOUT_S = 10.0
_READY_MAX_BACKOFF_S = 5.0


@dataclass(frozen=True)
class IngestDeps:
    """What the ingest service talks to: the bodies bucket and the Kafka producer."""

    bodies: S3BodyStore
    producer: Producer
    organizations: OrganizationDirectory | None
    """Refuses unknown organizations; None when no Postgres DSN is configured."""
    stalls: StallWatch
    """Which of S3 and Kafka are stalled (their calls run past their deadlines): drives health."""


@asynccontextmanager
async def build_deps(config: IngestConfig) -> AsyncIterator[IngestDeps]:
    """Creates the S3 client and the (not yet connected) producer; stops the producer, then S3, on exit."""
    bodies = S3BodyStore(
        endpoint=config.s3_endpoint,
        access_key=config.s3_access_key,
        secret_key=config.s3_secret_key,
        bucket=config.s3_bucket,
        region=config.s3_region,
        max_concurrency=config.s3_max_concurrency,
        connect_timeout_s=config.s3_connect_timeout_s,
        read_timeout_s=config.s3_read_timeout_s,
        max_attempts=config.s3_max_attempts,
    )
    producer = Producer(config, client_id="candela-ingest")
    # min_size=0: nothing connects here, so ingest starts (and serves) while Postgres is down.
    pool = await asyncpg.create_pool(config.postgres_dsn, min_size=0, max_size=2) if config.postgres_dsn else None
    try:
        yield IngestDeps(
            bodies=bodies,
            producer=producer,
            organizations=OrganizationDirectory(pool) if pool is not None else None,
            stalls=StallWatch(),
        )
    finally:
        if pool is not None:
            await shutdown_step("postgres pool", pool.close, _PRODUCER_STOP_TIMEOUT_S)
        await shutdown_step("kafka producer", producer.stop, _PRODUCER_STOP_TIMEOUT_S)
        await shutdown_step("s3 client", lambda: asyncio.to_thread(bodies.close), _PRODUCER_STOP_TIMEOUT_S)


async def create_server(config: IngestConfig, deps: IngestDeps) -> GrpcServer:
    """The ingest gRPC server, started and NOT_SERVING until :func:`wait_until_ready` succeeded."""
    servicer = IngestServicer(
        bodies=deps.bodies,
        messages=deps.producer,
        topic=config.kafka_topic,
        service_token=config.service_token,
        limits=BatchLimits(
            max_batch_records=config.max_batch_records,
            max_record_bytes=config.max_record_bytes,
            max_metadata_bytes=config.max_metadata_bytes,
            max_clock_skew=timedelta(seconds=config.max_clock_skew_s),
        ),
        store_timeout_s=config.store_timeout_s,
        organizations=deps.organizations,
        stalls=deps.stalls,
    )
    return await create_grpc_server(
        host=config.grpc_host,
        port=config.grpc_port,
        service_names=[SERVICE_NAME],
        registrars=[lambda server: add_to_server(servicer, server)],
        options=[("grpc.max_receive_message_length", config.max_call_bytes)],
    )


async def wait_until_ready(config: IngestConfig, deps: IngestDeps) -> None:
    """Connects the producer and checks the topic and the bucket, retrying with backoff until all answer."""
    delay = 0.1
    while True:
        try:
            await deps.producer.start()
            await deps.producer.check_topic(config.kafka_topic)
            await deps.bodies.check()
        except (KafkaUnavailable, Unavailable) as err:
            logger.warning("ingest is not ready (%s); checking again in %.1fs", err, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _READY_MAX_BACKOFF_S)
        else:
            logger.info("Kafka topic %s and bucket %s are reachable", config.kafka_topic, deps.bodies.bucket)
            return


def report_stalls_in_health(server: GrpcServer, deps: IngestDeps) -> None:
    """From now on, a stalled store turns the server NOT_SERVING (why is logged by the watch), and SERVING
    again once every store answers."""

    async def publish(stalled: bool) -> None:
        status = health_pb2.HealthCheckResponse.NOT_SERVING if stalled else health_pb2.HealthCheckResponse.SERVING
        for name in ("", *server.service_names):
            await server.health.set(name, status)
        logger.warning(
            "ingest health: %s (stalled: %s)",
            health_pb2.HealthCheckResponse.ServingStatus.Name(status),
            ", ".join(f"{store}: {why}" for store, why in deps.stalls.stalled.items()) or "none",
        )

    deps.stalls.set_on_change(publish)


def store_probes(deps: IngestDeps) -> dict[str, Callable[[], Awaitable[None]]]:
    """The check that tells a stalled store answers again, per store: a real write to S3, a real round trip
    to Kafka (a broker that answers but still cannot write shows up again at the next batch's deadline)."""
    return {"s3": deps.bodies.probe_write, "kafka": deps.producer.probe}


async def main() -> None:
    """Runs the ingest service until SIGTERM/SIGINT: SERVING only once Kafka and S3 answer."""
    config = load_config(IngestConfig)
    configure_logging("candela-ingest", config.log_level)
    telemetry = setup_telemetry("candela-ingest")
    async with build_deps(config) as deps:
        server = await create_server(config, deps)
        shutdown = asyncio.create_task(wait_for_shutdown_signal(), name="shutdown-signal")
        ready = asyncio.create_task(wait_until_ready(config, deps), name="readiness")
        probes: asyncio.Task[None] | None = None
        try:
            await asyncio.wait({shutdown, ready}, return_when=asyncio.FIRST_COMPLETED)
            if not shutdown.done():
                await ready
                await server.set_serving()
                report_stalls_in_health(server, deps)
                probes = asyncio.create_task(
                    probe_until_stopped(
                        deps.stalls,
                        store_probes(deps),
                        config.store_probe_interval_s,
                        timeout_s=config.store_timeout_s,
                    ),
                    name="store-probes",
                )
                await shutdown
        finally:
            tasks = [task for task in (ready, shutdown, probes) if task is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await shutdown_step(
                "grpc server", lambda: server.stop(config.shutdown_grace_s), config.shutdown_grace_s + 2
            )
    telemetry.shutdown()
