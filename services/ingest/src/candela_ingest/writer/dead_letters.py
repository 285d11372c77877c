"""The dead-letter topic: a message that cannot be stored is produced there, unchanged, with why.

The key and value are the original ones, so replaying a dead letter to the log topic is a plain copy.
The original headers (trace context) are kept; ``candela-dlq-*`` headers say what failed, how many times
storing was attempted in all (a letter that fails again after a replay adds to the count), and where the
message came from, and how many times it was already retried from the DLQ.

Dead letters are retried: a writer's DLQ consumer (its own group) reads each letter once its retry delay
has passed and stores it like any log. A letter that fails again goes back to the DLQ with
``candela-dlq-retries`` + 1, until ``dlq_max_retries``; then it is parked in Postgres
(``parked_dead_letters``) for an operator, who replays it with ``python -m candela_ingest.writer.replay parked``.
So no letter loops forever, and none is lost.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg

from candela_ingest.kafka import KafkaUnavailable, OutgoingMessage, Producer
from candela_ingest.stalls import StallWatch
from candela_ingest.writer import metrics
from candela_ingest.writer.batch import DeadLetter
from candela_ingest.writer.errors import POSTGRES_FAILURES, StoreUnavailable
from candela_ingest.writer.postgres import classify_postgres_error

HEADER_PREFIX = "candela-dlq-"
ERROR_HEADER = "candela-dlq-error"
ATTEMPTS_HEADER = "candela-dlq-attempts"
SOURCE_TOPIC_HEADER = "candela-dlq-source-topic"
SOURCE_PARTITION_HEADER = "candela-dlq-source-partition"
SOURCE_OFFSET_HEADER = "candela-dlq-source-offset"
FAILED_AT_HEADER = "candela-dlq-failed-at"
RETRIES_HEADER = "candela-dlq-retries"
MAX_ERROR_BYTES = 2048


def _int_header(headers: Sequence[tuple[str, bytes]], name: str) -> int:
    for key, value in headers:
        if key == name:
            try:
                return max(int(value.decode()), 0)
            except (UnicodeDecodeError, ValueError):
                return 0
    return 0


def previous_attempts(headers: Sequence[tuple[str, bytes]]) -> int:
    """The attempt count a message already carries from an earlier dead-lettering (0 if none)."""
    return _int_header(headers, ATTEMPTS_HEADER)


def dlq_retries(headers: Sequence[tuple[str, bytes]]) -> int:
    """How many times a dead letter was already retried from the DLQ (0 if none)."""
    return _int_header(headers, RETRIES_HEADER)


def header_value(headers: Sequence[tuple[str, bytes]], name: str) -> str | None:
    """A header decoded as text (the first one of that name), or None."""
    for key, value in headers:
        if key == name:
            return value.decode("utf-8", errors="replace")
    return None


def failed_at_of(headers: Sequence[tuple[str, bytes]]) -> datetime | None:
    """When a dead letter last failed (from its header), or None when unknown."""
    raw = header_value(headers, FAILED_AT_HEADER)
    if raw is None:
        return None
    try:
        return datetime.fromisoformat(raw)
    except ValueError:
        return None


def dead_letter_headers(letter: DeadLetter, failed_at: datetime, retries: int = 0) -> list[tuple[str, bytes]]:
    """The letter's original headers, minus stale ``candela-dlq-*`` ones, plus the failure's.

    A letter failing again while retried from the DLQ keeps its original source coordinates.
    """
    source = letter.message
    kept = [(key, value) for key, value in source.headers if not key.startswith(HEADER_PREFIX)]
    attempts = previous_attempts(source.headers) + letter.attempts
    origin = {key: value for key, value in source.headers if key.startswith(HEADER_PREFIX)}
    return [
        *kept,
        (ERROR_HEADER, letter.error.encode("utf-8", errors="replace")[:MAX_ERROR_BYTES]),
        (ATTEMPTS_HEADER, str(attempts).encode()),
        (SOURCE_TOPIC_HEADER, origin.get(SOURCE_TOPIC_HEADER, source.topic.encode())),
        (SOURCE_PARTITION_HEADER, origin.get(SOURCE_PARTITION_HEADER, str(source.partition).encode())),
        (SOURCE_OFFSET_HEADER, origin.get(SOURCE_OFFSET_HEADER, str(source.offset).encode())),
        (FAILED_AT_HEADER, failed_at.isoformat().encode()),
        (RETRIES_HEADER, str(retries).encode()),
    ]


class KafkaDeadLetterSink:
    """Produces dead letters to the DLQ topic, acks=all."""

    def __init__(self, producer: Producer, topic: str, stalls: StallWatch | None = None) -> None:
        self._producer = producer
        self._topic = topic
        self._stalls = stalls if stalls is not None else StallWatch()

    async def publish(self, letters: Sequence[DeadLetter], retries: int = 0) -> None:
        """Returns once Kafka acknowledged every letter; StoreUnavailable otherwise (retry, do not commit)."""
        failed_at = datetime.now(UTC)
        messages = [
            OutgoingMessage(
                key=letter.message.key,
                value=letter.message.value or b"",
                headers=dead_letter_headers(letter, failed_at, retries),
            )
            for letter in letters
        ]
        with metrics.store_call("dead_letter_topic"):
            try:
                # send_all has a deadline (kafka_delivery_timeout_s): a stalled broker fails it, never hangs it.
                await self._producer.send_all(self._topic, messages)
            except KafkaUnavailable as err:
                if err.timed_out:
                    await self._stalls.timed_out("kafka", "dead_letters", str(err))
                raise StoreUnavailable(str(err)) from err
        await self._stalls.answered("kafka")
        metrics.DEAD_LETTERS.labels("dlq_retry" if retries else "log_topic").inc(len(messages))


_PARK = """
INSERT INTO parked_dead_letters (dlq_topic, dlq_partition, dlq_offset, source_topic, message_key, message_value,
                                 headers, error, attempts)
