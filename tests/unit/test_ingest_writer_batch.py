"""The writer's batch logic against in-memory stores: idempotence, retries, poison isolation, dead letters."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from candela.logs.v1 import log_record_pb2
from candela_ingest.propagation import extract_context, inject_headers, links_from
from candela_ingest.writer.batch import (
    BatchAborted,
    BatchWriter,
    ConsumedMessage,
    DeadLetter,
    Decoded,
    RetryPolicy,
    decode,
)
from candela_ingest.writer.daily_usage import BatchRequests, RequestKey
from candela_ingest.writer.dead_letters import ATTEMPTS_HEADER, ERROR_HEADER, dead_letter_headers
from candela_ingest.writer.errors import StoreRejected, StoreUnavailable
from candela_ingest.writer.postgres import LedgerOutcome
from candela_ingest.writer.rows import REQUEST_COLUMNS, RequestColumns, Row
from tests.factories import log_message

pytestmark = [pytest.mark.unit, pytest.mark.wire]

ORG = str(uuid.uuid4())
FAST_RETRY = RetryPolicy(max_attempts=2, initial_backoff_s=0.001, max_backoff_s=0.004)
_MODEL = REQUEST_COLUMNS.index("model")
_REQUEST_ID = REQUEST_COLUMNS.index("request_id")


class FakeRows:
    """A requests table keyed like ReplacingMergeTree; rejects rows of model 'poison'."""

    def __init__(self, unavailable_calls: int = 0) -> None:
        self.rows: dict[str, Row] = {}
        self.scores: dict[tuple[str, str, str], Row] = {}
        self.calls = 0
        self.unavailable_calls = unavailable_calls

    async def insert(self, columns: RequestColumns) -> None:
        rows = columns.rows()
        self.calls += 1
        if self.unavailable_calls:
            self.unavailable_calls -= 1
            raise StoreUnavailable("Connection refused")
        if any(row[_MODEL] == "poison" for row in rows):
            raise StoreRejected("Code: 53. Type mismatch")
        for row in rows:
            self.rows[row[_REQUEST_ID]] = row

    async def insert_scores(self, rows: Sequence[Row]) -> None:
        for row in rows:
            # (organization, request, name) -> the row of the newest version, as ReplacingMergeTree keeps.
            key = (row[0], row[1], row[2])
            if key not in self.scores or self.scores[key][5] <= row[5]:
                self.scores[key] = row


class FakeLedger:
    """The counted-requests ledger and a request counter."""

    def __init__(self) -> None:
        self.counted: set[RequestKey] = set()
        self.cost = Decimal(0)

    @asynccontextmanager
    async def counting(self, batch: BatchRequests) -> AsyncIterator[LedgerOutcome]:
        new = [(key, index) for key, index in batch.positions.items() if key not in self.counted]
        # As in Postgres: a store error in the caller's block (the insert) rolls the counting back.
        yield LedgerOutcome(len(new), frozenset())
        for key, index in new:
            self.counted.add(key)
            self.cost += batch.columns["cost_usd"][index]


class FakeDeadLetters:
    """A dead-letter topic that can be down for a number of calls."""

    def __init__(self, unavailable_calls: int = 0) -> None:
        self.letters: list[DeadLetter] = []
        self.unavailable_calls = unavailable_calls

    async def publish(self, letters: Sequence[DeadLetter]) -> None:
        if self.unavailable_calls:
            self.unavailable_calls -= 1
            raise StoreUnavailable("broker down")
        self.letters.extend(letters)


def _log(model: str = "gpt-4o", cost: str = "0.5", request_id: str | None = None) -> log_record_pb2.LogMessage:
    return log_message(
        request_id=request_id,
        organization_id=ORG,
        model=model,
        cost_usd=cost,
        created_at=datetime(2026, 3, 7, tzinfo=UTC),
    )


def _messages(*payloads: bytes | None, partition: int = 0) -> list[ConsumedMessage]:
    return [
        ConsumedMessage(topic="logs", partition=partition, offset=offset, key=b"k", value=payload)
        for offset, payload in enumerate(payloads)
    ]


def _writer(rows: FakeRows, ledger: FakeLedger, dead: FakeDeadLetters, health: list[bool] | None = None) -> BatchWriter:
    async def report(healthy: bool) -> None:
        if health is not None:
            health.append(healthy)

    return BatchWriter(
        rows=rows, ledger=ledger, dead_letters=dead, retry=FAST_RETRY, on_store_health=report, clock_us=lambda: 7
    )


def test_decode_sorts_out_what_is_not_a_valid_log_message() -> None:
    good, garbage, empty, tombstone = _messages(_log().SerializeToString(), b"\xff\xfe garbage \x00", b"", None)
    assert isinstance(decode(good), Decoded)
    letters = [decode(m) for m in (garbage, empty, tombstone)]
    assert all(isinstance(letter, DeadLetter) for letter in letters)
    errors = [letter.error for letter in letters if isinstance(letter, DeadLetter)]
    assert errors[0].startswith("not a candela.logs.v1.LogMessage")
    assert errors[1].startswith("invalid LogMessage: record.request_id: is required")
    assert errors[2] == "the message has no value"


async def test_redelivered_messages_are_stored_and_counted_once() -> None:
    rows, ledger, dead = FakeRows(), FakeLedger(), FakeDeadLetters()
    writer = _writer(rows, ledger, dead)
    logs = [_log(cost="0.25") for _ in range(3)]
    batch = _messages(*(log.SerializeToString() for log in [*logs, logs[0]]))

    first = await writer.write(batch, asyncio.Event())
    again = await writer.write(batch[:2], asyncio.Event())  # Kafka redelivers part of it

    assert (first.stored, first.newly_counted, first.dead_letters) == (4, 3, 0)
    assert (again.stored, again.newly_counted) == (2, 0)
    assert set(rows.rows) == {log.record.request_id for log in logs}
    assert ledger.cost == Decimal("0.75")


async def test_a_poison_message_is_isolated_and_dead_lettered() -> None:
    rows, ledger, dead = FakeRows(), FakeLedger(), FakeDeadLetters()
    logs = [_log(model="poison" if index == 5 else "gpt-4o") for index in range(9)]
    undecodable = b"\x0a\xff\xff\xff"

    outcome = await _writer(rows, ledger, dead).write(
        _messages(*(log.SerializeToString() for log in logs), undecodable), asyncio.Event()
    )

    assert (outcome.stored, outcome.newly_counted, outcome.dead_letters) == (8, 8, 2)
    assert set(rows.rows) == {log.record.request_id for i, log in enumerate(logs) if i != 5}
    by_offset = {letter.message.offset: letter for letter in dead.letters}
    assert set(by_offset) == {5, 9}
    assert by_offset[5].error.startswith("rejected by a store: Code: 53")
    assert by_offset[5].attempts > FAST_RETRY.max_attempts
    assert by_offset[9].attempts == 1
    assert rows.calls < 9, "bisection, not one insert per message"


async def test_a_store_that_is_down_is_retried_not_dead_lettered() -> None:
    rows, ledger, dead = FakeRows(unavailable_calls=5), FakeLedger(), FakeDeadLetters()
    health: list[bool] = []
    logs = [_log() for _ in range(4)]

    outcome = await _writer(rows, ledger, dead, health).write(
        _messages(*(log.SerializeToString() for log in logs)), asyncio.Event()
    )

    assert (outcome.stored, outcome.dead_letters) == (4, 0)
    assert dead.letters == []
    assert rows.calls == 6
    assert health == [False] * 5 + [True]


async def test_postgres_counts_then_clickhouse_inserts_the_rows_it_keeps_then_postgres_commits() -> None:
    """The store step in order: the ledger's transaction counts and decides which rows are not stored, the
    others are inserted while it is open, and it commits only after the insert."""
    events: list[str] = []
    logs = [_log() for _ in range(3)]
    over_limit = (ORG, logs[1].record.request_id)

    class OrderedLedger(FakeLedger):
        @asynccontextmanager
        async def counting(self, batch: BatchRequests) -> AsyncIterator[LedgerOutcome]:
            events.append("count")
            async with super().counting(batch) as outcome:
                yield LedgerOutcome(outcome.newly_counted, frozenset({over_limit}))
            events.append("commit")

    class OrderedRows(FakeRows):
        async def insert(self, columns: RequestColumns) -> None:
            events.append("insert")
            await super().insert(columns)

    rows, ledger = OrderedRows(), OrderedLedger()
    outcome = await _writer(rows, ledger, FakeDeadLetters()).write(
        _messages(*(log.SerializeToString() for log in logs)), asyncio.Event()
    )

    assert events == ["count", "insert", "commit"]
    assert (outcome.stored, outcome.newly_counted) == (3, 3)
    assert set(rows.rows) == {logs[0].record.request_id, logs[2].record.request_id}, "the ledger kept one out"
    assert len(ledger.counted) == 3


async def test_stop_while_a_store_is_down_aborts_without_dead_letters() -> None:
    rows, ledger, dead = FakeRows(unavailable_calls=1_000_000), FakeLedger(), FakeDeadLetters()
    stop = asyncio.Event()
    task = asyncio.create_task(_writer(rows, ledger, dead).write(_messages(_log().SerializeToString()), stop))
    await asyncio.sleep(0.05)
    stop.set()
    with pytest.raises(BatchAborted):
        await task
    assert dead.letters == []
    assert ledger.counted == set()


async def test_dead_letters_wait_for_the_dlq_topic() -> None:
    rows, ledger, dead = FakeRows(), FakeLedger(), FakeDeadLetters(unavailable_calls=3)
    outcome = await _writer(rows, ledger, dead).write(_messages(b"\xff"), asyncio.Event())
    assert outcome.dead_letters == 1
    assert len(dead.letters) == 1


def test_retry_delay_doubles_up_to_the_cap() -> None:
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.5, max_backoff_s=3.0)
    assert [policy.delay(attempt) for attempt in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_dead_letter_headers_keep_the_trace_and_count_attempts() -> None:
    source = ConsumedMessage(
        topic="candela.logs.v1",
        partition=3,
        offset=41,
        key=b"id",
        value=b"\xff",
        headers=(("traceparent", b"00-abc-def-01"), (ERROR_HEADER, b"old error"), (ATTEMPTS_HEADER, b"4")),
    )
    headers = dead_letter_headers(DeadLetter(source, "rejected", attempts=2), datetime(2026, 1, 1, tzinfo=UTC))
    as_dict = dict(headers)
    assert len(headers) == len(as_dict), "no duplicated header"
    assert as_dict["traceparent"] == b"00-abc-def-01"
    assert as_dict[ERROR_HEADER] == b"rejected"
    assert as_dict[ATTEMPTS_HEADER] == b"6"
    assert as_dict["candela-dlq-source-partition"] == b"3"
    assert as_dict["candela-dlq-source-offset"] == b"41"


def test_trace_context_travels_in_headers_and_becomes_links() -> None:
    upstream = SpanContext(trace_id=0x1234, span_id=0x42, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    headers = inject_headers(trace.set_span_in_context(NonRecordingSpan(upstream)))
    assert dict(headers)["traceparent"] == f"00-{0x1234:032x}-{0x42:016x}-01".encode()
    extracted = trace.get_current_span(extract_context(headers)).get_span_context()
    assert (extracted.trace_id, extracted.span_id) == (0x1234, 0x42)

    links = links_from([headers, headers, (), None, [("traceparent", b"garbage")]])
    assert [(link.context.trace_id, link.context.span_id) for link in links] == [(0x1234, 0x42)]
    assert inject_headers() == [], "nothing to propagate outside a span"


def _update(request_id: str, seconds: int, **scores: float) -> ConsumedMessage:
    update = log_record_pb2.LogUpdate(request_id=request_id, organization_id=ORG, scores=scores)
    update.updated_at.FromSeconds(seconds)
    value = log_record_pb2.LogMessage(update=update).SerializeToString()
    return ConsumedMessage("logs", 0, seconds, request_id.encode(), value)


async def test_later_updates_land_on_the_same_score_row_newest_wins_in_any_order() -> None:
    rows, ledger = FakeRows(), FakeLedger()
    writer = BatchWriter(rows=rows, ledger=ledger, dead_letters=FakeDeadLetters(), retry=FAST_RETRY)
    request_id = str(uuid.uuid4())
    newer, older = _update(request_id, 2_000_000_000, accuracy=0.9), _update(request_id, 1_900_000_000, accuracy=0.1)
    feedback = log_record_pb2.LogUpdate(request_id=request_id, organization_id=ORG, feedback=True)
    feedback.updated_at.FromSeconds(1_950_000_000)
    thumbs = ConsumedMessage("logs", 0, 9, None, log_record_pb2.LogMessage(update=feedback).SerializeToString())

    outcome = await writer.write([newer, thumbs, older, newer], asyncio.Event())

    assert (outcome.stored, outcome.newly_counted, outcome.dead_letters) == (4, 0, 0)
    assert ledger.counted == set(), "an update is not a request: usage does not change"
    assert {key[2]: row[3] for key, row in rows.scores.items()} == {"accuracy": 0.9, "feedback": 1.0}
