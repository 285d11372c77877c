"""The bounded ledger: `counted_requests` by day, pruned past its horizon, exact all the same.

Real Postgres (a database of each test's own: pruning moves the horizon for the whole database) and a real
ClickHouse 18.16. Logs go through the writers' own batch path (BatchWriter, the Postgres ledger and the
ClickHouse sink), stamped on past days; pruning and retention are run at the real time.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time as clock
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import asyncpg
import pytest
from prometheus_client import REGISTRY

from candela.logs.v1 import log_record_pb2
from candela_ingest.config import WriterConfig
from candela_ingest.writer.batch import BatchWriter, ConsumedMessage, DeadLetter, RetryPolicy
from candela_ingest.writer.clickhouse import ClickHouseRowSink
from candela_ingest.writer.daily_usage import BatchRequests
from candela_ingest.writer.ledger_horizon import LedgerPruner
from candela_ingest.writer.postgres import PostgresUsageLedger
from candela_ingest.writer.replay import ReplayOptions, _warn_of_late_letters
from candela_ingest.writer.retention import RetentionSweeper
from candela_ingest.writer.rows import request_columns
from candela_schema import migrator
from candela_stack.postgres import create_database, drop_database, with_database
from candela_stack.stack import Component, Stack, StackConfig
from tests.integration.test_ingest_pipeline import (
    InProcessWriter,
    _create_topics,
    _eventually,
    _log_message,
    _produce,
    _query_clickhouse,
    _record,
    _writer_config,
    start_writer,
)

pytestmark = pytest.mark.integration
__all__ = ["start_writer"]  # the fixture, imported so pytest finds it here

HORIZON_DAYS = 3


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """ClickHouse (each test has its own organizations there), the stack's Postgres and Kafka."""
    config = StackConfig.for_tests(
        tmp_path_factory.mktemp("ledger-horizon"),
        components=frozenset({Component.POSTGRES, Component.CLICKHOUSE, Component.KAFKA}),
    )
    with Stack(config) as running:
        yield running


class _NoDeadLetters:
    """The dead-letter sink of these tests: every log here is valid, so a dead letter is a failure."""

    async def publish(self, letters: Sequence[DeadLetter]) -> None:
        raise AssertionError(f"unexpected dead letters: {[letter.error for letter in letters]}")


@dataclass
class Ledger:
    """A migrated database of the test's own, and the writer parts that use it."""

    dsn: str
    pool: asyncpg.Pool
    rows: ClickHouseRowSink
    writer: BatchWriter
    offset: int = 0

    async def write(self, records: Sequence[log_record_pb2.LogRecord]) -> int:
        """Writes the logs as one batch, as a writer does; returns how many were newly counted."""
        messages = []
        for record in records:
            self.offset += 1
            value = _log_message(record).SerializeToString()
            messages.append(ConsumedMessage("logs", 0, self.offset, record.request_id.encode(), value))
        outcome = await self.writer.write(messages, asyncio.Event())
        assert outcome.dead_letters == 0
        return outcome.newly_counted

    async def fetch(self, statement: str, *args: object) -> list[asyncpg.Record]:
        return list(await self.pool.fetch(statement, *args))

    async def partitions(self) -> list[str]:
        rows = await self.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'counted_requests'::regclass ORDER BY 1"
        )
        return [row[0] for row in rows]

    async def usage(self, organization_id: str) -> tuple[int, Decimal]:
        rows = await self.fetch(
            "SELECT coalesce(sum(request_count), 0), coalesce(sum(cost_usd), 0) FROM organization_usage_daily"
            " WHERE organization_id = $1",
            uuid.UUID(organization_id),
        )
        return int(rows[0][0]), Decimal(rows[0][1])

    async def counters(self, organization_id: str) -> tuple[int, int, int]:
        rows = await self.fetch(
            "SELECT stored_logs, dropped_over_limit, expired_logs FROM organization_log_counters"
            " WHERE organization_id = $1",
            uuid.UUID(organization_id),
        )
        return (int(rows[0][0]), int(rows[0][1]), int(rows[0][2])) if rows else (0, 0, 0)

    async def organization(self, max_stored_logs: int | None = None, retention_days: int | None = None) -> str:
        organization_id = uuid.uuid4()
        await self.pool.execute(
            "INSERT INTO organizations (id, name, max_stored_logs, retention_days) VALUES ($1, 'ledger', $2, $3)",
            organization_id,
            max_stored_logs,
            retention_days,
        )
        return str(organization_id)


