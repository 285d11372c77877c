"""Fault tests on real processes: the stack's own ingest, writer, proxy, broker (durable s3 engine) and S3.

Each test ends with the same three checks: rows in ClickHouse == acknowledged logs, usage totals exact,
no duplicate visible to queries. Logs are sent like the proxy sends them: a batch is resent until ingest
acknowledges it (a resent batch may reach Kafka twice; the writers make that invisible).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import asyncpg
import grpc
import httpx
import pytest
from clickhouse_driver import Client
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from candela.ingest.v1 import ingest_service_pb2 as pb
from candela.ingest.v1 import ingest_service_pb2_grpc
from candela.logs.v1 import log_record_pb2
from candela_runtime.errors import bad_request_violations, rpc_error_status
from candela_runtime.security import service_metadata
from candela_stack import seaweed
from candela_stack.stack import Component, Stack, StackConfig
from tests.factories import log_record

pytestmark = pytest.mark.integration

BATCH = 200
STORE_TIMEOUT_S = 3.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Everything but Envoy and query, with the broker on its durable s3 engine; quick writer retries."""
    config = StackConfig.for_tests(
        tmp_path_factory.mktemp("ingest-faults"),
        components=frozenset(
            {Component.INGEST, Component.WRITER, Component.PROXY, Component.CLICKHOUSE, Component.S3, Component.KAFKA}
        ),
        kafka_engine="s3",
        env={
            "CANDELA_RETRY_MAX_BACKOFF_S": "1",
            "CANDELA_KAFKA_SESSION_TIMEOUT_MS": "3000",
            "CANDELA_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
            "CANDELA_BATCH_MAX_WAIT_MS": "100",
            # Short store deadlines, so a stalled store is refused and reported within seconds.
            "CANDELA_STORE_TIMEOUT_S": str(STORE_TIMEOUT_S),
            "CANDELA_S3_CONNECT_TIMEOUT_S": "1",
            "CANDELA_S3_READ_TIMEOUT_S": "2",
            "CANDELA_KAFKA_DELIVERY_TIMEOUT_S": str(STORE_TIMEOUT_S),
            "CANDELA_KAFKA_COMMIT_TIMEOUT_S": str(STORE_TIMEOUT_S),
            "CANDELA_STORE_PROBE_INTERVAL_S": "0.5",
        },
    )
    with Stack(config) as running:
        yield running


def _record(organization_id: str) -> log_record_pb2.LogRecord:
    return log_record(
        organization_id=organization_id,
        provider="openai",
        model="gpt-4o-mini",
        status_code=200,
        latency_ms=10,
        cost_usd="0.000001",
        created_at=datetime.now(UTC),
    )


async def _organization(stack: Stack) -> str:
    """A new organization (ingest refuses logs of organizations that do not exist)."""
    organization_id = str(uuid.uuid4())
    connection = await asyncpg.connect(stack.postgres_dsn)
    try:
        await connection.execute(
            "INSERT INTO organizations (id, name) VALUES ($1, 'faults')", uuid.UUID(organization_id)
        )
    finally:
        await connection.close()
    return organization_id


class Sender:
    """Sends batches to the stack's ingest like a proxy: each one resent until acknowledged."""

    def __init__(self, stack: Stack, organization_id: str) -> None:
        self._stack = stack
        self.organization_id = organization_id
        self.acknowledged: set[str] = set()
        self.refusals = 0
        self._progress = asyncio.Condition()

    async def wait_acknowledged(self, count: int) -> None:
        """Returns once at least ``count`` logs were acknowledged."""
        async with self._progress:
            await self._progress.wait_for(lambda: len(self.acknowledged) >= count)

    async def send(self, batches: int, pause_s: float = 0.0) -> None:
        """Sends ``batches`` batches of BATCH logs, one after the other."""
        metadata = service_metadata(self._stack.service_token)
        async with grpc.aio.insecure_channel(self._stack.ingest_addr) as channel:
            stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
            for _ in range(batches):
                records = [_record(self.organization_id) for _ in range(BATCH)]
                request = pb.IngestRequest(
                    records=[pb.IngestRecord(record=r, response_body=b"answer " * 50) for r in records]
                )
                while True:
                    try:
                        await stub.Ingest(request, metadata=metadata, timeout=15)
                    except grpc.aio.AioRpcError as error:
                        if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                            raise
                        self.refusals += 1
                        await asyncio.sleep(0.2)
                    else:
                        break
                async with self._progress:
                    self.acknowledged.update(r.request_id for r in records)
                    self._progress.notify_all()
                await asyncio.sleep(pause_s)

    async def resend(self, request: pb.IngestRequest) -> None:
        """Sends a batch that was refused until ingest acknowledges it, as the proxy does (part of it may have
        reached Kafka before the refusal: the writers make the copy invisible)."""
        metadata = service_metadata(self._stack.service_token)
        async with grpc.aio.insecure_channel(self._stack.ingest_addr) as channel:
            stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
            await stub.Ingest(request, metadata=metadata, timeout=60, wait_for_ready=True)
        self.acknowledged.update(item.record.request_id for item in request.records)


