"""Storing one batch of consumed messages: decode, count in Postgres and insert into ClickHouse, retry,
isolate poison.

The flow of a batch:

1. Each message is decoded and validated; one that is not a valid LogMessage is a dead letter at once.
2. The valid ones are written (``BatchWriter._store_logs``): one Postgres transaction counts the
   requests not counted before, the rows it lets through go to ClickHouse in one insert while it is
   open, and it commits after the insert. Both are idempotent by request id, so writing a batch again
   (after a failure, a redelivery or a replay) changes nothing that was already written.
3. A store that is unavailable is retried with capped exponential backoff for as long as it takes: an
   outage must not turn every message into a dead letter. A store that rejects the data is retried up to
   ``max_attempts`` times, then the batch is bisected until the messages it rejects on their own are
   found; those become dead letters and the rest is stored.
4. Dead letters are produced to the DLQ topic (and acknowledged) before the caller commits the offsets,
   so a poison message never blocks its partition and is never lost.

If ``stop`` is set while the batch waits to retry, :class:`BatchAborted` is raised and the caller must
not commit: the batch is redelivered to whichever writer owns the partitions next.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from itertools import compress
from typing import NamedTuple, Protocol

from google.protobuf.message import DecodeError
from opentelemetry import trace

from candela.logs.v1 import log_record_pb2
from candela_ingest.wire.validation import check_log_message
from candela_ingest.writer import metrics
from candela_ingest.writer.daily_usage import BatchRequests
from candela_ingest.writer.errors import StoreRejected, StoreUnavailable
from candela_ingest.writer.postgres import LedgerOutcome
from candela_ingest.writer.rows import RequestColumns, Row, checked_request_columns, score_rows, wire_request_columns
from candela_runtime.errors import Violations

logger = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)


class ConsumedMessage(NamedTuple):
    """A message as read from Kafka (independent of the client library).

    A named tuple, not a frozen dataclass: one is made for every message consumed, and a frozen
    dataclass pays a Python-level ``object.__setattr__`` per field (measured: 1.5 us a message).
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_ms: int | None = None
    """The Kafka timestamp (milliseconds since the epoch), when the broker kept one: the commit lag's origin."""

    @property
    def size(self) -> int:
        """Bytes of key and value."""
        return len(self.key or b"") + len(self.value or b"")


class Decoded(NamedTuple):
    """A message that holds a valid LogMessage (a named tuple, as :class:`ConsumedMessage`)."""

    message: ConsumedMessage
    log: log_record_pb2.LogMessage


@dataclass(frozen=True)
class DeadLetter:
    """A message that cannot be stored: why, and how many times storing it was attempted."""

    message: ConsumedMessage
    error: str
    attempts: int


@dataclass(frozen=True)
class BatchOutcome:
    """What happened to a batch."""

    stored: int
    """Messages written to both stores (duplicates included)."""
    newly_counted: int
    """Requests counted in the usage totals for the first time."""
    dead_letters: int
    """Messages sent to the dead-letter topic."""


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff, and how many rejections a batch gets before it is bisected."""

    max_attempts: int
    initial_backoff_s: float
    max_backoff_s: float

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return float(min(self.initial_backoff_s * 2 ** max(attempt - 1, 0), self.max_backoff_s))


class BatchAborted(Exception):
    """Stop was requested before the batch was stored; its offsets must not be committed."""


class RowSink(Protocol):
    """The ClickHouse requests and request_scores tables."""

    async def insert(self, columns: RequestColumns) -> None:
        """Inserts a batch's rows (given as columns) at once; raises StoreUnavailable or StoreRejected."""

    async def insert_scores(self, rows: Sequence[Row]) -> None:
        """Inserts all score rows at once; raises StoreUnavailable or StoreRejected."""


class UsageLedger(Protocol):
    """The Postgres idempotency ledger, usage counters and log limits."""

    def counting(self, batch: BatchRequests) -> AbstractAsyncContextManager[LedgerOutcome]:
        """Counts the batch's requests not counted before, in one transaction that stays open for the body
        of the ``async with`` and commits when it ends without an error (an error rolls it back); yields
        the outcome, with the keys whose rows must not be stored. Raises StoreUnavailable or StoreRejected."""


class DeadLetterSink(Protocol):
    """The dead-letter topic."""

    async def publish(self, letters: Sequence[DeadLetter]) -> None:
        """Returns once every letter is acknowledged; raises StoreUnavailable otherwise."""


def _parse(message: ConsumedMessage) -> log_record_pb2.LogMessage | DeadLetter:
    if message.value is None:
        return DeadLetter(message, "the message has no value", attempts=1)
    log = log_record_pb2.LogMessage()
    try:
        log.ParseFromString(message.value)
    except DecodeError as err:
        return DeadLetter(message, f"not a candela.logs.v1.LogMessage: {err}", attempts=1)
    return log


