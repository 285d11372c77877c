"""``python -m candela_ingest.writer.replay dlq|parked|window``: re-ingest logs into the log topic, with a progress bar.

- ``dlq``: every dead letter in the dead-letter topic (optionally only those produced within --from/--to).
- ``parked``: the dead letters parked in Postgres that were not replayed yet; each is marked replayed once
  Kafka acknowledged it.
- ``window``: the log topic's own messages produced within --from/--to (e.g. after a writer bug was fixed).

Replayed messages keep their key, value and trace headers (the ``candela-dlq-*`` ones are dropped, so a
replayed letter starts with a fresh retry budget) and are produced acks=all to the log topic. Replay never
double counts: the writers store and count by request id (ReplacingMergeTree rows, the Postgres
``counted_requests`` ledger), so a message stored before is a no-op, however often it is replayed. The
ledger remembers the days since its horizon (``CANDELA_LEDGER_HORIZON_DAYS``): the writers refuse a log
created before it, counted or not (see :mod:`candela_ingest.writer.postgres`), so ``parked`` warns about
letters parked before the horizon (their logs are older still) before it replays them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from candela_ingest.config import DEFAULT_DLQ_TOPIC, DEFAULT_TOPIC, KafkaSettings
from candela_ingest.kafka import KafkaUnavailable, OutgoingMessage, Producer
from candela_ingest.writer.dead_letters import HEADER_PREFIX, headers_from_json

logger = logging.getLogger(__name__)

_BATCH = 500
_IDLE_MS = 1500
_SETUP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ReplayOptions:
    """What to replay, from where, to where."""

    source: str
    """``dlq``, ``parked`` or ``window``."""
    kafka_bootstrap: str
    topic: str
    dlq_topic: str
    postgres_dsn: str
    since: datetime | None
    until: datetime | None
    show_progress: bool = True


def _settings(bootstrap: str, topic: str) -> KafkaSettings:
    return KafkaSettings(kafka_bootstrap=bootstrap, kafka_topic=topic, kafka_compression="zstd")


def _strip_dlq_headers(headers: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    return [(key, value) for key, value in headers if not key.startswith(HEADER_PREFIX)]


def _in_window(timestamp_ms: int, since: datetime | None, until: datetime | None) -> bool:
    if since is not None and timestamp_ms < since.timestamp() * 1000:
        return False
    return not (until is not None and timestamp_ms >= until.timestamp() * 1000)


async def _read_topic(
    bootstrap: str, topic: str, since: datetime | None, until: datetime | None
) -> AsyncIterator[list[OutgoingMessage]]:
    """Batches of the topic's messages within the window, from its start (or --from) until it is drained.

    The end is found by idling rather than from end offsets, which not every Kafka-protocol broker reports
    reliably; messages produced after the replay began are left alone.
    """
    started_ms = int(datetime.now(UTC).timestamp() * 1000)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    try:
        partitions = await _start_reading(consumer, topic, since)
        done: set[TopicPartition] = set()
        while len(done) < len(partitions):
            fetched = await consumer.getmany(timeout_ms=_IDLE_MS, max_records=_BATCH)
            if not fetched:
                break
            batch: list[OutgoingMessage] = []
            for tp, records in fetched.items():
                for record in records:
                    if record.timestamp >= started_ms or (
                        until is not None and record.timestamp >= until.timestamp() * 1000
                    ):
                        done.add(tp)
                        break
                    if _in_window(record.timestamp, since, until) and record.value is not None:
                        batch.append(
                            OutgoingMessage(
                                key=record.key, value=record.value, headers=_strip_dlq_headers(record.headers or ())
                            )
                        )
                if tp in done:
                    consumer.pause(tp)
            if batch:
                yield batch
    finally:
        await consumer.stop()


async def _start_reading(consumer: AIOKafkaConsumer, topic: str, since: datetime | None) -> list[TopicPartition]:
    """Connects ``consumer`` and positions it on every partition of ``topic``, within a deadline (a stalled
    broker fails the replay rather than hanging it); returns the partitions."""
    try:
        async with asyncio.timeout(_SETUP_TIMEOUT_S):
            await consumer.start()
            partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            if not partitions:
                await consumer.topics()
                partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            if since is not None:
                found = await consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in partitions})
                for tp, offset in found.items():
                    if offset is not None:
                        consumer.seek(tp, offset.offset)
    except TimeoutError as err:
        raise KafkaUnavailable(
            f"Kafka did not let the replay read {topic} within {_SETUP_TIMEOUT_S:.0f}s", timed_out=True
        ) from err
    return partitions


async def _replay_topic(options: ReplayOptions, producer: Producer, progress: Progress) -> int:
    source_topic = options.dlq_topic if options.source == "dlq" else options.topic
    task = progress.add_task(f"replaying {source_topic} -> {options.topic}", total=None)
    replayed = 0
    async for batch in _read_topic(options.kafka_bootstrap, source_topic, options.since, options.until):
        await producer.send_all(options.topic, batch)
        replayed += len(batch)
        progress.update(task, advance=len(batch))
    progress.update(task, total=replayed)
    return replayed


async def _replay_parked(options: ReplayOptions, producer: Producer, progress: Progress) -> int:
    connection = await asyncpg.connect(options.postgres_dsn)
    try:
        total = await connection.fetchval(
            "SELECT count(*) FROM parked_dead_letters WHERE replayed_at IS NULL"
            " AND ($1::timestamptz IS NULL OR parked_at >= $1) AND ($2::timestamptz IS NULL OR parked_at < $2)",
            options.since,
            options.until,
        )
        await _warn_of_late_letters(connection, options)
        task = progress.add_task(f"replaying parked dead letters -> {options.topic}", total=int(total))
        replayed = 0
        last_id = 0
        while True:
            rows = await connection.fetch(
                "SELECT id, message_key, message_value, headers FROM parked_dead_letters"
                " WHERE replayed_at IS NULL AND id > $1"
                " AND ($2::timestamptz IS NULL OR parked_at >= $2) AND ($3::timestamptz IS NULL OR parked_at < $3)"
                " ORDER BY id LIMIT $4",
                last_id,
                options.since,
                options.until,
                _BATCH,
            )
            if not rows:
                return replayed
            batch = [
                OutgoingMessage(
                    key=row["message_key"],
                    value=row["message_value"] or b"",
                    headers=_strip_dlq_headers(headers_from_json(row["headers"])),
                )
                for row in rows
            ]
            await producer.send_all(options.topic, batch)
            ids = [row["id"] for row in rows]
            # Marked only after Kafka acknowledged: a crash in between replays them again (harmless).
            await connection.execute("UPDATE parked_dead_letters SET replayed_at = now() WHERE id = ANY($1)", ids)
            replayed += len(rows)
            last_id = ids[-1]
            progress.update(task, advance=len(rows))
    finally:
        await connection.close()


async def _warn_of_late_letters(connection: asyncpg.Connection, options: ReplayOptions) -> None:
    """Warns of the selected letters parked before the ledger horizon: the writers will refuse their logs."""
    late = await connection.fetchval(
        "SELECT count(*) FROM parked_dead_letters, counted_requests_horizon WHERE replayed_at IS NULL"
        " AND parked_at < oldest_day::timestamp AT TIME ZONE 'UTC'"
        " AND ($1::timestamptz IS NULL OR parked_at >= $1) AND ($2::timestamptz IS NULL OR parked_at < $2)",
        options.since,
        options.until,
    )
    if late:
        logger.warning(
            "%d of these letters were parked before the ledger horizon: the writers will neither count nor store "
            "their logs (candela_writer_late_logs_total), as they cannot tell whether they were counted",
            late,
        )


async def replay(options: ReplayOptions) -> int:
    """Replays what ``options`` selects into the log topic; returns how many messages were produced."""
    producer = Producer(_settings(options.kafka_bootstrap, options.topic), client_id="candela-replay")
    await producer.start()
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not options.show_progress,
        transient=False,
    )
    try:
        with progress:
            if options.source == "parked":
                return await _replay_parked(options, producer, progress)
            return await _replay_topic(options, producer, progress)
    finally:
        await producer.stop()


def _timestamp(value: str) -> datetime:
    stamp = datetime.fromisoformat(value)
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)


def parse_args(argv: Sequence[str]) -> ReplayOptions:
    """The command line (defaults from the writers' CANDELA_* variables)."""
    parser = argparse.ArgumentParser(prog="python -m candela_ingest.writer.replay", description=__doc__.split("\n")[0])
    parser.add_argument("source", choices=["dlq", "parked", "window"])
    parser.add_argument("--from", dest="since", type=_timestamp, help="ISO 8601 start (inclusive; UTC if naive)")
    parser.add_argument("--to", dest="until", type=_timestamp, help="ISO 8601 end (exclusive; UTC if naive)")
    parser.add_argument("--bootstrap", default=os.environ.get("CANDELA_KAFKA_BOOTSTRAP", ""))
    parser.add_argument("--topic", default=os.environ.get("CANDELA_KAFKA_TOPIC", DEFAULT_TOPIC))
    parser.add_argument("--dlq-topic", default=os.environ.get("CANDELA_KAFKA_DLQ_TOPIC", DEFAULT_DLQ_TOPIC))
    parser.add_argument("--postgres-dsn", default=os.environ.get("CANDELA_POSTGRES_DSN", ""))
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in logs)")
    args = parser.parse_args(argv)
    if not args.bootstrap:
        parser.error("--bootstrap (or CANDELA_KAFKA_BOOTSTRAP) is required")
    if args.source == "window" and args.since is None:
        parser.error("window needs --from")
    if args.source == "parked" and not args.postgres_dsn:
        parser.error("parked needs --postgres-dsn (or CANDELA_POSTGRES_DSN)")
    return ReplayOptions(
        source=args.source,
        kafka_bootstrap=args.bootstrap,
        topic=args.topic,
        dlq_topic=args.dlq_topic,
        postgres_dsn=args.postgres_dsn,
        since=args.since,
        until=args.until,
        show_progress=not args.no_progress,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command; prints how many messages were replayed."""
    options = parse_args(sys.argv[1:] if argv is None else argv)
    replayed = asyncio.run(replay(options))
    print(f"replayed {replayed} messages from {options.source} into {options.topic}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