def _clickhouse_counts(stack: Stack, organization_id: str) -> tuple[int, int, int]:
    """(rows seen with FINAL, distinct request ids, rows with FINAL that are duplicates)."""
    client = Client(
        host=stack.clickhouse_host,
        port=stack.clickhouse_port,
        database=stack.clickhouse_database,
        user=stack.clickhouse_user,
        password=stack.clickhouse_password,
    )
    try:
        rows = client.execute(
            "SELECT count(), uniqExact(request_id) FROM requests FINAL WHERE organization_id = %(o)s",
            {"o": uuid.UUID(organization_id)},
        )
    except (OSError, EOFError):
        return (-1, -1, -1)
    finally:
        client.disconnect()
    count, distinct = int(rows[0][0]), int(rows[0][1])
    return count, distinct, count - distinct


async def _usage_count(stack: Stack, organization_id: str) -> int:
    connection = await asyncpg.connect(stack.postgres_dsn)
    try:
        value = await connection.fetchval(
            "SELECT coalesce(sum(request_count), 0) FROM organization_usage_daily WHERE organization_id = $1",
            uuid.UUID(organization_id),
        )
    finally:
        await connection.close()
    return int(value)


async def _assert_exact(stack: Stack, organization_id: str, acknowledged: int, timeout_s: float = 90.0) -> None:
    """Waits until ClickHouse and the usage counters hold every acknowledged log, then checks both exactly.

    A writer inserts into ClickHouse inside its Postgres transaction, so a batch's rows can be visible a
    moment before its usage commits: both are awaited, then compared (a count above is as wrong as below).
    """
    deadline = time.monotonic() + timeout_s
    counts, usage = (0, 0, 0), 0
    while time.monotonic() < deadline:
        counts = await asyncio.to_thread(_clickhouse_counts, stack, organization_id)
        usage = await _usage_count(stack, organization_id)
        if counts[1] >= acknowledged and usage >= acknowledged:
            break
        await asyncio.sleep(0.25)
    assert counts == (acknowledged, acknowledged, 0), "rows == acknowledged logs, none visible twice"
    assert usage == acknowledged, "usage totals exact"


@contextlib.asynccontextmanager
async def _background(sender: Sender, batches: int, pause_s: float) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(sender.send(batches, pause_s))
    try:
        yield task
    finally:
        await asyncio.wait_for(task, 180)


async def test_writer_sigkilled_mid_batch(stack: Stack) -> None:
    sender = Sender(stack, await _organization(stack))
    async with _background(sender, batches=30, pause_s=0.05):
        await sender.wait_acknowledged(10 * BATCH)
        await asyncio.to_thread(stack.stop_component, Component.WRITER, kill=True)
        await asyncio.to_thread(stack.start_component, Component.WRITER)
    await _assert_exact(stack, sender.organization_id, len(sender.acknowledged))


async def test_broker_restarted_on_its_durable_engine(stack: Stack) -> None:
    assert stack.config.kafka_engine == "s3"
    sender = Sender(stack, await _organization(stack))
    async with _background(sender, batches=20, pause_s=0.05):
        await sender.wait_acknowledged(5 * BATCH)
        await asyncio.to_thread(stack.stop_component, Component.KAFKA, kill=True)
        await asyncio.to_thread(stack.start_component, Component.KAFKA)
    await _assert_exact(stack, sender.organization_id, len(sender.acknowledged))


async def test_s3_server_stopped(stack: Stack) -> None:
    sender = Sender(stack, await _organization(stack))
    await sender.send(3)
    await asyncio.to_thread(stack.stop_component, Component.S3, kill=True)
    async with _background(sender, batches=5, pause_s=0.1):
        await asyncio.sleep(3)  # ingest refuses (UNAVAILABLE) while the bodies cannot be made durable
        await asyncio.to_thread(stack.start_component, Component.S3)
    assert sender.refusals > 0
    await _assert_exact(stack, sender.organization_id, len(sender.acknowledged))


