"""The storage writer's consumer loop: its consumer-group members, their batches, and the offset commits.

One writer process runs ``consumers`` members of the writers' consumer group on the log topic, plus one
member of ``<group>-dlq`` on the dead-letter topic (letters are retried after a delay, then parked), plus
the periodic retention sweep. Each member fetches batches bounded by count, bytes and time, hands each to
:class:`~candela_ingest.writer.batch.BatchWriter`, and commits the batch's offsets only once every
message is stored or dead-lettered. Delivery is at-least-once (a crash or a rebalance
between storing and committing redelivers the batch), and the stores make that exactly-once in effect.

What the loop talks to (:class:`WriterDeps`) and how it shows its readiness (:class:`WriterHealth`) are
declared here; :mod:`candela_ingest.writer.app` builds them and runs the process.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import groupby

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from grpc_health.v1 import health_pb2
from opentelemetry import trace

from candela_ingest.config import WriterConfig
from candela_ingest.kafka import KafkaUnavailable, Producer
from candela_ingest.propagation import batch_context
from candela_ingest.stalls import StallWatch, StoreStalled
from candela_ingest.writer import metrics
from candela_ingest.writer.batch import BatchAborted, BatchWriter, ConsumedMessage, RetryPolicy
from candela_ingest.writer.body_deletion import S3BodyDeleter
from candela_ingest.writer.clickhouse import ClickHouseRowSink
from candela_ingest.writer.dead_letters import (
    KafkaDeadLetterSink,
    PostgresParking,
    RetryingDeadLetterSink,
    failed_at_of,
)
from candela_ingest.writer.errors import StoreUnavailable
from candela_ingest.writer.ledger_horizon import LedgerPruner
from candela_ingest.writer.postgres import PostgresUsageLedger
from candela_ingest.writer.retention import RetentionSweeper
from candela_runtime.grpc_server import GrpcServer
from candela_runtime.lifecycle import shutdown_step

logger = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

STEP_TIMEOUT_S = 10.0
"""How long each shutdown step (a consumer, a store) may take."""
_IDLE_POLL_MS = 200
_PARTITION = operator.attrgetter("topic", "partition")
_OFFSET = operator.attrgetter("offset")


def _settled(task: asyncio.Future[None]) -> None:
    """Marks a late commit's outcome as seen: it no longer matters (its batch counted as uncommitted)."""
    if not task.cancelled() and task.exception() is not None:
        logger.info("a late offset commit ended: %r", task.exception())


def commit_offsets(batch: Sequence[ConsumedMessage]) -> dict[TopicPartition, int]:
    """The offsets that commit ``batch``: per partition, one past its highest offset in the batch.

    A batch holds a few runs of one partition's messages (one per fetch), each passed over in C: this runs
    for every message stored.
    """
    offsets: dict[TopicPartition, int] = {}
    for (topic, partition), run in groupby(batch, _PARTITION):
        key = TopicPartition(topic, partition)
        offsets[key] = max(offsets.get(key, 0), max(map(_OFFSET, run)) + 1)
    return offsets


@dataclass(frozen=True)
class WriterDeps:
    """What a writer talks to."""

    pool: asyncpg.Pool
    rows: tuple[ClickHouseRowSink, ...]
    """One ClickHouse connection per consumer (the last one serves the DLQ consumer and retention)."""
    ledger: PostgresUsageLedger
    dead_letter_producer: Producer
    dead_letters: KafkaDeadLetterSink
    parking: PostgresParking
    bodies: S3BodyDeleter | None
    """Deletes expired bodies (retention); None when the writer has no S3 settings."""
    stalls: StallWatch
    """Which stores ran past a deadline (Kafka commits and dead letters, S3 retention): drives health."""


class WriterHealth:
    """SERVING while the writer is in its consumer group, its stores answer and none is stalled."""

    def __init__(self, server: GrpcServer | None) -> None:
        self._server = server
        self._published: bool | None = None
        self.joined = False
        self.stores_ok = False
        self.stalled = False

    @property
    def serving(self) -> bool:
        """Whether the writer is ready."""
        return self.joined and self.stores_ok and not self.stalled

    async def set_stalled(self, stalled: bool) -> None:
        """Records whether a store call ran past its deadline (the watch logs which and why)."""
        self.stalled = stalled
        await self._publish()

    async def set_joined(self, joined: bool) -> None:
        """Records group membership."""
        self.joined = joined
        await self._publish()

    async def set_stores_ok(self, ok: bool) -> None:
        """Records whether the stores answered the last write."""
        self.stores_ok = ok
        await self._publish()

    async def _publish(self) -> None:
        serving = self.serving
        if self._server is None or serving == self._published:
            return
        self._published = serving
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self._server.health.set("", status)
        logger.info("writer health: %s", health_pb2.HealthCheckResponse.ServingStatus.Name(status))