SELECT t.dlq_topic, t.dlq_partition, t.dlq_offset, t.source_topic, t.message_key, t.message_value,
       t.headers::jsonb, t.error, t.attempts
FROM unnest($1::text[], $2::int[], $3::bigint[], $4::text[], $5::bytea[], $6::bytea[], $7::text[], $8::text[],
            $9::int[])
    AS t (dlq_topic, dlq_partition, dlq_offset, source_topic, message_key, message_value, headers, error, attempts)
ON CONFLICT (dlq_topic, dlq_partition, dlq_offset) DO NOTHING
"""


def headers_to_json(headers: Sequence[tuple[str, bytes]]) -> str:
    """Kafka headers as the JSON kept in ``parked_dead_letters.headers``."""
    return json.dumps([[key, value.hex()] for key, value in headers])


def headers_from_json(raw: str | list[list[str]]) -> list[tuple[str, bytes]]:
    """The Kafka headers stored by :func:`headers_to_json`."""
    pairs = json.loads(raw) if isinstance(raw, str) else raw
    return [(str(key), bytes.fromhex(str(value))) for key, value in pairs]


class PostgresParking:
    """Parks dead letters that exhausted their DLQ retries in ``parked_dead_letters`` (idempotently)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def park(self, letters: Sequence[DeadLetter]) -> None:
        """Stores every letter (its DLQ coordinates make a redelivered one a no-op); StoreUnavailable if not."""
        if not letters:
            return
        rows = []
        for letter in letters:
            message = letter.message
            headers = dead_letter_headers(letter, datetime.now(UTC), dlq_retries(message.headers))
            rows.append(
                (
                    message.topic,
                    message.partition,
                    message.offset,
                    header_value(message.headers, SOURCE_TOPIC_HEADER) or message.topic,
                    message.key,
                    message.value,
                    headers_to_json(headers),
                    letter.error,
                    previous_attempts(message.headers) + letter.attempts,
                )
            )
        with metrics.store_call("postgres"):
            try:
                status = await self._pool.execute(_PARK, *(list(column) for column in zip(*rows, strict=True)))
            except POSTGRES_FAILURES as err:
                raise StoreUnavailable(f"cannot park dead letters: {classify_postgres_error(err)}") from err
        # Counted from the rows really inserted ("INSERT 0 <n>"): a letter parked again on redelivery is not.
        metrics.DEAD_LETTERS_PARKED.inc(int(status.rsplit(" ", 1)[-1]))


class RetryingDeadLetterSink:
    """The dead-letter sink of the DLQ consumer: back to the DLQ with one more retry, or parked when spent."""

    def __init__(self, dlq: KafkaDeadLetterSink, parking: PostgresParking, max_retries: int) -> None:
        self._dlq = dlq
        self._parking = parking
        self._max_retries = max_retries
        self.parked = 0

    async def publish(self, letters: Sequence[DeadLetter]) -> None:
        """Parks the letters whose retries are spent and re-queues the others (grouped by retry count)."""
        to_park = [letter for letter in letters if dlq_retries(letter.message.headers) + 1 >= self._max_retries]
        await self._parking.park(to_park)
        self.parked += len(to_park)
        by_retries: dict[int, list[DeadLetter]] = {}
        for letter in letters:
            retries = dlq_retries(letter.message.headers) + 1
            if retries < self._max_retries:
                by_retries.setdefault(retries, []).append(letter)
        for retries, group in sorted(by_retries.items()):
            await self._dlq.publish(group, retries)
