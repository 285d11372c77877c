"""Kafka producing: settings shared by ingest and the writers' dead-letter producer, and acknowledged sends.

Only plain Kafka protocol is used, so any Kafka service works. No idempotent producer and no transactions
(not every Kafka-protocol broker has them): a retried batch may duplicate messages, which the writers
absorb because their writes are idempotent by request id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from candela_ingest.config import KafkaSettings
from candela_ingest.propagation import KafkaHeaders

logger = logging.getLogger(__name__)

# A message travels as one produce request; brokers' default message.max.bytes is about 1 MiB.
MAX_MESSAGE_BYTES = 1024 * 1024
MAX_BATCH_BYTES = 256 * 1024


class KafkaUnavailable(Exception):
    """Kafka did not acknowledge (or could not be reached); nothing may be assumed delivered."""


@dataclass(frozen=True)
class OutgoingMessage:
    """One message to produce."""

    key: bytes | None
    value: bytes
    headers: KafkaHeaders


def producer_options(settings: KafkaSettings, client_id: str) -> dict[str, Any]:
    """AIOKafkaProducer options: every send acknowledged by all in-sync replicas, compressed."""
    compression = None if settings.kafka_compression.lower() == "none" else settings.kafka_compression.lower()
    return {
        "bootstrap_servers": settings.kafka_bootstrap,
        "client_id": client_id,
        "acks": "all",
        "enable_idempotence": False,
        "compression_type": compression,
        "request_timeout_ms": settings.kafka_request_timeout_ms,
        "max_request_size": MAX_MESSAGE_BYTES,
        # Record batches of up to 256 KiB per partition: one Ingest call of a thousand logs is a few batches.
        "max_batch_size": MAX_BATCH_BYTES,
        "linger_ms": 0,
    }


def _retrieve_exception(future: asyncio.Future[Any]) -> None:
    """Marks a send's outcome as seen, so an abandoned send does not log 'exception never retrieved'."""
    if not future.cancelled():
        future.exception()


_PARTITIONER = DefaultPartitioner()


def _by_partition(messages: Sequence[OutgoingMessage], partitions: list[int]) -> dict[int, list[OutgoingMessage]]:
    """The messages per partition, in order, partitioned exactly as ``AIOKafkaProducer.send`` would (murmur2
    of the key), so a request id's messages land on one partition whichever path produced them."""
    if not partitions:
        raise KafkaUnavailable("the topic has no partitions")
    groups: dict[int, list[OutgoingMessage]] = {}
    for message in messages:
        groups.setdefault(_PARTITIONER(message.key, partitions, partitions), []).append(message)
    return groups


async def _send_batches(
    producer: AIOKafkaProducer,
    topic: str,
    partition: int,
    messages: Sequence[OutgoingMessage],
    futures: list[asyncio.Future[Any]],
) -> None:
    """Appends ``messages`` to as many record batches as they need, queues each, and collects their futures."""
    batch = producer.create_batch()
    for message in messages:
        # The check ``AIOKafkaProducer.send`` makes: a message over the request size is refused here.
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(message.key, message.value, message.headers)
        if size > MAX_MESSAGE_BYTES:
            raise KafkaUnavailable(f"a message of {size} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
        if batch.append(key=message.key, value=message.value, timestamp=None, headers=message.headers) is None:
            futures.append(await producer.send_batch(batch, topic, partition=partition))
            batch = producer.create_batch()
            # An empty batch takes any one message (its size is checked above).
            batch.append(key=message.key, value=message.value, timestamp=None, headers=message.headers)
    futures.append(await producer.send_batch(batch, topic, partition=partition))


class Producer:
    """An acks=all producer that can be (re)started until Kafka answers, and sends batches with acks."""

    def __init__(self, settings: KafkaSettings, client_id: str) -> None:
        self._options = producer_options(settings, client_id)
        self._producer: AIOKafkaProducer | None = None

    @property
    def started(self) -> bool:
        """Whether the producer is connected."""
        return self._producer is not None

    async def start(self) -> None:
        """Connects (a no-op when connected); raises :class:`KafkaUnavailable` when Kafka cannot be reached."""
        if self._producer is not None:
            return
        producer = AIOKafkaProducer(**self._options)
        try:
            await producer.start()
        except KafkaError as err:
            await producer.stop()
            raise KafkaUnavailable(f"cannot connect to Kafka at {self._options['bootstrap_servers']}: {err}") from err
        self._producer = producer

    async def check_topic(self, topic: str) -> None:
        """Raises :class:`KafkaUnavailable` unless ``topic``'s partitions are known (readiness)."""
        producer = self._require()
        timeout_s = self._options["request_timeout_ms"] / 1000
        try:
            partitions = await asyncio.wait_for(producer.partitions_for(topic), timeout_s)
        except (KafkaError, TimeoutError) as err:
            raise KafkaUnavailable(f"no metadata for topic {topic}: {err!r}") from err
        if not partitions:
            raise KafkaUnavailable(f"topic {topic} has no partitions")

    async def send_all(self, topic: str, messages: Sequence[OutgoingMessage]) -> None:
        """Produces ``messages`` and returns once Kafka acknowledged every one; else raises KafkaUnavailable.

        The messages are appended to record batches per partition (the producer's own key partitioning),
        so a call costs one future per batch rather than one per message.
        """
        producer = self._require()
        if not messages:
            return
        futures: list[asyncio.Future[Any]] = []
        acknowledged = False
        try:
            partitions = sorted(await producer.partitions_for(topic))
            for partition, group in _by_partition(messages, partitions).items():
                await _send_batches(producer, topic, partition, group, futures)
            outcomes = await asyncio.gather(*futures, return_exceptions=True)
            acknowledged = True
        except KafkaError as err:
            raise KafkaUnavailable(f"producing to {topic} failed: {err!r}") from err
        finally:
            if not acknowledged:
                # Failed or cancelled (a deadline) midway: queued sends may still complete, unobserved.
                for future in futures:
                    future.add_done_callback(_retrieve_exception)
        failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if failures:
            raise KafkaUnavailable(
                f"Kafka did not acknowledge {len(failures)} of {len(messages)} messages to {topic}: {failures[0]!r}"
            ) from failures[0]

    async def stop(self) -> None:
        """Flushes what is queued and disconnects."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    def _require(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise KafkaUnavailable("the Kafka producer is not started")
        return self._producer