class _GroupListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Marks the writer joined once the group assigned it partitions (possibly none)."""

    def __init__(self, health: WriterHealth) -> None:
        self._health = health

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if revoked:
            logger.info("partitions revoked: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        logger.info("partitions assigned: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))
        await self._health.set_joined(True)


@dataclass
class WriterStats:
    """Counters since start (for logs and tests)."""

    batches: int = 0
    stored: int = 0
    newly_counted: int = 0
    dead_letters: int = 0
    dead_letters_retried: int = 0
    parked: int = 0
    commits_failed: int = 0
    retention_sweeps: int = 0
    ledger_prunings: int = 0


@dataclass(frozen=True)
class _Lane:
    """One consumer-group member: what it reads, as which group, and how it stores a batch."""

    name: str
    topic: str
    group: str
    batches: BatchWriter
    retry_delay_s: float = 0.0
    """Dead letters only: how long after its failure a letter is retried."""
    parking: RetryingDeadLetterSink | None = None


class StorageWriter:
    """Consumes the log topic in batches into ClickHouse and Postgres."""

    def __init__(self, config: WriterConfig, deps: WriterDeps, health: WriterHealth) -> None:
        self._config = config
        self._deps = deps
        self._health = health
        self._retry = RetryPolicy(
            max_attempts=config.max_attempts,
            initial_backoff_s=config.retry_initial_backoff_s,
            max_backoff_s=config.retry_max_backoff_s,
        )
        lanes = [
            _Lane(
                name=f"logs-{index}",
                topic=config.kafka_topic,
                group=config.kafka_group,
                batches=self._batch_writer(deps.rows[index], deps.dead_letters),
            )
            for index in range(config.consumers)
        ]
        parking = RetryingDeadLetterSink(deps.dead_letters, deps.parking, config.dlq_max_retries)
        lanes.append(
            _Lane(
                name="dead-letters",
                topic=config.kafka_dlq_topic,
                group=f"{config.kafka_group}-dlq",
                batches=self._batch_writer(deps.rows[-1], parking),
                retry_delay_s=config.dlq_retry_delay_s,
                parking=parking,
            )
        )
        self._lanes = lanes
        self._retention = RetentionSweeper(deps.pool, deps.rows[-1], deps.bodies)
        self._pruner = LedgerPruner(deps.pool, config.ledger_horizon_days)
        deps.stalls.set_on_change(health.set_stalled)
        self.stats = WriterStats()
        self._late_commits: set[asyncio.Task[None]] = set()
        """Commits that ran past their deadline and are left to finish (see ``_commit``)."""

    def _batch_writer(
        self, rows: ClickHouseRowSink, dead_letters: KafkaDeadLetterSink | RetryingDeadLetterSink
    ) -> BatchWriter:
        return BatchWriter(
            rows=rows,
            ledger=self._deps.ledger,
            dead_letters=dead_letters,
            retry=self._retry,
            on_store_health=self._health.set_stores_ok,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Waits for the stores, then runs every consumer (and the retention sweep) until ``stop`` is set."""
        if not await self._retry_until(stop, "stores and dead-letter topic", self._check_dependencies):
            return
        await self._health.set_stores_ok(True)
        async with asyncio.TaskGroup() as group:
            for lane in self._lanes:
                group.create_task(self._run_lane(lane, stop), name=f"writer-{lane.name}")
            if self._config.retention_interval_s > 0:
                group.create_task(self._sweep_periodically(stop), name="writer-retention")
            group.create_task(self._probe_stalled_stores(stop), name="writer-store-probes")

    async def _probe_stalled_stores(self, stop: asyncio.Event) -> None:
        """Probes the stores every ``store_probe_interval_s`` until ``stop``, so a stall shows, and ends, while
        no batch comes (a commit or dead letter that succeeds clears its store too)."""
        checks: dict[str, Callable[[], Awaitable[None]]] = {"kafka": self._deps.dead_letter_producer.probe}
        if self._deps.bodies is not None:
            checks["s3"] = self._deps.bodies.check
        while True:
            try:
                await asyncio.wait_for(stop.wait(), self._config.store_probe_interval_s)
            except TimeoutError:
                await self._deps.stalls.probe(checks, self._config.kafka_commit_timeout_s)
            else:
                return

    async def _run_lane(self, lane: _Lane, stop: asyncio.Event) -> None:
        consumers: list[AIOKafkaConsumer] = []
        if not await self._retry_until(
            stop, f"Kafka consumer {lane.name}", lambda: self._start_consumer(lane, consumers)
        ):
            return
        consumer = consumers[0]
        consumer.subscribe([lane.topic], listener=_GroupListener(self._health))
        logger.info("consumer %s reads %s as group %s", lane.name, lane.topic, lane.group)
        try:
            await self._consume(lane, consumer, stop)
        except BaseException as err:
            if not stop.is_set():
                # A consumer that ends before stop leaves its partitions unread, and the writer's other tasks
                # keep the process up: say which one ended and why (a cancelled task of the group ends quietly).
                logger.error(
                    "consumer %s ended before stop was requested: %r",
                    lane.name,
                    err,
                    exc_info=not isinstance(err, asyncio.CancelledError),
                )
            raise
        finally:
            # Leaves the group at once, so the partitions move to another writer without a session timeout.
            await shutdown_step(f"kafka consumer {lane.name}", consumer.stop, STEP_TIMEOUT_S)
            await self._health.set_joined(False)
            await self._settle_late_commits()

    async def _sweep_periodically(self, stop: asyncio.Event) -> None:
        """Every ``retention_interval_s`` (first after one interval): prunes the ledger past its horizon, then
        runs the retention sweep (which then sees the days just rolled up)."""
        while True:
            try:
                await asyncio.wait_for(stop.wait(), self._config.retention_interval_s)
            except TimeoutError:
                pass
            else:
                return
            try:
                await self._pruner.prune(datetime.now(UTC))
                self.stats.ledger_prunings += 1
            except StoreUnavailable as err:
                logger.warning("ledger pruning failed (%s); next one in %.0fs", err, self._config.retention_interval_s)
            try:
                await self._retention.sweep(datetime.now(UTC))
                self.stats.retention_sweeps += 1
            except StoreUnavailable as err:
                logger.warning("retention sweep failed (%s); next one in %.0fs", err, self._config.retention_interval_s)

    async def _wait_for_retry_time(self, lane: _Lane, batch: Sequence[ConsumedMessage], stop: asyncio.Event) -> bool:
        """Dead letters: waits until the newest letter of the batch is ``retry_delay_s`` old; False on stop."""
        if lane.retry_delay_s <= 0:
            return True
        failed = [failed_at_of(message.headers) for message in batch]
        newest = max((stamp for stamp in failed if stamp is not None), default=None)
        if newest is None:
            return True
        wait_s = (newest - datetime.now(UTC)).total_seconds() + lane.retry_delay_s
        if wait_s <= 0:
            return True
        try:
            await asyncio.wait_for(stop.wait(), wait_s)
        except TimeoutError:
            return True
        return False

    async def _consume(self, lane: _Lane, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        while not stop.is_set():
            batch = await self._next_batch(consumer, stop)
            if not batch:
                continue
            metrics.observe_batch(lane.topic, batch)
            if not await self._wait_for_retry_time(lane, batch, stop):
                return
            parked_before = lane.parking.parked if lane.parking is not None else 0
            # Parent: the first traced message's request; links: the others (candela_ingest.propagation).
            parent, links = batch_context(message.headers for message in batch)
            with tracer.start_as_current_span(
                "writer.batch",
                context=parent,
                kind=trace.SpanKind.CONSUMER,
                links=links,
                attributes={
                    "messaging.destination.name": lane.topic,
                    "messaging.batch.message_count": len(batch),
                },
            ):
                try:
                    outcome = await lane.batches.write(batch, stop)
                except BatchAborted:
                    logger.warning(
                        "stopping with a batch of %d messages not stored; it will be redelivered", len(batch)
                    )
                    return
                await self._commit(consumer, batch)
            if lane.parking is not None:
                metrics.DEAD_LETTERS_RETRIED.inc(len(batch))
                self.stats.dead_letters_retried += len(batch)
                self.stats.parked += lane.parking.parked - parked_before
            self.stats.batches += 1
            self.stats.stored += outcome.stored
            self.stats.newly_counted += outcome.newly_counted
            self.stats.dead_letters += outcome.dead_letters
            logger.debug(
                "stored %d messages (%d newly counted, %d dead letters)",
                outcome.stored,
                outcome.newly_counted,
                outcome.dead_letters,
            )

    async def _next_batch(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> list[ConsumedMessage]:
        """Messages until the batch is full (count or bytes), its wait is over, or stop is requested."""
        config = self._config
        batch: list[ConsumedMessage] = []
        size = 0
        deadline: float | None = None
        while not stop.is_set():
            remaining_s = None if deadline is None else deadline - time.monotonic()
            timeout_ms = _IDLE_POLL_MS if remaining_s is None else max(0, int(remaining_s * 1000))
            try:
                fetched = await consumer.getmany(
                    timeout_ms=timeout_ms, max_records=config.batch_max_records - len(batch)
                )
            except KafkaError as err:
                logger.warning("fetching from Kafka failed: %r", err)
                await asyncio.sleep(self._retry.initial_backoff_s)
                continue
            for records in fetched.values():
                # Positional and without per-message method calls: this runs for every message consumed.
                # (aiokafka hands headers over as a tuple already.)
                batch.extend(
                    ConsumedMessage(
                        record.topic,
                        record.partition,
                        record.offset,
                        record.key,
                        record.value,
                        record.headers or (),
                        record.timestamp,
                    )
                    for record in records
                )
                size += sum(len(record.key or b"") + len(record.value or b"") for record in records)
            if batch and deadline is None:
                deadline = time.monotonic() + config.batch_max_wait_ms / 1000
            if len(batch) >= config.batch_max_records or size >= config.batch_max_bytes:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
        return batch

    async def _commit(self, consumer: AIOKafkaConsumer, batch: Sequence[ConsumedMessage]) -> None:
        # A commit past its deadline is left to finish rather than cancelled: aiokafka runs the request
        # shielded anyway (and would then log its outcome as never retrieved), and its commit lock keeps
        # it ahead of later commits, so offsets never move backwards. The batch counts as uncommitted.
        commit = asyncio.ensure_future(consumer.commit(commit_offsets(batch)))
        try:
            await self._deps.stalls.call("kafka", "commit", self._config.kafka_commit_timeout_s, asyncio.shield(commit))
        except StoreStalled as err:
            self._late_commits.add(commit)
            commit.add_done_callback(_settled)
            commit.add_done_callback(self._late_commits.discard)
            metrics.COMMITS_FAILED.labels(batch[0].topic).inc()
            self.stats.commits_failed += 1
            logger.warning("offsets of a stored batch were not committed (%s); it will be redelivered", err)
        except (CommitFailedError, IllegalStateError, KafkaError) as err:
            # The group moved on (or Kafka hiccuped): the new owner rewrites the batch, idempotently.
            metrics.COMMITS_FAILED.labels(batch[0].topic).inc()
            self.stats.commits_failed += 1
            logger.warning("offsets of a stored batch were not committed (%r); it will be redelivered", err)
        else:
            metrics.observe_commit(batch)

    async def _settle_late_commits(self) -> None:
        """Waits (bounded) for the commits left to finish; their consumer is stopped, so they end soon."""
        if self._late_commits:
            await asyncio.wait(set(self._late_commits), timeout=STEP_TIMEOUT_S)
        for commit in list(self._late_commits):
            commit.cancel()

    async def _start_consumer(self, lane: _Lane, started: list[AIOKafkaConsumer]) -> None:
        """Connects a new consumer (a failed one cannot be restarted) and appends it to ``started``."""
        consumer = self._consumer(lane)
        try:
            async with asyncio.timeout(self._config.kafka_delivery_timeout_s):
                await consumer.start()
        except KafkaError:
            await consumer.stop()
            raise
        except TimeoutError as err:
            await consumer.stop()
            raise KafkaUnavailable(f"Kafka did not answer the consumer {lane.name} in time", timed_out=True) from err
        started.append(consumer)

    def _consumer(self, lane: _Lane) -> AIOKafkaConsumer:
        config = self._config
        return AIOKafkaConsumer(
            bootstrap_servers=config.kafka_bootstrap,
            client_id=f"candela-writer-{lane.name}",
            group_id=lane.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=config.kafka_session_timeout_ms,
            heartbeat_interval_ms=config.kafka_heartbeat_interval_ms,
            request_timeout_ms=max(config.kafka_request_timeout_ms, config.kafka_session_timeout_ms + 5000),
        )

    async def _check_dependencies(self) -> None:
        await self._deps.rows[0].check()
        await self._deps.ledger.check()
        await self._deps.dead_letter_producer.start()
        await self._deps.dead_letter_producer.check_topic(self._config.kafka_dlq_topic)

    async def _retry_until(self, stop: asyncio.Event, what: str, action: Callable[[], Awaitable[None]]) -> bool:
        """Runs ``action`` until it succeeds (True) or stop is requested (False)."""
        attempt = 0
        while not stop.is_set():
            try:
                await action()
            except (StoreUnavailable, KafkaUnavailable, KafkaError) as err:
                attempt += 1
                delay = self._retry.delay(attempt)
                logger.warning("%s not ready (%s); checking again in %.1fs", what, err, delay)
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    continue
            else:
                return True
        return False
