"""Limits, dead letters (retried, then parked), replay without double counting, retention, and a store outage.

One stack with its own private Postgres cluster (so Postgres can be stopped without touching the
machine's server), ClickHouse 18.16, SeaweedFS and Tansu. Each test has its own topics and organizations.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import operator
import re
import secrets
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from candela.logs.v1 import log_record_pb2
from candela_ingest.config import WriterConfig
from candela_ingest.writer.clickhouse import ClickHouseRowSink
from candela_ingest.writer.replay import ReplayOptions, replay
from candela_ingest.writer.retention import RetentionSweeper
from candela_ingest.writer.rows import RequestColumns
from candela_query.store import RequestStore
from candela_schema import migrator
from candela_stack.postgres import create_database, drop_database, with_database
from candela_stack.stack import Component, Stack, StackConfig
from tests.integration.query_support import DriverRunner
from tests.integration.test_ingest_pipeline import (
    InProcessWriter,
    _clickhouse,
    _committed,
    _create_topics,
    _eventually,
    _log_message,
    _produce,
    _query_clickhouse,
    _read_topic,
    _record,
    _stored_requests,
    _usage,
    _writer_config,
    start_writer,
)

pytestmark = pytest.mark.integration
OUTAGE_S = 30.0
__all__ = ["start_writer"]  # the fixture, imported so pytest finds it here


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A private Postgres cluster, ClickHouse, SeaweedFS S3 and Tansu."""
    config = StackConfig.for_tests(
        tmp_path_factory.mktemp("ingest-limits"),
        components=frozenset({Component.POSTGRES, Component.CLICKHOUSE, Component.S3, Component.KAFKA}),
        own_postgres=True,
    )
    with Stack(config) as running:
        yield running