async def test_ingest_stopped_while_the_proxy_keeps_serving(stack: Stack) -> None:
    key = await asyncio.to_thread(stack.bootstrap)
    served: list[str] = []
    async with httpx.AsyncClient(base_url=stack.proxy_url, timeout=30) as client:

        async def call(count: int) -> None:
            for _ in range(count):
                response = await client.post(
                    "/v1/chat/completions",
                    headers={"Authorization": "Bearer sk-test", "Candela-Auth": f"Bearer {key.api_key}"},
                    json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
                )
                assert response.status_code == 200, response.text
                served.append(response.headers["Candela-Id"])

        await call(10)
        await asyncio.to_thread(stack.stop_component, Component.INGEST)
        await call(20)  # served while ingest is down: the proxy spools the logs
        await asyncio.to_thread(stack.start_component, Component.INGEST)
    # The bootstrap organization is this test's alone: every request it served is a log.
    await _assert_exact(stack, key.organization_id, len(served))


async def test_bad_input_is_refused_whole_and_writes_nothing(stack: Stack) -> None:
    organization_id = await _organization(stack)
    good = _record(organization_id)
    oversized = _record(organization_id)
    oversized.properties["blob"] = "x" * (300 * 1024)  # metadata beyond the 256 KiB a Kafka message may carry
    bad_ids = _record(organization_id)
    bad_ids.request_id = "42"
    no_organization = _record("")
    items = [pb.IngestRecord(record=r, request_body=b"body") for r in (good, oversized, bad_ids, no_organization)]
    metadata = service_metadata(stack.service_token)
    async with grpc.aio.insecure_channel(stack.ingest_addr, options=[("grpc.max_send_message_length", -1)]) as channel:
        stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Ingest(pb.IngestRequest(records=items), metadata=metadata, timeout=15)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = rpc_error_status(caught.value)
        assert status is not None
        assert [v.field for v in bad_request_violations(status)] == [
            "records[1].record",
            "records[2].record.request_id",
            "records[3].record.organization_id",
        ]
        unknown = pb.IngestRecord(record=_record(str(uuid.uuid4())), request_body=b"body")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Ingest(pb.IngestRequest(records=[items[0], unknown]), metadata=metadata, timeout=15)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = rpc_error_status(caught.value)
        assert status is not None
        assert [(v.field, v.description) for v in bad_request_violations(status)] == [
            ("records[1].record.organization_id", "no such organization")
        ]
        # A valid batch after it: once its log is visible, the refused batch's good record is provably absent.
        sentinel = Sender(stack, organization_id)
        await sentinel.send(1)
    await _assert_exact(stack, organization_id, BATCH)
    s3 = seaweed.client(stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key)
    try:
        listing = await asyncio.to_thread(
            s3.list_objects_v2, Bucket=stack.s3_bucket, Prefix=f"bodies/{organization_id}/"
        )
    finally:
        s3.close()
    assert listing.get("KeyCount") == 1, "only the sentinel batch's object; nothing of the refused batch"


def _batch(organization_id: str) -> pb.IngestRequest:
    return pb.IngestRequest(
        records=[pb.IngestRecord(record=_record(organization_id), response_body=b"answer " * 50) for _ in range(20)]
    )


async def _health(address: str, service: str = "") -> str:
    """The grpc.health.v1 status of ``service`` at ``address``, by name."""
    async with grpc.aio.insecure_channel(address) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


async def _wait_health(address: str, wanted: str, timeout_s: float = 60.0, service: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    status = ""
    while time.monotonic() < deadline:
        status = await _health(address, service)
        if status == wanted:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"health of {address} stayed {status}, not {wanted}")


