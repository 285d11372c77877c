"""Ingest and writer configuration from CANDELA_* variables, and start-up while dependencies are down."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from candela_ingest.app import build_deps, wait_until_ready
from candela_ingest.config import DEFAULT_DLQ_TOPIC, DEFAULT_TOPIC, IngestConfig, WriterConfig
from candela_ingest.writer.app import run_writer
from candela_ingest.writer.consumer import StorageWriter
from candela_runtime.config import ConfigError, load_config
from candela_runtime.grpc_server import GrpcServer
from candela_runtime.limits import MAX_PROMPT_INPUTS_BYTES, MAX_RECORD_BYTES, MAX_RECORD_METADATA_BYTES

pytestmark = pytest.mark.unit


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port nothing listens on (held bound, never listening, for the test's duration)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


def test_ingest_config_defaults_and_required_variables() -> None:
    config = load_config(
        IngestConfig,
        {
            "CANDELA_SERVICE_TOKEN": "t",
            "CANDELA_KAFKA_BOOTSTRAP": "127.0.0.1:9092",
            "CANDELA_S3_ENDPOINT": "http://127.0.0.1:8333",
            "CANDELA_S3_ACCESS_KEY": "ak",
            "CANDELA_S3_SECRET_KEY": "sk",
            "CANDELA_MAX_BATCH_RECORDS": "250",
        },
    )
    assert (config.kafka_topic, config.s3_bucket, config.s3_region) == (DEFAULT_TOPIC, "candela", "us-east-1")
    assert config.max_batch_records == 250
    with pytest.raises(ConfigError) as caught:
        load_config(IngestConfig, {"CANDELA_SERVICE_TOKEN": "t"})
    for variable in (
        "CANDELA_KAFKA_BOOTSTRAP",
        "CANDELA_S3_ENDPOINT",
        "CANDELA_S3_ACCESS_KEY",
        "CANDELA_S3_SECRET_KEY",
    ):
        assert variable in str(caught.value)


def test_writer_config_defaults_and_heartbeat_bound() -> None:
    environ = {
        "CANDELA_SERVICE_TOKEN": "t",
        "CANDELA_KAFKA_BOOTSTRAP": "k:9092",
        "CANDELA_POSTGRES_DSN": "postgresql://x",
    }
    config = load_config(WriterConfig, environ)
    assert (config.kafka_group, config.kafka_dlq_topic) == ("candela-writers", DEFAULT_DLQ_TOPIC)
    assert (config.clickhouse_port, config.clickhouse_database) == (9000, "candela")
    assert config.kafka_heartbeat_interval_ms * 3 <= config.kafka_session_timeout_ms
    with pytest.raises(ConfigError, match="at most a third"):
        load_config(WriterConfig, {**environ, "CANDELA_KAFKA_HEARTBEAT_INTERVAL_MS": "3000"})


def test_the_ledger_horizon_defaults_to_35_days_is_set_by_its_variable_and_is_at_least_two_days() -> None:
    environ = {
        "CANDELA_SERVICE_TOKEN": "t",
        "CANDELA_KAFKA_BOOTSTRAP": "k:9092",
        "CANDELA_POSTGRES_DSN": "postgresql://x",
    }
    assert load_config(WriterConfig, environ).ledger_horizon_days == 35
    assert load_config(WriterConfig, {**environ, "CANDELA_LEDGER_HORIZON_DAYS": "14"}).ledger_horizon_days == 14
    with pytest.raises(ConfigError, match="CANDELA_LEDGER_HORIZON_DAYS must be at least 2"):
        load_config(WriterConfig, {**environ, "CANDELA_LEDGER_HORIZON_DAYS": "1"})


def test_store_deadlines_have_finite_defaults_and_must_be_positive() -> None:
    """Every S3 and Kafka call has a deadline by default; one set to 0 (no deadline, or always stalled) is refused."""
    environ = {"CANDELA_SERVICE_TOKEN": "t", "CANDELA_KAFKA_BOOTSTRAP": "k:9092", "CANDELA_POSTGRES_DSN": "pg"}
    writer = load_config(WriterConfig, environ)
    assert 0 < writer.kafka_commit_timeout_s < 60
    assert 0 < writer.kafka_delivery_timeout_s < 60
    assert writer.s3_max_attempts * (writer.s3_connect_timeout_s + writer.s3_read_timeout_s) < 60
    with pytest.raises(ConfigError, match="CANDELA_KAFKA_COMMIT_TIMEOUT_S, CANDELA_S3_MAX_ATTEMPTS"):
        load_config(WriterConfig, {**environ, "CANDELA_KAFKA_COMMIT_TIMEOUT_S": "0", "CANDELA_S3_MAX_ATTEMPTS": "0"})
    ingest = {
        "CANDELA_SERVICE_TOKEN": "t",
        "CANDELA_KAFKA_BOOTSTRAP": "k:9092",
        "CANDELA_S3_ENDPOINT": "http://127.0.0.1:8333",
        "CANDELA_S3_ACCESS_KEY": "ak",
        "CANDELA_S3_SECRET_KEY": "sk",
    }
    assert 0 < load_config(IngestConfig, ingest).store_timeout_s < 60
    with pytest.raises(ConfigError, match="CANDELA_STORE_TIMEOUT_S"):
        load_config(IngestConfig, {**ingest, "CANDELA_STORE_TIMEOUT_S": "-1"})


async def test_ingest_is_not_ready_while_kafka_and_s3_are_unreachable(closed_port: int) -> None:
    config = IngestConfig(
        service_token="t",
        kafka_bootstrap=f"127.0.0.1:{closed_port}",
        s3_endpoint=f"http://127.0.0.1:{closed_port}",
        s3_access_key="ak",
        s3_secret_key="sk",
    )
    async with build_deps(config) as deps:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(wait_until_ready(config, deps), 1.0)
        assert not deps.producer.started


async def test_a_writer_whose_stores_are_down_is_not_serving_and_stops_cleanly(closed_port: int) -> None:
    config = WriterConfig(
        service_token="t",
        kafka_bootstrap=f"127.0.0.1:{closed_port}",
        postgres_dsn=f"postgresql://postgres@127.0.0.1:{closed_port}/none",
        clickhouse_port=closed_port,
        retry_initial_backoff_s=0.05,
        retry_max_backoff_s=0.1,
    )
    started: list[GrpcServer] = []

    def remember(writer: StorageWriter, server: GrpcServer) -> None:
        started.append(server)

    stop = asyncio.Event()
    task = asyncio.create_task(run_writer(config, stop, on_started=remember))
    for _ in range(100):
        if started:
            break
        await asyncio.sleep(0.05)
    (server,) = started
    await asyncio.sleep(0.3)  # a few failed readiness checks
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
    assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
    stop.set()
    stats = await asyncio.wait_for(task, 5)
    assert stats.batches == 0


def test_ingest_refuses_limits_below_what_the_proxy_sends() -> None:
    """The proxy admits prompt inputs and keeps bodies up to the shared bounds: ingest may not refuse less."""
    environ = {
        "CANDELA_SERVICE_TOKEN": "t",
        "CANDELA_KAFKA_BOOTSTRAP": "127.0.0.1:9092",
        "CANDELA_S3_ENDPOINT": "http://127.0.0.1:8333",
        "CANDELA_S3_ACCESS_KEY": "a",
        "CANDELA_S3_SECRET_KEY": "s",
    }
    config = load_config(IngestConfig, environ)
    assert (config.max_record_bytes, config.max_metadata_bytes) == (MAX_RECORD_BYTES, MAX_RECORD_METADATA_BYTES)
    with pytest.raises(ConfigError, match="CANDELA_MAX_METADATA_BYTES"):
        load_config(IngestConfig, {**environ, "CANDELA_MAX_METADATA_BYTES": str(MAX_PROMPT_INPUTS_BYTES)})
    with pytest.raises(ConfigError, match="CANDELA_MAX_RECORD_BYTES"):
        load_config(IngestConfig, {**environ, "CANDELA_MAX_RECORD_BYTES": str(MAX_RECORD_BYTES - 1)})