async def _migrated_database(admin_dsn: str, before: str | None = None) -> str:
    name = f"candela_test_{secrets.token_hex(6)}"
    create_database(admin_dsn, name)
    dsn = with_database(admin_dsn, name)
    shipped = migrator.load(migrator.POSTGRES)
    await migrator._apply_postgres(dsn, [m for m in shipped if before is None or m.name < before])
    return dsn


@pytest.fixture
async def ledger(stack: Stack, postgres_admin_dsn: str) -> AsyncIterator[Ledger]:
    dsn = await _migrated_database(postgres_admin_dsn)
    pool = await asyncpg.create_pool(dsn, min_size=0, max_size=4)
    rows = ClickHouseRowSink(
        host=stack.clickhouse_host,
        port=stack.clickhouse_port,
        database=stack.clickhouse_database,
        user=stack.clickhouse_user,
        password=stack.clickhouse_password,
    )
    writer = BatchWriter(
        rows=rows,
        ledger=PostgresUsageLedger(pool),
        dead_letters=_NoDeadLetters(),
        retry=RetryPolicy(max_attempts=1, initial_backoff_s=0.05, max_backoff_s=0.2),
    )
    try:
        yield Ledger(dsn, pool, rows, writer)
    finally:
        await rows.close()
        await pool.close()
        drop_database(postgres_admin_dsn, dsn.rsplit("/", 1)[1])


def _today() -> date:
    return datetime.now(UTC).date()


def _log(organization_id: str, day: date, at: time = time(12), cost: str = "0.000100") -> log_record_pb2.LogRecord:
    record = _record(organization_id, cost=cost)
    record.created_at.FromDatetime(datetime.combine(day, at, tzinfo=UTC))
    return record


def _copy(record: log_record_pb2.LogRecord) -> log_record_pb2.LogRecord:
    copy = log_record_pb2.LogRecord()
    copy.CopyFrom(record)
    return copy


async def _stored(stack: Stack, organization_id: str) -> int:
    rows = await _query_clickhouse(
        stack, "SELECT count() FROM requests FINAL WHERE organization_id = %(o)s", {"o": uuid.UUID(organization_id)}
    )
    return int(rows[0][0])


def _late_logs() -> float:
    return REGISTRY.get_sample_value("candela_writer_late_logs_total") or 0.0