def _checked(message: ConsumedMessage, log: log_record_pb2.LogMessage) -> Decoded | DeadLetter:
    violations = Violations()
    check_log_message(violations, log)
    if violations.items:
        problems = "; ".join(f"{v.field}: {v.description}" for v in violations.items[:10])
        return DeadLetter(message, f"invalid LogMessage: {problems}", attempts=1)
    return Decoded(message, log)


def decode(message: ConsumedMessage) -> Decoded | DeadLetter:
    """The LogMessage in ``message``, or a dead letter saying why there is none."""
    log = _parse(message)
    return log if isinstance(log, DeadLetter) else _checked(message, log)


@dataclass(frozen=True)
class DecodedBatch:
    """The valid messages of a consumed batch: logs, with their ``requests`` rows, and later updates."""

    logs: list[ConsumedMessage]
    """The messages holding a valid log, in batch order."""
    columns: RequestColumns
    """The rows of ``logs``, one list per column by name (:func:`~candela_ingest.writer.rows.request_columns`)."""
    updates: list[Decoded]

    def __len__(self) -> int:
        return len(self.logs) + len(self.updates)

    @property
    def messages(self) -> list[ConsumedMessage]:
        """The consumed messages, logs first."""
        return [*self.logs, *(entry.message for entry in self.updates)]

    def halves(self) -> tuple[DecodedBatch, DecodedBatch]:
        """The first and the second half of the messages (logs first), each with its rows."""
        middle = len(self) // 2
        logs = min(middle, len(self.logs))
        updates = middle - logs
        return (
            DecodedBatch(self.logs[:logs], self.columns.sliced(0, logs), self.updates[:updates]),
            DecodedBatch(self.logs[logs:], self.columns.sliced(logs), self.updates[updates:]),
        )


class _Sorted(NamedTuple):
    """Messages of a batch sorted out: where the logs are (batch positions) and their rows, the updates and
    the dead letters, each with its position."""

    logs_at: list[int]
    columns: RequestColumns
    updates: list[tuple[int, Decoded]]
    dead: list[tuple[int, DeadLetter]]


def _read_by_runtime(batch: Sequence[ConsumedMessage], positions: list[int]) -> _Sorted:
    """The messages at ``positions`` parsed by the protobuf runtime, their rows built from the messages and
    checked column by column; only the suspects among them get the exact, per-message check."""
    parsed = [(position, _parse(batch[position])) for position in positions]
    dead = [(position, log) for position, log in parsed if isinstance(log, DeadLetter)]
    logs = [(position, log) for position, log in parsed if not isinstance(log, DeadLetter)]
    columns, suspects = checked_request_columns([log for _, log in logs], 0)
    keep = [True] * len(logs)
    updates = []
    for suspect in suspects:
        position, log = logs[suspect]
        checked = _checked(batch[position], log)
        if isinstance(checked, DeadLetter) or log.HasField("update"):
            keep[suspect] = False
            if isinstance(checked, DeadLetter):
                dead.append((position, checked))
            else:
                updates.append((position, checked))
    return _Sorted(
        list(compress([position for position, _ in logs], keep)),
        columns.where(keep) if suspects else columns,
        updates,
        dead,
    )


def _read_by_wire(batch: Sequence[ConsumedMessage], positions: list[int]) -> tuple[_Sorted, list[int]]:
    """The messages at ``positions`` read by the C wire decoder (`rows.wire_request_columns`),
    and the positions of those it left to the protobuf runtime. A suspect is parsed and checked exactly."""
    columns, suspects, fallback = wire_request_columns([batch[position].value or b"" for position in positions], 0)
    left = [positions[index] for index in fallback]
    logs_at = positions
    if left:
        skipped = set(fallback)
        logs_at = [position for index, position in enumerate(positions) if index not in skipped]
    dead = []
    keep = [True] * len(logs_at)
    for suspect in suspects:
        checked = decode(batch[logs_at[suspect]])
        if isinstance(checked, DeadLetter):
            keep[suspect] = False
            dead.append((logs_at[suspect], checked))
    if dead:
        logs_at = list(compress(logs_at, keep))
        columns = columns.where(keep)
    return _Sorted(logs_at, columns, [], dead), left


def _merged(first: _Sorted, second: _Sorted) -> _Sorted:
    """Two sorted-out parts of one batch as one, in batch order."""
    if not second.logs_at:
        logs_at, columns = first.logs_at, first.columns
    else:
        both = first.logs_at + second.logs_at
        order = sorted(range(len(both)), key=both.__getitem__)
        logs_at = [both[index] for index in order]
        columns = first.columns.followed_by(second.columns).taken(order)
    return _Sorted(logs_at, columns, sorted(first.updates + second.updates), sorted(first.dead + second.dead))