async def _sql(stack: Stack, statement: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(stack.postgres_dsn)
    try:
        return list(await connection.fetch(statement, *args))
    finally:
        await connection.close()


async def _organization(stack: Stack, max_stored_logs: int | None = None, retention_days: int | None = None) -> str:
    organization_id = str(uuid.uuid4())
    await _sql(
        stack,
        "INSERT INTO organizations (id, name, max_stored_logs, retention_days) VALUES ($1, 'limits', $2, $3)",
        uuid.UUID(organization_id),
        max_stored_logs,
        retention_days,
    )
    return organization_id


async def _counters(stack: Stack, organization_id: str) -> tuple[int, int, int]:
    rows = await _sql(
        stack,
        "SELECT stored_logs, dropped_over_limit, expired_logs FROM organization_log_counters"
        " WHERE organization_id = $1",
        uuid.UUID(organization_id),
    )
    return (int(rows[0][0]), int(rows[0][1]), int(rows[0][2])) if rows else (0, 0, 0)


def _writer_metrics() -> dict[str, float]:
    """The writer's dead-letter and store metrics, from this process's registry (these writers run in-process)."""

    def read(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    return {
        "dead_letters_from_log_topic": read("candela_writer_dead_letters_total", source="log_topic"),
        "dead_letters_from_dlq_retry": read("candela_writer_dead_letters_total", source="dlq_retry"),
        "dead_letters_retried": read("candela_writer_dead_letters_retried_total"),
        "parked": read("candela_writer_dead_letters_parked_total"),
        "rows_inserted": read("candela_writer_rows_inserted_total", table="requests"),
        "usage_counted": read("candela_writer_usage_counted_total"),
        "clickhouse_rejections": read("candela_writer_store_errors_total", store="clickhouse", kind="rejected"),
        "clickhouse_unavailable": read("candela_writer_store_errors_total", store="clickhouse", kind="unavailable"),
        "clickhouse_retries": read("candela_writer_retries_total", store="clickhouse"),
        "postgres_unavailable": read("candela_writer_store_errors_total", store="postgres", kind="unavailable"),
        "postgres_retries": read("candela_writer_retries_total", store="postgres"),
    }


def _messages(records: list[log_record_pb2.LogRecord]) -> list[tuple[bytes, bytes]]:
    return [(r.request_id.encode(), _log_message(r).SerializeToString()) for r in records]


async def test_max_stored_logs_stores_up_to_the_limit_counts_all_and_a_replay_changes_nothing(
    stack: Stack, start_writer: Callable[[WriterConfig], InProcessWriter]
) -> None:
    topics = await _create_topics(stack.kafka_bootstrap, partitions=2)
    organization_id = await _organization(stack, max_stored_logs=5)
    base = datetime.now(UTC) - timedelta(minutes=10)
    records = [_record(organization_id) for _ in range(8)]
    for index, record in enumerate(records):
        record.created_at.FromDatetime(base + timedelta(seconds=index))
    await _produce(stack.kafka_bootstrap, topics.logs, _messages(records))

    writer = start_writer(_writer_config(stack, topics))
    usage = await _eventually(lambda: _usage(stack, organization_id), lambda found: found[0] >= 8)
    await writer.finish()

    assert usage[0] == 8, "every log is counted in usage, stored or not"
    assert await _stored_requests(stack, [organization_id]) == 5
    assert await _counters(stack, organization_id) == (5, 3, 0)
    kept = await _query_clickhouse(
        stack,
        "SELECT toString(request_id) FROM requests FINAL WHERE organization_id = %(o)s",
        {"o": uuid.UUID(organization_id)},
    )
    # Logs are stored in the order they are counted (first come, first stored); nothing stored is evicted.
    assert {row[0] for row in kept} <= {r.request_id for r in records}

    # Replaying the window (twice) neither stores the dropped logs nor counts anything again.
    for _ in range(2):
        await replay(
            ReplayOptions(
                "window",
                stack.kafka_bootstrap,
                topics.logs,
                topics.dlq,
                stack.postgres_dsn,
                since=datetime.now(UTC) - timedelta(hours=1),
                until=None,
                show_progress=False,
            )
        )
    again = start_writer(_writer_config(stack, topics))
    offsets = await _eventually(
        lambda: _committed(stack.kafka_bootstrap, topics.group, topics.logs, 2), lambda found: sum(found.values()) >= 32
    )
    await again.finish()
    assert sum(offsets.values()) == 32, "8 logs, replayed once (8), then again with the first replay's copies (16)"
    assert await _usage(stack, organization_id) == usage
    assert await _stored_requests(stack, [organization_id]) == 5
    assert await _counters(stack, organization_id) == (5, 3, 0)


async def test_poison_messages_are_retried_from_the_dlq_then_parked_and_replayable(
    stack: Stack, start_writer: Callable[[WriterConfig], InProcessWriter]
) -> None:
    topics = await _create_topics(stack.kafka_bootstrap, partitions=1)
    table = f"requests_strict_{secrets.token_hex(4)}"

    # The same table, but a model column of 11 bytes at most: a longer model's row does not fit the column
    # (the insert fails; the writer's own validation cannot know this), like a schema the data outgrew.
    def create() -> None:
        client = _clickhouse(stack)
        try:
            ddl = client.execute("SHOW CREATE TABLE requests")[0][0]
            ddl = ddl.replace(f"{stack.clickhouse_database}.requests", f"{stack.clickhouse_database}.{table}", 1)
            ddl = re.sub(r"\bmodel (LowCardinality\(String\)|String)", "model FixedString(11)", ddl, count=1)
            client.execute(ddl)
        finally:
            client.disconnect()

    await asyncio.to_thread(create)
    organization_id = await _organization(stack)
    good = [_record(organization_id) for _ in range(6)]
    rejected = _record(organization_id)
    rejected.model = "not-in-the-enum"
    garbage = (b"garbage-key", b"\x0a\xff\xff\xff not a LogMessage")
    messages = [*_messages(good[:3]), garbage, *_messages([rejected]), *_messages(good[3:])]
    await _produce(stack.kafka_bootstrap, topics.logs, messages, partition=0)

    config = _writer_config(
        stack, topics, clickhouse_table=table, dlq_retry_delay_s=0.2, dlq_max_retries=2, max_attempts=2
    )
    metrics_before = _writer_metrics()
    writer = start_writer(config)

    async def stored() -> int:
        rows = await _query_clickhouse(
            stack, f"SELECT count() FROM {table} FINAL WHERE organization_id = %(o)s", {"o": uuid.UUID(organization_id)}
        )
        return int(rows[0][0])

    assert await _eventually(stored, lambda n: n >= 6) == 6, "the rest of the partition flowed"
    parked = await _eventually(
        lambda: _sql(
            stack,
            "SELECT message_key, error, attempts FROM parked_dead_letters WHERE dlq_topic = $1 ORDER BY message_key",
            topics.dlq,
        ),
        lambda rows: len(rows) >= 2,
    )
    stats = await writer.finish()
    moved = {name: value - metrics_before[name] for name, value in _writer_metrics().items()}
    assert [bytes(row["message_key"]) for row in parked] == sorted([garbage[0], rejected.request_id.encode()])
    errors = {bytes(row["message_key"]): row["error"] for row in parked}
    assert "not a candela.logs.v1.LogMessage" in errors[garbage[0]]
    assert "rejected by a store" in errors[rejected.request_id.encode()]
    assert all(row["attempts"] >= 2 for row in parked)
    assert stats.parked == 2
    letters = await _read_topic(stack.kafka_bootstrap, topics.dlq, expected=None)
    assert len(letters) == 4, "each poison message went through the DLQ twice (dlq_max_retries=2), then parked"
    # The metrics tell the same story: 2 letters from the log topic, 2 re-queued once, 4 retries, 2 parked;
    # the 6 good logs stored and counted once each; the rejections blamed on ClickHouse and retried.
    assert {name: moved[name] for name in ("dead_letters_from_log_topic", "dead_letters_from_dlq_retry")} == {
        "dead_letters_from_log_topic": 2,
        "dead_letters_from_dlq_retry": 2,
    }
    assert (moved["dead_letters_retried"], moved["parked"]) == (4, 2)
    assert (moved["rows_inserted"], moved["usage_counted"]) == (6, 6)
    assert moved["clickhouse_rejections"] >= 2
    assert moved["clickhouse_retries"] >= 1
    assert await _usage(stack, organization_id) == (6, 600, Decimal("0.000900"), 0)

    # The operator fixes the cause (here: the real table) and replays the parked set, twice: once counted.
    for _ in range(2):
        await replay(
            ReplayOptions(
                "parked", stack.kafka_bootstrap, topics.logs, topics.dlq, stack.postgres_dsn, None, None, False
            )
        )
    pending = await _sql(
        stack, "SELECT count(*) FROM parked_dead_letters WHERE dlq_topic = $1 AND replayed_at IS NULL", topics.dlq
    )
    assert pending[0][0] == 0
    fixed = start_writer(_writer_config(stack, topics, kafka_group=topics.group + "-fixed", dlq_retry_delay_s=0.2))
    assert await _eventually(lambda: _stored_requests(stack, [organization_id]), lambda n: n >= 7) == 7
    await fixed.finish()
    assert (await _usage(stack, organization_id))[0] == 7, "the replayed log counted once; nothing else twice"


async def test_retention_deletes_old_rows_and_frees_room_under_the_limit(
    stack: Stack, start_writer: Callable[[WriterConfig], InProcessWriter]
) -> None:
    topics = await _create_topics(stack.kafka_bootstrap, partitions=1)
    organization_id = await _organization(stack, max_stored_logs=10, retention_days=7)
    old = [_record(organization_id) for _ in range(4)]
    for record in old:
        record.created_at.FromDatetime(datetime.now(UTC) - timedelta(days=30))
    recent = [_record(organization_id) for _ in range(3)]
    await _produce(stack.kafka_bootstrap, topics.logs, _messages(old + recent))
    writer = start_writer(_writer_config(stack, topics))
    await _eventually(lambda: _stored_requests(stack, [organization_id]), lambda n: n >= 7)
    await writer.finish()

    pool = await asyncpg.create_pool(stack.postgres_dsn, min_size=0, max_size=2)
    rows = ClickHouseRowSink(
        host=stack.clickhouse_host,
        port=stack.clickhouse_port,
        database=stack.clickhouse_database,
        user=stack.clickhouse_user,
        password=stack.clickhouse_password,
    )
    try:
        expired = await RetentionSweeper(pool, rows).sweep(datetime.now(UTC))
        again = await RetentionSweeper(pool, rows).sweep(datetime.now(UTC))
    finally:
        await rows.close()
        await pool.close()
    assert expired[uuid.UUID(organization_id)] == 4
    assert again[uuid.UUID(organization_id)] == 0, "a second sweep finds nothing more"
    assert await _eventually(lambda: _stored_requests(stack, [organization_id]), lambda n: n <= 3) == 3
    assert await _counters(stack, organization_id) == (3, 0, 4)
    assert (await _usage(stack, organization_id))[0] == 7, "usage history is not retention's to delete"


async def test_postgres_and_clickhouse_outages_lose_nothing_and_count_nothing_twice(
    stack: Stack, start_writer: Callable[[WriterConfig], InProcessWriter]
) -> None:
    topics = await _create_topics(stack.kafka_bootstrap, partitions=2)
    organization_id = await _organization(stack)
    writer = start_writer(_writer_config(stack, topics, retry_max_backoff_s=1.0))
    first = [_record(organization_id) for _ in range(50)]
    await _produce(stack.kafka_bootstrap, topics.logs, _messages(first))
    stored = await _eventually(lambda: _stored_requests(stack, [organization_id]), lambda n: n >= 50)
    assert stored == 50, writer.state()

    total = 50
    for component in (Component.POSTGRES, Component.CLICKHOUSE):
        metrics_before = _writer_metrics()
        await asyncio.to_thread(stack.stop_component, component)
        during = [_record(organization_id) for _ in range(50)]
        await _produce(stack.kafka_bootstrap, topics.logs, _messages(during))
        await asyncio.sleep(OUTAGE_S)  # the outage itself: the writer keeps retrying meanwhile
        await asyncio.to_thread(stack.start_component, component)
        total += 50
        stored = await _eventually(
            lambda: _stored_requests(stack, [organization_id]), functools.partial(operator.le, total), 60
        )
        moved = {name: value - metrics_before[name] for name, value in _writer_metrics().items()}
        assert stored == total, f"after the {component.value} outage: {writer.state()}; metrics moved: {moved}"
        # The outage is blamed on the right store and retried all along (backoff capped at 1 s over 30 s),
        # and it turned no message into a dead letter.
        store = component.value
        assert moved[f"{store}_unavailable"] >= 10, moved
        assert moved[f"{store}_retries"] == moved[f"{store}_unavailable"], moved
        assert moved["dead_letters_from_log_topic"] == 0

    await writer.finish()
    assert (await _usage(stack, organization_id))[0] == total
    duplicates = await _query_clickhouse(
        stack,
        "SELECT count() - uniqExact(request_id) FROM requests FINAL WHERE organization_id = %(o)s",
        {"o": uuid.UUID(organization_id)},
    )
    assert duplicates == [(0,)]


async def test_postgres_stopping_as_a_batch_commits_leaves_the_writer_storing_and_counting_once(
    stack: Stack, start_writer: Callable[[WriterConfig], InProcessWriter], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Postgres shuts down while a batch's counting commits (its ClickHouse insert done). asyncpg's connection
    is then left mid-operation, and handing it back to the pool raised an error the writer did not take for an
    outage: the writer ended, and nothing after that batch was stored (the outage test above failed so once
    under load, when its stop came right as the first batch committed)."""
    topics = await _create_topics(stack.kafka_bootstrap, partitions=1)
    organization_id = await _organization(stack)
    stopping: list[threading.Thread] = []
    stop_started = asyncio.Event()
    insert = ClickHouseRowSink.insert

    async def insert_then_stop_postgres(self: ClickHouseRowSink, columns: RequestColumns) -> None:
        await insert(self, columns)
        if not stopping:  # the first batch: Postgres goes down as its counting commits
            stopping.append(threading.Thread(target=stack.stop_component, args=(Component.POSTGRES,)))
            stopping[0].start()
            stop_started.set()

    monkeypatch.setattr(ClickHouseRowSink, "insert", insert_then_stop_postgres)
    first = [_record(organization_id) for _ in range(20)]
    await _produce(stack.kafka_bootstrap, topics.logs, _messages(first))
    writer = start_writer(_writer_config(stack, topics, retry_max_backoff_s=1.0))
    await asyncio.wait_for(stop_started.wait(), 30)
    await asyncio.to_thread(stopping[0].join)
    later = [_record(organization_id) for _ in range(20)]
    await _produce(stack.kafka_bootstrap, topics.logs, _messages(later))
    await asyncio.sleep(2)  # the writer retries meanwhile
    await asyncio.to_thread(stack.start_component, Component.POSTGRES)

    usage = await _eventually(lambda: _usage(stack, organization_id), lambda found: found[0] >= 40, 30)
    stored = await _eventually(lambda: _stored_requests(stack, [organization_id]), lambda n: n >= 40, 30)
    assert (usage[0], stored) == (40, 40), writer.state()
    await writer.finish()
    duplicates = await _query_clickhouse(
        stack,
        "SELECT count() - uniqExact(request_id) FROM requests FINAL WHERE organization_id = %(o)s",
        {"o": uuid.UUID(organization_id)},
    )
    assert duplicates == [(0,)]
    assert (await _usage(stack, organization_id))[0] == 40, "the batch committed as Postgres stopped counted once"


async def test_scores_arriving_after_the_log_land_on_one_row_and_count_nothing(
    stack: Stack, start_writer: Callable[[WriterConfig], InProcessWriter]
) -> None:
    topics = await _create_topics(stack.kafka_bootstrap, partitions=2)
    organization_id = await _organization(stack)
    record = _record(organization_id)

    def update(seconds_ago: int, **scores: float) -> tuple[bytes, bytes]:
        change = log_record_pb2.LogUpdate(request_id=record.request_id, organization_id=organization_id, scores=scores)
        change.updated_at.FromDatetime(datetime.now(UTC) - timedelta(seconds=seconds_ago))
        return record.request_id.encode(), log_record_pb2.LogMessage(update=change).SerializeToString()

    # A score before its log, the log, a newer score, a stale one, and the newer one redelivered.
    messages = [update(30, accuracy=0.1), *_messages([record]), update(10, accuracy=0.8), update(20, accuracy=0.5)]
    await _produce(stack.kafka_bootstrap, topics.logs, [*messages, messages[2]])
    writer = start_writer(_writer_config(stack, topics))
    await _eventually(lambda: _stored_requests(stack, [organization_id]), lambda n: n >= 1)
    scores = await _eventually(
        lambda: _query_clickhouse(
            stack,
            "SELECT name, value FROM request_scores FINAL WHERE organization_id = %(o)s AND request_id = %(r)s",
            {"o": uuid.UUID(organization_id), "r": uuid.UUID(record.request_id)},
        ),
        lambda rows: rows == [("accuracy", 0.8)],
    )
    await writer.finish()
    assert scores == [("accuracy", 0.8)], "one row per score; the newest update wins whatever the arrival order"
    assert (await _usage(stack, organization_id))[0] == 1, "updates are not requests"


@contextlib.contextmanager
def _request_store(stack: Stack) -> Iterator[RequestStore]:
    """The query service's store of requests (what the query API reads), on the stack's ClickHouse."""
    runner = DriverRunner.of(stack)
    try:
        yield RequestStore(runner)
    finally:
        runner.close()


async def test_two_organizations_with_one_request_id_are_each_counted_stored_and_see_only_their_own(
    stack: Stack, start_writer: Callable[[WriterConfig], InProcessWriter]
) -> None:
    """Clients choose request ids (Candela-Request-Id): another organization's use of an id must not make a log
    count as a redelivery (usage undercounted) nor inherit that log's storage decision (dropped over a limit)."""
    topics = await _create_topics(stack.kafka_bootstrap, partitions=2)
    full = await _organization(stack, max_stored_logs=0)  # its log is counted, not stored
    later, first_in_batch, second_in_batch = [await _organization(stack) for _ in range(3)]
    across = _record(full, cost="0.000100")
    await _produce(stack.kafka_bootstrap, topics.logs, _messages([across]))
    writer = start_writer(_writer_config(stack, topics))
    await _eventually(lambda: _usage(stack, full), lambda found: found[0] >= 1)
    # The same id again, from another organization, in a later batch; and a pair in one batch.
    reused = _record(later, cost="0.000200")
    reused.request_id = across.request_id
    pair = [_record(first_in_batch, cost="0.000300"), _record(second_in_batch, cost="0.000400")]
    pair[1].request_id = pair[0].request_id
    await _produce(stack.kafka_bootstrap, topics.logs, _messages([reused, *pair]), partition=0)
    await _eventually(lambda: _usage(stack, second_in_batch), lambda found: found[0] >= 1)
    await _eventually(lambda: _usage(stack, first_in_batch), lambda found: found[0] >= 1)
    await _eventually(lambda: _usage(stack, later), lambda found: found[0] >= 1)
    await writer.finish()

    for organization_id, cost in ((full, "0.0001"), (later, "0.0002"), (first_in_batch, "0.0003")):
        usage = await _usage(stack, organization_id)
        assert (usage[0], usage[2]) == (1, Decimal(cost)), f"{organization_id} counted once, with its own cost"
    assert (await _usage(stack, second_in_batch))[:3:2] == (1, Decimal("0.0004"))
    assert await _counters(stack, full) == (0, 1, 0)
    assert await _counters(stack, later) == (1, 0, 0), "stored: the other organization's drop is not inherited"
    assert await _stored_requests(stack, [full]) == 0
    assert await _stored_requests(stack, [later, first_in_batch, second_in_batch]) == 3

    with _request_store(stack) as store:
        assert await store.get(full, uuid.UUID(across.request_id)) is None
        for record in (reused, *pair):
            seen = await store.get(record.organization_id, uuid.UUID(record.request_id))
            assert seen is not None
            assert (seen.record.organization_id, Decimal(seen.record.cost_usd)) == (
                record.organization_id,
                Decimal(record.cost_usd),
            )


async def test_a_request_id_reused_within_an_organization_keeps_its_first_log_everywhere(
    stack: Stack, start_writer: Callable[[WriterConfig], InProcessWriter]
) -> None:
    """The README's rule: the first log of a request id wins. A later log of the organization with that id
    (another creation time) is neither counted nor stored, whether it comes in a later batch or the same one;
    copies of the first log (redeliveries, same creation time) change nothing."""
    topics = await _create_topics(stack.kafka_bootstrap, partitions=2)
    organization_id = await _organization(stack)
    base = datetime.now(UTC) - timedelta(minutes=5)

    def log(request_id: str, seconds: int, cost: str) -> log_record_pb2.LogRecord:
        record = _record(organization_id, cost=cost)
        record.request_id = request_id
        record.created_at.FromDatetime(base + timedelta(seconds=seconds))
        return record

    across, within = str(uuid.uuid4()), str(uuid.uuid4())
    await _produce(stack.kafka_bootstrap, topics.logs, _messages([log(across, 0, "0.000001")]), partition=0)
    reused_before = REGISTRY.get_sample_value("candela_writer_request_ids_reused_total") or 0.0
    writer = start_writer(_writer_config(stack, topics))
    await _eventually(lambda: _usage(stack, organization_id), lambda found: found[0] >= 1)
    later = [
        log(across, 60, "0.000002"),  # reuse, in a later batch
        log(across, 0, "0.000001"),  # a copy of the first log
        log(within, 10, "0.000010"),
        log(within, 70, "0.000020"),  # reuse, in the same batch
    ]
    await _produce(stack.kafka_bootstrap, topics.logs, _messages(later), partition=0)
    offsets = await _eventually(
        lambda: _committed(stack.kafka_bootstrap, topics.group, topics.logs, 2), lambda found: sum(found.values()) >= 5
    )
    await writer.finish()
    assert sum(offsets.values()) == 5

    usage = await _usage(stack, organization_id)
    assert (usage[0], usage[2]) == (2, Decimal("0.000011")), "each id counted once, with its first log's cost"
    assert await _counters(stack, organization_id) == (2, 0, 0)
    rows = await _query_clickhouse(
        stack,
        "SELECT toString(request_id), created_at_us, toString(cost_usd) FROM requests FINAL"
        " WHERE organization_id = %(o)s ORDER BY created_at_us",
        {"o": uuid.UUID(organization_id)},
    )
    first_us = int(base.timestamp()) * 1_000_000 + base.microsecond
    assert [(row[0], int(row[1]) - first_us) for row in rows] == [(across, 0), (within, 10_000_000)]
    with _request_store(stack) as store:
        for request_id, cost in ((across, "0.000001"), (within, "0.00001")):
            seen = await store.get(organization_id, uuid.UUID(request_id))
            assert seen is not None
            assert Decimal(seen.record.cost_usd) == Decimal(cost)
    reused_after = REGISTRY.get_sample_value("candela_writer_request_ids_reused_total") or 0.0
    assert reused_after - reused_before >= 2


async def test_the_ledger_migration_keeps_counted_requests_and_keys_them_per_organization(
    postgres_admin_dsn: str,
) -> None:
    """Migration 0005 on a database holding ledger rows: every row kept (with its stored flag), and another
    organization may then count the same request id."""
    name = f"candela_test_{secrets.token_hex(6)}"
    create_database(postgres_admin_dsn, name)
    dsn = with_database(postgres_admin_dsn, name)
    try:
        shipped = migrator.load(migrator.POSTGRES)
        before = [migration for migration in shipped if migration.name < "0005"]
        assert len(before) < len(shipped)
        await migrator._apply_postgres(dsn, before)
        first, second, request_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute(
                "INSERT INTO counted_requests (request_id, organization_id, created_at, stored)"
                " VALUES ($1, $2, now(), false), ($3, $2, now(), true)",
                request_id,
                first,
                uuid.uuid4(),
            )
            # Up to 0005 only: 0007 partitions the ledger (its own test is in test_ingest_ledger_horizon).
            await migrator._apply_postgres(dsn, [migration for migration in shipped if migration.name < "0006"])
            await connection.execute(
                "INSERT INTO counted_requests (request_id, organization_id, created_at) VALUES ($1, $2, now())",
                request_id,
                second,
            )
            rows = await connection.fetch(
                "SELECT organization_id, stored FROM counted_requests WHERE request_id = $1 ORDER BY stored", request_id
            )
            total = await connection.fetchval("SELECT count(*) FROM counted_requests")
            key = await connection.fetchval(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'counted_requests_pkey'"
            )
        finally:
            await connection.close()
        assert [(row["organization_id"], row["stored"]) for row in rows] == [(first, False), (second, True)]
        assert total == 3
        assert key == "PRIMARY KEY (organization_id, request_id)"
    finally:
        drop_database(postgres_admin_dsn, name)