async def test_pruning_drops_exactly_the_days_past_the_horizon(stack: Stack, ledger: Ledger) -> None:
    organization_id = await ledger.organization()
    today = _today()
    # Two logs on each of the last six days (one of them on the horizon's first day, one on the day before).
    for back in range(6):
        assert await ledger.write([_log(organization_id, today - timedelta(days=back)) for _ in range(2)]) == 2
    days = [today - timedelta(days=back) for back in range(6)]
    assert {f"counted_requests_p{day:%Y%m%d}" for day in days} <= set(await ledger.partitions())

    outcome = await LedgerPruner(ledger.pool, HORIZON_DAYS).prune(datetime.now(UTC))

    oldest = today - timedelta(days=HORIZON_DAYS)
    assert outcome.oldest_day == oldest
    past = [day for day in days if day < oldest]
    assert sorted(outcome.dropped) == sorted(f"counted_requests_p{day:%Y%m%d}" for day in past)
    assert outcome.rolled_up_logs == 2 * len(past)
    remaining = await ledger.partitions()
    # What is left: the horizon's days and the three days ahead, nothing before the horizon.
    expected = {f"counted_requests_p{(oldest + timedelta(days=d)):%Y%m%d}" for d in range(HORIZON_DAYS + 3)}
    assert set(remaining) == expected
    ledger_days = await ledger.fetch(
        "SELECT (created_at AT TIME ZONE 'UTC')::date AS day, count(*) FROM counted_requests GROUP BY 1 ORDER BY 1"
    )
    assert [(row[0], row[1]) for row in ledger_days] == [(day, 2) for day in sorted(days) if day >= oldest]
    rolled = await ledger.fetch(
        "SELECT day, stored_logs FROM organization_stored_log_days WHERE organization_id = $1 ORDER BY day",
        uuid.UUID(organization_id),
    )
    assert [(row[0], row[1]) for row in rolled] == [(day, 2) for day in sorted(past)]
    # Nothing is dropped from what the organization has: usage, counters and rows are untouched.
    assert (await ledger.usage(organization_id))[0] == 12
    assert await ledger.counters(organization_id) == (12, 0, 0)
    assert await _stored(stack, organization_id) == 12

    again = await LedgerPruner(ledger.pool, HORIZON_DAYS).prune(datetime.now(UTC))
    assert (again.dropped, again.rolled_up_logs) == ((), 0), "a second pruning finds nothing more"
    # A longer horizon set later does not bring dropped days back, and no partition is made before it.
    longer = await LedgerPruner(ledger.pool, HORIZON_DAYS + 10).prune(datetime.now(UTC))
    assert longer.oldest_day == oldest
    created = await ledger.pool.fetchval("SELECT candela_create_ledger_partitions($1::date[])", [past[0]])
    assert created == 0
    assert set(await ledger.partitions()) == expected


