"""The logging pipeline on real infrastructure: Ingest -> S3 + Kafka -> writers -> ClickHouse + Postgres.

One test stack (SeaweedFS S3, Tansu Kafka, ClickHouse 18.16, a throwaway Postgres database, all started by
``candela_stack`` on free ports) serves the module. Each test uses its own topics, consumer group and
organizations, so tests never see each other's data.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, TypeVar

import asyncpg
import grpc
import pytest
import zstandard
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from clickhouse_driver import Client
from grpc_health.v1 import health_pb2, health_pb2_grpc

from candela.ingest.v1 import ingest_service_pb2 as pb
from candela.ingest.v1 import ingest_service_pb2_grpc
from candela.logs.v1 import log_record_pb2
from candela_ingest.app import IngestDeps, build_deps, create_server, wait_until_ready
from candela_ingest.config import IngestConfig, WriterConfig
from candela_ingest.writer.app import run_writer
from candela_ingest.writer.body_deletion import S3BodyDeleter
from candela_ingest.writer.consumer import WriterStats
from candela_ingest.writer.dead_letters import ATTEMPTS_HEADER, ERROR_HEADER, SOURCE_OFFSET_HEADER
from candela_runtime.errors import bad_request_violations, rpc_error_status
from candela_runtime.grpc_server import GrpcServer
from candela_runtime.security import service_metadata
from candela_stack import seaweed
from candela_stack.stack import Component, Stack, StackConfig
from tests.factories import log_record

pytestmark = pytest.mark.integration
logger = logging.getLogger(__name__)

TOKEN = "ingest-it-" + secrets.token_hex(8)
INTERNAL = service_metadata(TOKEN)
T = TypeVar("T")


# --- infrastructure ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Postgres (a fresh, migrated database), ClickHouse (migrated), SeaweedFS S3 and a Tansu broker."""
    config = StackConfig.for_tests(
        tmp_path_factory.mktemp("ingest-stack"),
        components=frozenset({Component.POSTGRES, Component.CLICKHOUSE, Component.S3, Component.KAFKA}),
    )
    with Stack(config) as running:
        yield running


@dataclass(frozen=True)
class Topics:
    """A test's own log topic, dead-letter topic and consumer group."""

    logs: str
    dlq: str
    group: str


async def _create_topics(bootstrap: str, partitions: int) -> Topics:
    suffix = secrets.token_hex(4)
    topics = Topics(logs=f"it.logs.{suffix}", dlq=f"it.dlq.{suffix}", group=f"it-writers-{suffix}")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in (topics.logs, topics.dlq)]
        )
    finally:
        await admin.close()
    return topics


@pytest.fixture
async def topics(stack: Stack) -> Topics:
    """Fresh topics with 3 partitions."""
    return await _create_topics(stack.kafka_bootstrap, partitions=3)


def _ingest_config(stack: Stack, topics: Topics) -> IngestConfig:
    return IngestConfig(
        service_token=TOKEN,
        grpc_port=0,
        kafka_bootstrap=stack.kafka_bootstrap,
        kafka_topic=topics.logs,
        s3_endpoint=stack.s3_endpoint,
        s3_access_key=stack.s3_access_key,
        s3_secret_key=stack.s3_secret_key,
        s3_bucket=stack.s3_bucket,
    )


def _writer_config(stack: Stack, topics: Topics, **overrides: Any) -> WriterConfig:
    settings: dict[str, Any] = {
        "service_token": TOKEN,
        "grpc_port": 0,
        "kafka_bootstrap": stack.kafka_bootstrap,
        "kafka_topic": topics.logs,
        "kafka_dlq_topic": topics.dlq,
        "kafka_group": topics.group,
        "postgres_dsn": stack.postgres_dsn,
        "clickhouse_host": stack.clickhouse_host,
        "clickhouse_port": stack.clickhouse_port,
        "clickhouse_database": stack.clickhouse_database,
        "clickhouse_user": stack.clickhouse_user,
        "clickhouse_password": stack.clickhouse_password,
        "batch_max_wait_ms": 100,
        "retry_initial_backoff_s": 0.05,
        "retry_max_backoff_s": 0.5,
    }
    settings.update(overrides)
    return WriterConfig(**settings)


