"""Kafka producing: settings shared by ingest and the writers' dead-letter producer, and acknowledged sends.

Only plain Kafka protocol is used, so any Kafka service works. No idempotent producer and no transactions
(not every Kafka-protocol broker has them): a retried batch may duplicate messages, which the writers
absorb because their writes are idempotent by request id.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError, RequestTimedOutError
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

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out
        """Whether the broker ran past a deadline (stalled) rather than refusing."""


class OutgoingMessage(NamedTuple):
    """One message to produce (a named tuple: one is built for every log, and a tuple is the cheapest)."""

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


def _is_timeout(error: BaseException) -> bool:
    """Whether a Kafka error says the broker did not answer in time (stalled) rather than refused."""
    return isinstance(error, KafkaTimeoutError | RequestTimedOutError | TimeoutError)


def _retrieve_exception(future: asyncio.Future[Any]) -> None:
    """Marks a send's outcome as seen, so an abandoned send does not log 'exception never retrieved'."""
    if not future.cancelled():
        future.exception()


_PARTITIONER = DefaultPartitioner()
# murmur2's constants, as in the Java client's Utils.murmur2 (and aiokafka.partitioner.murmur2).
_MURMUR2_SEED = 0x9747B28C
_MURMUR2_M = 0x5BD1E995
_LANE_BYTES = 8
_LANE_ONE = b"\x01" + b"\x00" * (_LANE_BYTES - 1)


def murmur2_all(keys: Sequence[bytes]) -> list[int]:
    """``aiokafka.partitioner.murmur2`` of every key, the same values, computed for all keys at once.

    The pure-Python murmur2 costs ~7 us per key, the largest share of ingest's CPU per log. Here each key
    is a 64-bit lane of one big integer (its 32-bit state in the low half, room for a product in the high
    half), so each step of the hash is one C-level integer operation over a whole batch of keys.
    """
    lengths = set(map(len, keys))
    if len(lengths) <= 1:
        return _murmur2_same_length(keys, lengths.pop()) if lengths else []
    by_length: dict[int, list[int]] = {}
    for index, key in enumerate(keys):
        by_length.setdefault(len(key), []).append(index)
    hashes = [0] * len(keys)
    for length, indexes in by_length.items():
        for index, value in zip(indexes, _murmur2_same_length([keys[i] for i in indexes], length), strict=True):
            hashes[index] = value
    return hashes


def _murmur2_same_length(keys: Sequence[bytes], length: int) -> list[int]:
    """murmur2 of ``keys``, all ``length`` bytes long, one 64-bit lane of a big integer per key."""
    count = len(keys)
    joined = b"".join(keys)
    ones = int.from_bytes(_LANE_ONE * count, "little")
    mask = ones * 0xFFFFFFFF

    def lanes(offset: int, width: int) -> int:
        """Bytes ``offset`` to ``offset + width`` of every key, little-endian, one key per lane."""
        word = bytearray(_LANE_BYTES * count)
        for byte in range(width):
            word[byte::_LANE_BYTES] = joined[offset + byte :: length]
        return int.from_bytes(word, "little")

    # Every product is masked back to 32 bits, and so is every right shift (it moves a lane's low bits into
    # the high half of the lane below), before the next multiplication: lanes never carry into each other.
    state = ones * (_MURMUR2_SEED ^ length)
    for offset in range(0, length & ~3, 4):
        word = lanes(offset, 4) * _MURMUR2_M & mask
        word = ((word ^ (word >> 24)) & mask) * _MURMUR2_M & mask
        state = (state * _MURMUR2_M & mask) ^ word
    if length & 3:
        state = (state ^ lanes(length & ~3, length & 3)) * _MURMUR2_M & mask
    state = ((state ^ (state >> 13)) & mask) * _MURMUR2_M & mask
    state = (state ^ (state >> 15)) & mask
    return list(struct.unpack(f"<{count}Q", state.to_bytes(_LANE_BYTES * count, "little")))


def _by_partition(messages: Sequence[OutgoingMessage], partitions: list[int]) -> dict[int, list[OutgoingMessage]]:
    """The messages per partition, in order, partitioned exactly as ``AIOKafkaProducer.send`` would (murmur2
    of the key, positive, modulo the partitions; a random one without a key), so a request id's messages
    land on one partition whichever path produced them.

    ``partitions`` is the topic's partitions, sorted (as the producer's partitioner takes them).
    """
    if not partitions:
        raise KafkaUnavailable("the topic has no partitions")
    groups: dict[int, list[OutgoingMessage]] = {}
    keys = [message.key for message in messages if message.key is not None]
    if len(keys) < len(messages):
        # Not on ingest's path (every log's message has its request id as key): one at a time, as send() does.
        for message in messages:
            groups.setdefault(_PARTITIONER(message.key, partitions, partitions), []).append(message)
        return groups
    count = len(partitions)
    for message, hashed in zip(messages, murmur2_all(keys), strict=True):
        partition = partitions[(hashed & 0x7FFFFFFF) % count]
        group = groups.get(partition)
        if group is None:
            groups[partition] = [message]
        else:
            group.append(message)
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
        self._delivery_timeout_s = settings.kafka_delivery_timeout_s
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
            async with asyncio.timeout(self._delivery_timeout_s):
                await producer.start()
        except (KafkaError, TimeoutError) as err:
            await producer.stop()
            raise KafkaUnavailable(
                f"cannot connect to Kafka at {self._options['bootstrap_servers']}: {err!r}",
                timed_out=isinstance(err, TimeoutError),
            ) from err
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

    async def probe(self) -> None:
        """Raises :class:`KafkaUnavailable` unless a broker answers a metadata request now (a round trip, not
        the client's cached metadata): tells a stalled broker that answers again."""
        try:
            await self._require().client.fetch_all_metadata()
        except KafkaError as err:
            raise KafkaUnavailable(f"no broker answered a metadata request: {err!r}") from err

    async def send_all(self, topic: str, messages: Sequence[OutgoingMessage]) -> None:
        """Produces ``messages`` and returns once Kafka acknowledged every one; else raises KafkaUnavailable.

        The messages are appended to record batches per partition (the producer's own key partitioning),
        so a call costs one future per batch rather than one per message. The whole call has a deadline
        (``kafka_delivery_timeout_s``): a stalled broker fails it with ``timed_out`` set, never hangs it.
        """
        producer = self._require()
        if not messages:
            return
        futures: list[asyncio.Future[Any]] = []
        acknowledged = False
        try:
            async with asyncio.timeout(self._delivery_timeout_s):
                partitions = sorted(await producer.partitions_for(topic))
                for partition, group in _by_partition(messages, partitions).items():
                    await _send_batches(producer, topic, partition, group, futures)
                outcomes = await asyncio.gather(*futures, return_exceptions=True)
            acknowledged = True
        except TimeoutError as err:
            raise KafkaUnavailable(
                f"Kafka did not acknowledge {len(messages)} messages to {topic} within {self._delivery_timeout_s:.1f}s",
                timed_out=True,
            ) from err
        except KafkaError as err:
            raise KafkaUnavailable(f"producing to {topic} failed: {err!r}", timed_out=_is_timeout(err)) from err
        finally:
            if not acknowledged:
                # Failed or cancelled (a deadline) midway: queued sends may still complete, unobserved.
                for future in futures:
                    future.add_done_callback(_retrieve_exception)
        failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if failures:
            raise KafkaUnavailable(
                f"Kafka did not acknowledge {len(failures)} of {len(messages)} messages to {topic}: {failures[0]!r}",
                timed_out=any(_is_timeout(failure) for failure in failures),
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