def decode_batch(batch: Sequence[ConsumedMessage]) -> tuple[DecodedBatch, list[DeadLetter]]:
    """The valid messages of ``batch`` (in batch order) and its dead letters, exactly as :func:`decode` of
    every message would sort them. The rows' version is 0 until they are written.

    Logs are read by the C wire decoder; what it leaves (updates, messages it does not take on, values
    that are None) is parsed by the protobuf runtime, as :func:`decode` does.
    """
    with_value = [position for position, message in enumerate(batch) if message.value is not None]
    by_wire, left = _read_by_wire(batch, with_value)
    without_value = [position for position, message in enumerate(batch) if message.value is None]
    if left or without_value:
        by_wire = _merged(by_wire, _read_by_runtime(batch, sorted(left + without_value)))
    return (
        DecodedBatch(
            [batch[position] for position in by_wire.logs_at], by_wire.columns, [u for _, u in by_wire.updates]
        ),
        [letter for _, letter in by_wire.dead],
    )


def _now_us() -> int:
    return time.time_ns() // 1000


async def _report_nothing(healthy: bool) -> None:
    """The default store-health callback."""


class BatchWriter:
    """Stores batches into the row sink and the usage ledger, dead-lettering what cannot be stored."""

    def __init__(
        self,
        *,
        rows: RowSink,
        ledger: UsageLedger,
        dead_letters: DeadLetterSink,
        retry: RetryPolicy,
        on_store_health: Callable[[bool], Awaitable[None]] = _report_nothing,
        clock_us: Callable[[], int] = _now_us,
    ) -> None:
        self._rows = rows
        self._ledger = ledger
        self._dead_letters = dead_letters
        self._retry = retry
        self._on_store_health = on_store_health
        self._clock_us = clock_us

    async def write(self, batch: Sequence[ConsumedMessage], stop: asyncio.Event) -> BatchOutcome:
        """Stores ``batch``; returns once every message is stored or dead-lettered (then commit it)."""
        decoded, dead = decode_batch(batch)
        stored, newly_counted, rejected = await self._store_with_retries(decoded, stop)
        dead.extend(rejected)
        if dead:
            await self._until_available("dead-letter topic", lambda: self._dead_letters.publish(dead), stop)
            for letter in dead:
                source = letter.message
                logger.error(
                    "dead-lettered %s[%d]@%d after %d attempt(s): %s",
                    source.topic,
                    source.partition,
                    source.offset,
                    letter.attempts,
                    letter.error,
                )
        return BatchOutcome(stored=stored, newly_counted=newly_counted, dead_letters=len(dead))

    async def _store_with_retries(
        self, entries: DecodedBatch, stop: asyncio.Event
    ) -> tuple[int, int, list[DeadLetter]]:
        """(stored, newly counted, dead letters) for the decoded entries."""
        rejections = 0
        unavailable = 0
        last_rejection: StoreRejected | None = None
        dead: list[DeadLetter] = []
        while entries:
            try:
                if last_rejection is None or rejections < self._retry.max_attempts:
                    newly_counted = await self._store(entries)
                    stored = len(entries)
                else:
                    stored, newly_counted, dead = await self._isolate(entries, last_rejection, rejections)
            except StoreUnavailable as err:
                unavailable += 1
                metrics.RETRIES.labels(metrics.store_of(err)).inc()
                await self._on_store_health(False)
                delay = self._retry.delay(unavailable)
                logger.warning("a store is unavailable (%s); retrying %d messages in %.1fs", err, len(entries), delay)
                await self._pause(delay, stop)
            except StoreRejected as err:
                rejections += 1
                last_rejection = err
                if rejections < self._retry.max_attempts:
                    metrics.RETRIES.labels(metrics.store_of(err)).inc()
                    delay = self._retry.delay(rejections)
                    logger.warning(
                        "a store rejected a batch of %d messages (attempt %d of %d): %s; retrying in %.1fs",
                        len(entries),
                        rejections,
                        self._retry.max_attempts,
                        err,
                        delay,
                    )
                    await self._pause(delay, stop)
                else:
                    logger.warning(
                        "a store keeps rejecting a batch of %d messages: isolating the bad ones", len(entries)
                    )
            else:
                await self._on_store_health(True)
                return stored, newly_counted, dead
        return 0, 0, []

    async def _isolate(
        self, entries: DecodedBatch, error: StoreRejected, attempts: int
    ) -> tuple[int, int, list[DeadLetter]]:
        """Bisects a group the stores rejected (with ``error``, after ``attempts`` tries of each message).

        Halves that store are done; a single message rejected on its own is a dead letter.
        """
        if len(entries) == 1:
            return 0, 0, [DeadLetter(entries.messages[0], f"rejected by a store: {error}", attempts)]
        stored = newly_counted = 0
        dead: list[DeadLetter] = []
        for half in entries.halves():
            try:
                newly_counted += await self._store(half)
            except StoreRejected as half_error:
                half_stored, half_newly_counted, half_dead = await self._isolate(half, half_error, attempts + 1)
                stored += half_stored
                newly_counted += half_newly_counted
                dead.extend(half_dead)
            else:
                stored += len(half)
        return stored, newly_counted, dead

    async def _store(self, entries: DecodedBatch) -> int:
        """One Postgres transaction around one ClickHouse insert (then the scores' insert, if any);
        returns the newly counted requests."""
        newly_counted = await self._store_logs(entries.columns) if entries.logs else 0
        if entries.updates:
            # Scores are not counted in usage: a plain idempotent insert (ReplacingMergeTree by score).
            rows = [row for entry in entries.updates for row in score_rows(entry.log.update)]
            with tracer.start_as_current_span("clickhouse.insert_scores") as span:
                span.set_attribute("db.system", "clickhouse")
                span.set_attribute("candela.writer.rows", len(rows))
                with metrics.store_call("clickhouse"):
                    await self._rows.insert_scores(rows)
                metrics.ROWS_INSERTED.labels("request_scores").inc(len(rows))
        return newly_counted

    async def _store_logs(self, columns: RequestColumns) -> int:
        """Postgres then ClickHouse, exactly once: the usage ledger counts the batch in a transaction, the
        rows it lets through are inserted into ClickHouse while that transaction is open, and it commits
        only after the insert. A failed insert rolls the counting back, so a request is counted exactly
        when its row is stored (or dropped over its limit); a commit lost after the insert makes the retry
        insert the same rows again, which ReplacingMergeTree collapses. Returns the newly counted requests."""
        # The version is the time of this write (a retry or a redelivery writes a newer one).
        batch = BatchRequests.of(columns.replaced("version", [self._clock_us()] * columns.count))
        with tracer.start_as_current_span("postgres.count_usage") as span:
            span.set_attribute("db.system", "postgresql")
            with metrics.store_call("postgres"):
                # 1. Postgres: count the requests not counted before, and decide which rows are not stored.
                async with self._ledger.counting(batch) as outcome:
                    # 2. ClickHouse: insert the rows to store, inside the open transaction.
                    stored_columns = batch.without(outcome.not_stored)
                    rows = stored_columns.count
                    with tracer.start_as_current_span("clickhouse.insert") as insert_span:
                        insert_span.set_attribute("db.system", "clickhouse")
                        insert_span.set_attribute("candela.writer.rows", rows)
                        with metrics.store_call("clickhouse"):
                            await self._rows.insert(stored_columns)
                        metrics.ROWS_INSERTED.labels("requests").inc(rows)
                # 3. Postgres committed when the block ended: the counting is durable with the rows.
            metrics.USAGE_COUNTED.inc(outcome.newly_counted)
            if outcome.reused:
                metrics.REQUEST_IDS_REUSED.inc(outcome.reused)
                logger.warning(
                    "%d logs reuse a request id their organization logged before: not stored nor counted "
                    "(the first log of a request id wins)",
                    outcome.reused,
                )
            if outcome.late:
                metrics.LATE_LOGS.inc(len(outcome.late))
                organization_id, request_id = min(outcome.late)
                logger.warning(
                    "%d logs were created before the ledger horizon (CANDELA_LEDGER_HORIZON_DAYS), e.g. request %s "
                    "of organization %s: not stored nor counted (the ledger no longer knows whether they were)",
                    len(outcome.late),
                    request_id,
                    organization_id,
                )
            span.set_attribute("candela.writer.not_stored", len(outcome.not_stored))
            return outcome.newly_counted

    async def _until_available(self, what: str, action: Callable[[], Awaitable[None]], stop: asyncio.Event) -> None:
        attempt = 0
        while True:
            try:
                await action()
            except StoreUnavailable as err:
                attempt += 1
                metrics.RETRIES.labels(metrics.store_of(err)).inc()
                delay = self._retry.delay(attempt)
                logger.warning("the %s is unavailable (%s); retrying in %.1fs", what, err, delay)
                await self._pause(delay, stop)
            else:
                return

    async def _pause(self, delay_s: float, stop: asyncio.Event) -> None:
        """Sleeps ``delay_s``, or raises BatchAborted as soon as stop is requested."""
        try:
            await asyncio.wait_for(stop.wait(), delay_s)
        except TimeoutError:
            return
        raise BatchAborted("stop requested while the batch was waiting to be retried")