@dataclass(frozen=True)
class Ingest:
    """A running IngestService and a client of it."""

    server: GrpcServer
    deps: IngestDeps
    stub: ingest_service_pb2_grpc.IngestServiceAsyncStub


@pytest.fixture
async def ingest(stack: Stack, topics: Topics) -> AsyncIterator[Ingest]:
    """IngestService in-process on a free port, SERVING once Kafka and S3 answered."""
    config = _ingest_config(stack, topics)
    async with build_deps(config) as deps:
        server = await create_server(config, deps)
        await asyncio.wait_for(wait_until_ready(config, deps), 30)
        await server.set_serving()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield Ingest(server, deps, ingest_service_pb2_grpc.IngestServiceStub(channel))
        await server.stop(1)


@pytest.fixture(scope="module")
def s3(stack: Stack) -> Any:
    """A boto3 client of the stack's S3 store."""
    return seaweed.client(stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key)


# --- helpers ---------------------------------------------------------------------------------------------


def _record(organization_id: str, cost: str | None = "0.000150", prompt_tokens: int = 100) -> log_record_pb2.LogRecord:
    record = log_record(
        organization_id=organization_id,
        api_key_id=str(uuid.uuid4()),
        provider="openai",
        model="gpt-4o-mini",
        path="/v1/chat/completions",
        status_code=200,
        latency_ms=321,
        usage=log_record_pb2.TokenUsage(prompt_tokens=prompt_tokens, completion_tokens=20, total_tokens=120),
        properties={"env": "test"},
        created_at=datetime.now(UTC),
    )
    if cost is not None:
        record.cost_usd = cost
    return record


def _log_message(record: log_record_pb2.LogRecord) -> log_record_pb2.LogMessage:
    message = log_record_pb2.LogMessage(record=record)
    message.ingested_at.FromDatetime(datetime.now(UTC))
    return message


async def _read_topic(
    bootstrap: str, topic: str, *, expected: int | None, timeout_s: float = 10.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every message of ``topic``: waits for ``expected`` of them, or when None reads up to the partitions'
    end offsets as they are now (within ``timeout_s`` either way)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(await _partitions(consumer, topic))]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        found: list[ConsumerRecord[bytes, bytes]] = []

        async def more_to_read() -> bool:
            if expected is not None:
                return len(found) < expected
            return any([await consumer.position(partition) < end for partition, end in ends.items()])

        deadline = time.monotonic() + timeout_s
        while await more_to_read():
            assert time.monotonic() < deadline, f"read {len(found)} messages of {topic} in {timeout_s}s, not all"
            for records in (await consumer.getmany(timeout_ms=200)).values():
                found.extend(records)
        return found
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    for _ in range(50):
        if topic in await consumer.topics():  # refreshes the metadata
            found = consumer.partitions_for_topic(topic)
            if found:
                return set(found)
        await asyncio.sleep(0.05)
    raise AssertionError(f"no partitions for {topic}")