async def test_pruning_waits_out_a_transaction_that_holds_the_ledger_and_drops_after_it(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    """The DROP's lock wait is bounded (writers queue behind it) and tried again, without losing the roll-up."""
    organization_id = await ledger.organization()
    old_day = _today() - timedelta(days=HORIZON_DAYS + 1)
    assert await ledger.write([_log(organization_id, old_day)]) == 1
    holder = await asyncpg.connect(ledger.dsn)
    try:
        holding = holder.transaction()
        await holding.start()
        await holder.fetch("SELECT 1 FROM counted_requests LIMIT 1")  # a lock on the ledger, as a reader holds

        async def release_later() -> None:
            await asyncio.sleep(7.0)  # past one lock wait (5 s)
            await holding.commit()

        release = asyncio.create_task(release_later())
        started = clock.monotonic()
        with caplog.at_level(logging.INFO, logger="candela_ingest.writer.ledger_horizon"):
            outcome = await LedgerPruner(ledger.pool, HORIZON_DAYS).prune(datetime.now(UTC))
        waited = clock.monotonic() - started
        await release
    finally:
        await holder.close()
    assert outcome.dropped == (f"counted_requests_p{old_day:%Y%m%d}",)
    assert outcome.rolled_up_logs == 1
    assert waited >= 7.0, "the drop waited for the transaction"
    assert any("is busy, dropping it again" in record.getMessage() for record in caplog.records), (
        "each wait is bounded: the first one gave up and the drop was tried again"
    )
    rolled = await ledger.fetch("SELECT stored_logs FROM organization_stored_log_days WHERE day = $1", old_day)
    assert [row[0] for row in rolled] == [1], "rolled up once, though the first drop timed out"


async def test_a_copy_within_the_horizon_is_not_counted_twice_and_reuses_are_caught_across_midnight(
    stack: Stack, ledger: Ledger
) -> None:
    organization_id = await ledger.organization()
    today = _today()
    first_day = today - timedelta(days=HORIZON_DAYS)  # the oldest day the pruned ledger keeps
    kept = [_log(organization_id, first_day), _log(organization_id, today)]
    before_midnight = _log(organization_id, today - timedelta(days=1), time(23, 59, 59), cost="0.000001")
    after_midnight = _log(organization_id, today, time(0, 0, 1), cost="0.000002")
    assert await ledger.write([*kept, before_midnight, after_midnight]) == 4
    old = _log(organization_id, today - timedelta(days=HORIZON_DAYS + 1))
    assert await ledger.write([old]) == 1
    await LedgerPruner(ledger.pool, HORIZON_DAYS).prune(datetime.now(UTC))
    usage = await ledger.usage(organization_id)

    # Copies (redeliveries, replays: same creation time) of logs inside the horizon, twice over.
    for _ in range(2):
        assert await ledger.write([_copy(record) for record in (*kept, before_midnight, after_midnight)]) == 0
    # The same request ids with other creation times: the same day, and across midnight both ways.
    same_day = _copy(kept[1])
    same_day.created_at.FromDatetime(datetime.combine(today, time(13), tzinfo=UTC))
    next_day = _copy(before_midnight)
    next_day.created_at.FromDatetime(datetime.combine(today, time(0, 0, 30), tzinfo=UTC))
    day_before = _copy(after_midnight)
    day_before.created_at.FromDatetime(datetime.combine(today - timedelta(days=1), time(23, 59, 30), tzinfo=UTC))
    reused_before = REGISTRY.get_sample_value("candela_writer_request_ids_reused_total") or 0.0
    for reuse in (same_day, next_day, day_before):
        assert await ledger.write([reuse]) == 0, "a reuse of a counted request id is not counted"
    reused_after = REGISTRY.get_sample_value("candela_writer_request_ids_reused_total") or 0.0

    assert reused_after - reused_before == 3
    assert await ledger.usage(organization_id) == usage == (5, Decimal("0.000303"))
    assert await ledger.counters(organization_id) == (5, 0, 0)
    assert await _stored(stack, organization_id) == 5
    by_id = await _query_clickhouse(
        stack,
        "SELECT toString(request_id), created_at_us FROM requests FINAL WHERE organization_id = %(o)s",
        {"o": uuid.UUID(organization_id)},
    )
    stamps = dict(by_id)
    for first in (before_midnight, after_midnight, kept[1]):
        assert stamps[first.request_id] == first.created_at.ToMicroseconds(), "the first log of the id is kept"
    ledger_rows = await ledger.fetch("SELECT count(*) FROM counted_requests")
    assert ledger_rows[0][0] == 4, "the reuses left no entry behind (the day past the horizon is gone)"


async def test_a_copy_older_than_the_horizon_is_refused_not_counted_twice(
    stack: Stack, ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    organization_id = await ledger.organization()
    today = _today()
    old_day = today - timedelta(days=HORIZON_DAYS + 2)
    counted = [_log(organization_id, old_day) for _ in range(3)]
    assert await ledger.write(counted) == 3
    await LedgerPruner(ledger.pool, HORIZON_DAYS).prune(datetime.now(UTC))
    usage = await ledger.usage(organization_id)
    assert usage[0] == 3
    late_before = _late_logs()

    # A replay of the old window (copies), a log never seen of the same old day, and a fresh log, in one batch.
    never_seen = _log(organization_id, old_day)
    fresh = _log(organization_id, today)
    with caplog.at_level(logging.WARNING, logger="candela_ingest.writer.batch"):
        newly = await ledger.write([*(_copy(record) for record in counted), never_seen, fresh])

    assert newly == 1, "only the fresh log is counted"
    assert _late_logs() - late_before == 4
    assert any("before the ledger horizon" in record.getMessage() for record in caplog.records)
    assert (await ledger.usage(organization_id))[0] == 4
    assert await ledger.counters(organization_id) == (4, 0, 0)
    assert await _stored(stack, organization_id) == 4, "a late log is not stored either (it could not be counted)"
    rows = await _query_clickhouse(
        stack,
        "SELECT count() FROM requests FINAL WHERE organization_id = %(o)s AND request_id = %(r)s",
        {"o": uuid.UUID(organization_id), "r": uuid.UUID(never_seen.request_id)},
    )
    assert rows == [(0,)]
    assert (
        await ledger.fetch("SELECT 1 FROM counted_requests WHERE request_id = $1", uuid.UUID(never_seen.request_id))
        == []
    )


async def test_replaying_parked_letters_warns_of_those_parked_before_the_horizon(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    now = datetime.now(UTC)
    for offset, parked_days_ago in enumerate((HORIZON_DAYS + 5, HORIZON_DAYS + 4, 1)):
        await ledger.pool.execute(
            "INSERT INTO parked_dead_letters (dlq_topic, dlq_partition, dlq_offset, source_topic, message_value,"
            " headers, error, attempts, parked_at) VALUES ('dlq', 0, $1, 'logs', '', '[]', 'e', 3, $2)",
            offset,
            now - timedelta(days=parked_days_ago),
        )
    options = ReplayOptions("parked", "127.0.0.1:1", "logs", "dlq", ledger.dsn, None, None, False)
    connection = await asyncpg.connect(ledger.dsn)
    try:
        with caplog.at_level(logging.WARNING, logger="candela_ingest.writer.replay"):
            await _warn_of_late_letters(connection, options)
            assert caplog.records == [], "nothing is late before the ledger was ever pruned"
            await LedgerPruner(ledger.pool, HORIZON_DAYS).prune(now)
            await _warn_of_late_letters(connection, options)
    finally:
        await connection.close()
    assert [record.getMessage().split(" of these")[0] for record in caplog.records] == ["2"]


async def test_limits_and_retention_stay_exact_across_dropped_days(stack: Stack, ledger: Ledger) -> None:
    """stored_logs always equals the rows ClickHouse keeps, through over-limit drops, pruning and retention
    cutoffs inside and outside the horizon; expiry frees room under the limit."""
    today = _today()
    # Retention longer than the horizon: its cutoff falls on a dropped day.
    long_kept = await ledger.organization(max_stored_logs=7, retention_days=HORIZON_DAYS + 2)
    # Retention shorter than the horizon: its cutoff falls inside the ledger, exact to the microsecond.
    short_kept = await ledger.organization(retention_days=1)
    for back in range(HORIZON_DAYS + 5, -1, -1):  # oldest first: the limit keeps the first logs counted
        day = today - timedelta(days=back)
        await ledger.write([_log(long_kept, day, time(hour)) for hour in (1, 23)])
    short_logs = [
        _log(short_kept, today - timedelta(days=1), time(0)),
        _log(short_kept, today - timedelta(days=2), time(12)),
        _log(short_kept, today, time(0)),
    ]
    await ledger.write(short_logs)
    total_days = HORIZON_DAYS + 6
    assert await ledger.counters(long_kept) == (7, 2 * total_days - 7, 0)
    assert await _stored(stack, long_kept) == 7

    now = datetime.now(UTC)
    pruned = await LedgerPruner(ledger.pool, HORIZON_DAYS).prune(now)
    assert pruned.rolled_up_logs == 7, "only the stored logs of the dropped days are kept per day"
    assert await ledger.counters(long_kept) == (7, 2 * total_days - 7, 0)

    expired = await RetentionSweeper(ledger.pool, ledger.rows).sweep(now)
    # The cutoff, now - (horizon + 2) days, is taken back to the start of its day: the days before it go.
    cutoff_day = (now - timedelta(days=HORIZON_DAYS + 2)).date()
    # The stored logs are the first seven counted: both of each of the three oldest days, one of the fourth.
    stored_days = {today - timedelta(days=back): 2 for back in (HORIZON_DAYS + 5, HORIZON_DAYS + 4, HORIZON_DAYS + 3)}
    stored_days[today - timedelta(days=HORIZON_DAYS + 2)] = 1
    gone_stored = sum(count for day, count in stored_days.items() if day < cutoff_day)
    assert expired[uuid.UUID(long_kept)] == gone_stored
    short_cutoff = now - timedelta(days=1)
    short_gone = sum(1 for record in short_logs if record.created_at.ToDatetime(UTC) < short_cutoff)
    assert expired[uuid.UUID(short_kept)] == short_gone
    assert await RetentionSweeper(ledger.pool, ledger.rows).sweep(now) == {
        uuid.UUID(long_kept): 0,
        uuid.UUID(short_kept): 0,
    }, "a second sweep finds nothing more"

    async def rows_kept(organization_id: str) -> int:
        for _ in range(100):  # the deletes are background mutations
            count = await _stored(stack, organization_id)
            if count == (await ledger.counters(organization_id))[0]:
                return count
            await asyncio.sleep(0.1)
        return await _stored(stack, organization_id)

    assert await ledger.counters(long_kept) == (7 - gone_stored, 2 * total_days - 7, gone_stored)
    assert await rows_kept(long_kept) == 7 - gone_stored
    assert await ledger.counters(short_kept) == (3 - short_gone, 0, short_gone)
    assert await rows_kept(short_kept) == 3 - short_gone
    # The room freed under the limit takes new logs again, exactly as much as expired.
    fresh = [_log(long_kept, today, time(6, minute)) for minute in range(gone_stored + 2)]
    assert await ledger.write(fresh) == len(fresh)
    assert (await ledger.counters(long_kept))[0] == 7
    assert await rows_kept(long_kept) == 7


async def test_the_partitioning_migration_keeps_existing_ledger_rows_and_their_meaning(
    postgres_admin_dsn: str,
) -> None:
    """Migration 0007 on a ledger with rows: all kept (as the legacy partition), still recognised as counted,
    and dropped whole, rolled up, once its last day is past the horizon."""
    dsn = await _migrated_database(postgres_admin_dsn, before="0007")
    organization_id = uuid.uuid4()
    today = _today()
    old_stored, old_dropped, current = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    old_at = datetime.combine(today - timedelta(days=40), time(8), tzinfo=UTC)
    now_at = datetime.combine(today, time(0, 30), tzinfo=UTC)
    try:
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute(
                "INSERT INTO counted_requests (request_id, organization_id, created_at, stored)"
                " VALUES ($1, $4, $5, true), ($2, $4, $5, false), ($3, $4, $6, true)",
                old_stored,
                old_dropped,
                current,
                organization_id,
                old_at,
                now_at,
            )
            await asyncio.to_thread(migrator.apply_postgres, dsn)
            rows = await connection.fetch(
                "SELECT request_id, created_at, stored, tableoid::regclass::text AS partition FROM counted_requests"
                " ORDER BY created_at, stored"
            )
            horizon = await connection.fetchrow("SELECT oldest_day, legacy_until FROM counted_requests_horizon")
        finally:
            await connection.close()
        assert [(r["request_id"], r["created_at"], r["stored"], r["partition"]) for r in rows] == [
            (old_dropped, old_at, False, "counted_requests_legacy"),
            (old_stored, old_at, True, "counted_requests_legacy"),
            (current, now_at, True, "counted_requests_legacy"),
        ]
        assert (horizon["oldest_day"], horizon["legacy_until"]) == (None, today + timedelta(days=1))

        pool = await asyncpg.create_pool(dsn, min_size=0, max_size=2)
        try:
            ledger = PostgresUsageLedger(pool)

            # The migrated rows are still the ledger: copies of them are not counted again, and their storage
            # decision holds; a new log of today goes to the legacy partition, tomorrow's to its own day.
            def batch(*logs: tuple[uuid.UUID, datetime]) -> BatchRequests:
                records = []
                for request_id, at in logs:
                    record = _record(str(organization_id))
                    record.request_id = str(request_id)
                    record.created_at.FromDatetime(at)
                    records.append(_log_message(record))
                return BatchRequests.of(request_columns(records, 1))

            tomorrow_id, today_id = uuid.uuid4(), uuid.uuid4()
            tomorrow_at = datetime.combine(today + timedelta(days=1), time(1), tzinfo=UTC)
            logs = [(old_stored, old_at), (old_dropped, old_at), (current, now_at), (today_id, now_at)]
            async with ledger.counting(batch(*logs, (tomorrow_id, tomorrow_at))) as outcome:
                pass
            assert outcome.newly_counted == 2
            assert outcome.not_stored == frozenset({(str(organization_id), str(old_dropped))})
            placed = dict(
                (row[0], row[1])
                for row in await pool.fetch(
                    "SELECT request_id, tableoid::regclass::text FROM counted_requests WHERE request_id = ANY($1)",
                    [today_id, tomorrow_id],
                )
            )
            assert placed == {
                today_id: "counted_requests_legacy",
                tomorrow_id: f"counted_requests_p{today + timedelta(days=1):%Y%m%d}",
            }

            # The legacy partition goes only when its last day (today) is past the horizon: tomorrow + horizon.
            kept = await LedgerPruner(pool, HORIZON_DAYS).prune(datetime.now(UTC))
            assert kept.dropped == ()
            later = datetime.now(UTC) + timedelta(days=HORIZON_DAYS + 1)
            pruned = await LedgerPruner(pool, HORIZON_DAYS).prune(later)
            assert "counted_requests_legacy" in pruned.dropped
            assert f"counted_requests_p{today + timedelta(days=1):%Y%m%d}" not in pruned.dropped
            rolled = await pool.fetch(
                "SELECT day, stored_logs FROM organization_stored_log_days WHERE organization_id = $1 ORDER BY day",
                organization_id,
            )
            assert [(row[0], row[1]) for row in rolled] == [(old_at.date(), 1), (today, 2)]
        finally:
            await pool.close()
    finally:
        drop_database(postgres_admin_dsn, dsn.rsplit("/", 1)[1])


async def test_a_running_writer_prunes_its_ledger_and_refuses_a_late_copy_from_kafka(
    stack: Stack, ledger: Ledger, start_writer: Callable[[WriterConfig], InProcessWriter]
) -> None:
    """The wiring: the writer's maintenance task prunes (CANDELA_LEDGER_HORIZON_DAYS), and a copy of a pruned
    day's log that comes back through Kafka is refused by the writer's own batch path."""
    organization_id = await ledger.organization()
    old = _log(organization_id, _today() - timedelta(days=HORIZON_DAYS + 1))
    assert await ledger.write([old]) == 1
    old_partition = f"counted_requests_p{old.created_at.ToDatetime(UTC).date():%Y%m%d}"
    topics = await _create_topics(stack.kafka_bootstrap, partitions=1)
    config = _writer_config(
        stack, topics, postgres_dsn=ledger.dsn, retention_interval_s=0.5, ledger_horizon_days=HORIZON_DAYS
    )
    writer = start_writer(config)
    partitions = await _eventually(ledger.partitions, lambda names: old_partition not in names)
    assert old_partition not in partitions
    late_before = _late_logs()
    fresh = _log(organization_id, _today())
    await _produce(stack.kafka_bootstrap, topics.logs, [
        (record.request_id.encode(), _log_message(record).SerializeToString()) for record in (_copy(old), fresh)
    ])  # fmt: skip
    await _eventually(lambda: ledger.usage(organization_id), lambda usage: usage[0] >= 2)
    stats = await writer.finish()
    assert stats.ledger_prunings >= 1
    assert _late_logs() - late_before == 1
    assert (await ledger.usage(organization_id))[0] == 2, "the old log once, the fresh one once"
    assert await _stored(stack, organization_id) == 2