async def _samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample a process exports: (name, sorted labels) -> value."""
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def _timeouts(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], store: str) -> float:
    return sum(
        value
        for (name, labels), value in samples.items()
        if name == "candela_store_timeouts_total" and ("store", store) in labels
    )


async def _writer_timeouts(stack: Stack) -> float:
    """Kafka calls of every writer that ran past their deadline (commits, dead letters, probes)."""
    return sum([_timeouts(await _samples(port), "kafka") for port in stack.writer_metrics_ports()])


@contextlib.contextmanager
def _stopped(stack: Stack, component: Component) -> Iterator[None]:
    """The component's processes SIGSTOPped (a stalled store: connections open, nothing answers), then
    SIGCONTinued whatever happens."""
    groups = [process.pid for process in stack.processes_of(component)]
    for group in groups:
        os.killpg(group, signal.SIGSTOP)
    try:
        yield
    finally:
        for group in groups:
            os.killpg(group, signal.SIGCONT)


async def test_stalled_s3_is_refused_in_time_reported_and_recovers(stack: Stack) -> None:
    """SeaweedFS stops answering (as when it ran out of writable volumes): Ingest answers UNAVAILABLE within
    its deadline rather than hanging, health and metrics say S3 is stalled, and after it answers again
    every acknowledged log is stored exactly once."""
    sender = Sender(stack, await _organization(stack))
    await sender.send(2)
    ingest_metrics = stack.metrics_ports()[Component.INGEST]
    assert (await _samples(ingest_metrics))[("candela_store_stalled", (("store", "s3"),))] == 0
    timeouts_before = _timeouts(await _samples(ingest_metrics), "s3")
    metadata = service_metadata(stack.service_token)
    background: asyncio.Task[None] | None = None
    try:
        with _stopped(stack, Component.S3):
            async with grpc.aio.insecure_channel(stack.ingest_addr) as channel:
                stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
                started = time.monotonic()
                refused = _batch(sender.organization_id)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Ingest(refused, metadata=metadata, timeout=60)
                elapsed = time.monotonic() - started
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value.details()
            assert "s3" in (caught.value.details() or "").lower()
            assert elapsed < STORE_TIMEOUT_S + 5, f"answered after {elapsed:.1f}s"
            assert await _health(stack.ingest_addr) == "NOT_SERVING"
            assert await _health(stack.ingest_addr, "candela.ingest.v1.IngestService") == "NOT_SERVING"
            samples = await _samples(ingest_metrics)
            assert samples[("candela_store_stalled", (("store", "s3"),))] == 1
            assert _timeouts(samples, "s3") > timeouts_before
            # Logs keep coming while S3 is stalled: none is acknowledged, none is lost.
            background = asyncio.create_task(sender.send(4, pause_s=0.1))
            await asyncio.sleep(2 * STORE_TIMEOUT_S)
            acknowledged_while_stalled = len(sender.acknowledged)
    finally:
        if background is not None:
            await asyncio.wait_for(background, 180)
    await _wait_health(stack.ingest_addr, "SERVING")
    assert (await _samples(ingest_metrics))[("candela_store_stalled", (("store", "s3"),))] == 0
    assert acknowledged_while_stalled == 2 * BATCH
    assert sender.refusals > 0
    await sender.resend(refused)
    await _assert_exact(stack, sender.organization_id, len(sender.acknowledged))


async def test_stalled_broker_is_refused_in_time_reported_and_recovers(stack: Stack) -> None:
    """The broker stops answering while logs flow: ingest answers UNAVAILABLE within its deadline and reports
    Kafka stalled, so does the writer (in health and metrics); afterwards every acknowledged log is stored
    exactly once."""
    sender = Sender(stack, await _organization(stack))
    ingest_metrics = stack.metrics_ports()[Component.INGEST]
    writer_timeouts_before = await _writer_timeouts(stack)
    metadata = service_metadata(stack.service_token)
    async with _background(sender, batches=15, pause_s=0.05):
        await sender.wait_acknowledged(3 * BATCH)
        with _stopped(stack, Component.KAFKA):
            async with grpc.aio.insecure_channel(stack.ingest_addr) as channel:
                stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
                started = time.monotonic()
                refused = _batch(sender.organization_id)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Ingest(refused, metadata=metadata, timeout=60)
                elapsed = time.monotonic() - started
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value.details()
            assert elapsed < STORE_TIMEOUT_S + 5, f"answered after {elapsed:.1f}s"
            assert await _health(stack.ingest_addr) == "NOT_SERVING"
            assert (await _samples(ingest_metrics))[("candela_store_stalled", (("store", "kafka"),))] == 1
            # A writer probes the broker even between batches; a batch in flight cannot commit (its commit times
            # out, the batch stays uncommitted and is stored again, idempotently, after the stall).
            await _wait_health(stack.writer_addr, "NOT_SERVING", timeout_s=30)
            writer_samples = await _samples(stack.writer_metrics_ports()[0])
            assert writer_samples[("candela_store_stalled", (("store", "kafka"),))] == 1
            assert await _writer_timeouts(stack) > writer_timeouts_before
        await _wait_health(stack.ingest_addr, "SERVING")
        await _wait_health(stack.writer_addr, "SERVING")
    assert (await _samples(ingest_metrics))[("candela_store_stalled", (("store", "kafka"),))] == 0
    await sender.resend(refused)
    await _assert_exact(stack, sender.organization_id, len(sender.acknowledged))