async def _produce(
    bootstrap: str, topic: str, messages: Sequence[tuple[bytes, bytes]], partition: int | None = None
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in messages:
            await producer.send_and_wait(topic, value=value, key=key, partition=partition)
    finally:
        await producer.stop()


async def _eventually(check: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout_s: float = 20.0) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if done(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.1)


def _clickhouse(stack: Stack) -> Client:
    return Client(
        host=stack.clickhouse_host,
        port=stack.clickhouse_port,
        database=stack.clickhouse_database,
        user=stack.clickhouse_user,
        password=stack.clickhouse_password,
    )


async def _query_clickhouse(stack: Stack, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    def run() -> list[tuple[Any, ...]]:
        client = _clickhouse(stack)
        try:
            return list(client.execute(sql, params))
        finally:
            client.disconnect()

    return await asyncio.to_thread(run)


async def _stored_requests(stack: Stack, organization_ids: Sequence[str]) -> int:
    rows = await _query_clickhouse(
        stack,
        "SELECT count() FROM requests FINAL WHERE organization_id IN %(orgs)s",
        {"orgs": tuple(uuid.UUID(o) for o in organization_ids)},
    )
    return int(rows[0][0])


async def _usage(stack: Stack, organization_id: str) -> tuple[int, int, Decimal, int]:
    connection = await asyncpg.connect(stack.postgres_dsn)
    try:
        row = await connection.fetchrow(
            """
            SELECT coalesce(sum(request_count), 0) AS requests, coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
                   coalesce(sum(cost_usd), 0) AS cost, coalesce(sum(unpriced_count), 0) AS unpriced
            FROM organization_usage_daily WHERE organization_id = $1
            """,
            uuid.UUID(organization_id),
        )
    finally:
        await connection.close()
    assert row is not None
    return int(row["requests"]), int(row["prompt_tokens"]), Decimal(row["cost"]), int(row["unpriced"])


async def _committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(
            group, partitions=[TopicPartition(topic, p) for p in range(partitions)]
        )
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


@dataclass
class InProcessWriter:
    """A writer running in this event loop."""

    stop: asyncio.Event
    task: asyncio.Task[WriterStats]

    async def finish(self) -> WriterStats:
        self.stop.set()
        return await asyncio.wait_for(self.task, 30)

    def state(self) -> str:
        """Whether the writer still runs, and which of its tasks do, or how it ended (a line for a failed
        assertion's message). A writer's consumers are tasks named ``writer-<lane>``: one that ended while the
        writer runs leaves its partitions unread."""
        if not self.task.done():
            running = sorted(task.get_name() for task in asyncio.all_tasks() if task.get_name().startswith("writer-"))
            return f"the writer is running, with tasks {running}"
        if self.task.cancelled():
            return "the writer was cancelled"
        error = self.task.exception()
        return f"the writer ended: {error!r}" if error is not None else "the writer stopped"


def _report_death(task: asyncio.Task[WriterStats]) -> None:
    """Logs, with its traceback, the error a writer task ended with: a writer that dies in a test leaves its
    partitions unread, and the test would otherwise only see logs that never arrive."""
    if not task.cancelled() and task.exception() is not None:
        logger.error("the in-process writer died", exc_info=task.exception())


@pytest.fixture
async def start_writer() -> AsyncIterator[Callable[[WriterConfig], InProcessWriter]]:
    """Starts in-process writers; each is stopped (and awaited) at the end of the test at the latest. A
    writer that ended with an error fails the test."""
    started: list[InProcessWriter] = []

    def start(config: WriterConfig) -> InProcessWriter:
        stop = asyncio.Event()
        writer = InProcessWriter(stop, asyncio.create_task(run_writer(config, stop), name="writer"))
        writer.task.add_done_callback(_report_death)
        started.append(writer)
        return writer

    yield start
    for writer in started:
        writer.stop.set()
    outcomes = await asyncio.gather(*(writer.task for writer in started), return_exceptions=True)
    errors = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    if errors:
        pytest.fail(f"{len(errors)} in-process writer(s) ended with an error: {errors!r}")


# --- IngestService ---------------------------------------------------------------------------------------


def _chat_body(kind: str, index: int, words: int) -> bytes:
    """A JSON chat request or completion whose text differs from every other's."""
    text = " ".join(f"{kind}-{index}-{position} of the answer" for position in range(words))
    return f'{{"{kind}": [{{"role": "user", "content": "{text}"}}]}}'.encode()


async def test_ingest_packs_bodies_per_organization_and_produces_one_message_per_record(
    stack: Stack, topics: Topics, ingest: Ingest, s3: Any
) -> None:
    organizations = [str(uuid.uuid4()), str(uuid.uuid4())]
    items = [
        pb.IngestRecord(
            record=_record(organizations[index % 2]),
            request_body=_chat_body("messages", index, 60),
            response_body=_chat_body("choices", index, index) if index % 7 else b"",
        )
        for index in range(80)
    ]

    response = await ingest.stub.Ingest(pb.IngestRequest(records=items), metadata=INTERNAL)
    assert response.accepted_count == 80

    for organization_id in organizations:
        listing = await asyncio.to_thread(
            s3.list_objects_v2, Bucket=stack.s3_bucket, Prefix=f"bodies/{organization_id}/"
        )
        keys = [entry["Key"] for entry in listing.get("Contents", [])]
        assert len(keys) == 1, "one packed object per organization per batch"
        assert keys[0].startswith(f"bodies/{organization_id}/{datetime.now(UTC):%Y/%m/%d}/")
        assert keys[0].endswith(".zst")
        stored = await asyncio.to_thread(s3.get_object, Bucket=stack.s3_bucket, Key=keys[0])
        assert stored["ContentType"] == "application/zstd"
        # The object is a zstd stream of the organization's bodies in request order, as any zstd tool reads
        # it, and smaller than they are.
        data = stored["Body"].read()
        bodies = b"".join(
            item.request_body + item.response_body for item in items if item.record.organization_id == organization_id
        )
        assert zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True).read() == bodies
        assert len(data) * 2 < len(bodies)

    messages = await _read_topic(stack.kafka_bootstrap, topics.logs, expected=80)
    assert len(messages) == 80
    by_id = {item.record.request_id: item for item in items}
    frames: set[tuple[str, int]] = set()
    for consumed in messages:
        log = log_record_pb2.LogMessage.FromString(consumed.value)
        assert consumed.key == log.record.request_id.encode(), "keyed by request id"
        item = by_id.pop(log.record.request_id)
        assert log.record == item.record
        pairs: tuple[tuple[bytes, Literal["request_body", "response_body"]], ...] = (
            (item.request_body, "request_body"),
            (item.response_body, "response_body"),
        )
        for body, field in pairs:
            if not body:
                assert not log.HasField(field)
                continue
            ref: log_record_pb2.BodyRef = getattr(log, field)
            assert ref.object_key.startswith(f"bodies/{item.record.organization_id}/")
            # One ranged GET of the body's frame, decompressed alone.
            ranged = await asyncio.to_thread(
                s3.get_object,
                Bucket=stack.s3_bucket,
                Key=ref.object_key,
                Range=f"bytes={ref.frame_offset}-{ref.frame_offset + ref.frame_length - 1}",
            )
            content = zstandard.ZstdDecompressor().decompress(ranged["Body"].read(), allow_extra_data=False)
            assert content[ref.offset : ref.offset + ref.length] == body
            frames.add((ref.object_key, ref.frame_offset))
    assert by_id == {}
    assert len(frames) > len(organizations), "bodies past 64 KiB per organization take several frames"


async def test_an_organizations_bodies_are_deleted_by_its_prefix(stack: Stack, ingest: Ingest, s3: Any) -> None:
    doomed, kept = str(uuid.uuid4()), str(uuid.uuid4())
    batch = pb.IngestRequest(
        records=[
            pb.IngestRecord(record=_record(organization_id), request_body=_chat_body("messages", index, 40))
            for index, organization_id in enumerate([doomed, kept] * 5)
        ]
    )
    await ingest.stub.Ingest(batch, metadata=INTERNAL)
    await ingest.stub.Ingest(batch, metadata=INTERNAL)

    async def keys(organization_id: str) -> list[str]:
        listing = await asyncio.to_thread(
            s3.list_objects_v2, Bucket=stack.s3_bucket, Prefix=f"bodies/{organization_id}/"
        )
        return [entry["Key"] for entry in listing.get("Contents", [])]

    assert len(await keys(doomed)) == len(await keys(kept)) == 2
    deleter = S3BodyDeleter(
        endpoint=stack.s3_endpoint,
        access_key=stack.s3_access_key,
        secret_key=stack.s3_secret_key,
        bucket=stack.s3_bucket,
        region="us-east-1",
    )
    # Retention deletes whole days of an organization; a cutoff of tomorrow takes all of them.
    assert await deleter.delete_days_before(doomed, datetime.now(UTC).date() + timedelta(days=1)) == 2
    assert await keys(doomed) == []
    assert len(await keys(kept)) == 2


async def test_a_bad_batch_writes_nothing(stack: Stack, topics: Topics, ingest: Ingest, s3: Any) -> None:
    organization_id = str(uuid.uuid4())
    bad = pb.IngestRecord(record=_record(organization_id), request_body=b"body")
    bad.record.request_id = "not-a-uuid"
    bad.record.ClearField("created_at")
    items = [pb.IngestRecord(record=_record(organization_id), request_body=b"fine") for _ in range(3)]

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ingest.stub.Ingest(pb.IngestRequest(records=[*items[:2], bad, items[2]]), metadata=INTERNAL)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_error_status(caught.value)
    assert status is not None
    assert [v.field for v in bad_request_violations(status)] == [
        "records[2].record.request_id",
        "records[2].record.created_at",
    ]
    listing = await asyncio.to_thread(s3.list_objects_v2, Bucket=stack.s3_bucket, Prefix=f"bodies/{organization_id}/")
    assert listing.get("KeyCount", 0) == 0
    assert await _read_topic(stack.kafka_bootstrap, topics.logs, expected=None) == []


async def test_ingest_requires_the_service_credential(topics: Topics, ingest: Ingest) -> None:
    request = pb.IngestRequest(records=[pb.IngestRecord(record=_record(str(uuid.uuid4())))])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ingest.stub.Ingest(request)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


# --- writers ---------------------------------------------------------------------------------------------


async def test_redelivered_logs_are_stored_and_counted_exactly_once(
    stack: Stack,
    topics: Topics,
    ingest: Ingest,
    start_writer: Callable[[WriterConfig], InProcessWriter],
) -> None:
    organization_id = str(uuid.uuid4())
    priced = [
        pb.IngestRecord(record=_record(organization_id, cost="0.000000000003"), response_body=b"hi") for _ in range(20)
    ]
    unpriced = [pb.IngestRecord(record=_record(organization_id, cost=None, prompt_tokens=7)) for _ in range(5)]
    batch = pb.IngestRequest(records=[*priced, *unpriced])
    await ingest.stub.Ingest(batch, metadata=INTERNAL)
    # The proxy resends a batch whose acknowledgement it lost: every message is in Kafka twice.
    await ingest.stub.Ingest(batch, metadata=INTERNAL)
    expected_usage = (25, 20 * 100 + 5 * 7, Decimal("0.000000000060"), 5)

    writer = start_writer(_writer_config(stack, topics))
    stored = await _eventually(lambda: _stored_requests(stack, [organization_id]), lambda count: count >= 25)
    usage = await _eventually(lambda: _usage(stack, organization_id), lambda found: found[0] >= 25)
    # The first copies alone make those counts: wait until the second copies are consumed too.
    await _eventually(
        lambda: _committed(stack.kafka_bootstrap, topics.group, topics.logs, 3),
        lambda offsets: sum(offsets.values()) >= 50,
    )
    stats = await writer.finish()

    assert stored == 25
    assert usage == expected_usage
    assert stats.stored == 50, "both copies were written (idempotently)"
    assert stats.newly_counted == 25
    assert stats.dead_letters == 0
    assert sum((await _committed(stack.kafka_bootstrap, topics.group, topics.logs, 3)).values()) == 50

    # A full replay (a new group reads the topic from the start) changes nothing either.
    replay = start_writer(_writer_config(stack, topics, kafka_group=topics.group + "-replay"))
    await _eventually(
        lambda: _committed(stack.kafka_bootstrap, topics.group + "-replay", topics.logs, 3),
        lambda offsets: sum(offsets.values()) >= 50,
    )
    replay_stats = await replay.finish()
    assert replay_stats.newly_counted == 0
    assert await _stored_requests(stack, [organization_id]) == 25
    assert await _usage(stack, organization_id) == expected_usage
    rows = await _query_clickhouse(
        stack,
        "SELECT response_body_length, property_keys, property_values, priced, time_to_first_token_ms "
        "FROM requests FINAL WHERE organization_id = %(org)s AND request_id = %(id)s",
        {"org": uuid.UUID(organization_id), "id": uuid.UUID(priced[0].record.request_id)},
    )
    assert rows == [(2, ["env"], ["test"], 1, -1)]


async def test_a_poison_message_goes_to_the_dlq_and_does_not_block_its_partition(
    stack: Stack, start_writer: Callable[[WriterConfig], InProcessWriter]
) -> None:
    topics = await _create_topics(stack.kafka_bootstrap, partitions=1)
    organization_id = str(uuid.uuid4())
    before = [_record(organization_id) for _ in range(3)]
    after = [_record(organization_id) for _ in range(4)]
    poison = b"\x0a\xff\xff\xff garbage, not a LogMessage"
    await _produce(
        stack.kafka_bootstrap,
        topics.logs,
        [
            *((r.request_id.encode(), _log_message(r).SerializeToString()) for r in before),
            (b"poison-key", poison),
            *((r.request_id.encode(), _log_message(r).SerializeToString()) for r in after),
        ],
        partition=0,
    )

    writer = start_writer(_writer_config(stack, topics))
    stored = await _eventually(lambda: _stored_requests(stack, [organization_id]), lambda count: count >= 7)
    letters = await _read_topic(stack.kafka_bootstrap, topics.dlq, expected=1)
    stats = await writer.finish()

    assert stored == 7, "the messages after the poison one in its partition landed"
    assert len(letters) == 1
    letter = letters[0]
    assert (letter.key, letter.value) == (b"poison-key", poison)
    headers = dict(letter.headers)
    assert headers[ERROR_HEADER].startswith(b"not a candela.logs.v1.LogMessage")
    assert headers[ATTEMPTS_HEADER] == b"1"
    assert headers[SOURCE_OFFSET_HEADER] == b"3"
    assert stats.dead_letters == 1
    assert await _committed(stack.kafka_bootstrap, topics.group, topics.logs, 1) == {0: 8}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _health(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.aio.AioRpcError:
            return -1
        return int(response.status)


async def test_writer_process_serves_health_and_exits_cleanly_on_sigterm(
    stack: Stack, topics: Topics, tmp_path: Path
) -> None:
    organization_id = str(uuid.uuid4())
    records = [_record(organization_id) for _ in range(30)]
    await _produce(
        stack.kafka_bootstrap,
        topics.logs,
        [(r.request_id.encode(), _log_message(r).SerializeToString()) for r in records],
    )
    port = _free_port()
    config = _writer_config(stack, topics, grpc_port=port)
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        **{f"CANDELA_{name.upper()}": str(value) for name, value in vars(config).items()},
    }
    log_path = tmp_path / "writer.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "candela_ingest.writer",
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        serving = await _eventually(
            lambda: _health(port), lambda status: status == health_pb2.HealthCheckResponse.SERVING
        )
        assert serving == health_pb2.HealthCheckResponse.SERVING, log_path.read_text()
        assert await _eventually(lambda: _stored_requests(stack, [organization_id]), lambda n: n >= 30) == 30
        process.send_signal(signal.SIGTERM)
        exit_code = await asyncio.wait_for(process.wait(), 20)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert exit_code == 0, log_path.read_text()
    assert sum((await _committed(stack.kafka_bootstrap, topics.group, topics.logs, 3)).values()) == 30
    assert "writer stopped" in log_path.read_text()
