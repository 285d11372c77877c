"""Ships finished logs to ingest in batches, off the request path, spooling to disk when ingest is away.

The request path only calls :meth:`LogShipper.submit`, which never waits: the record goes into a bounded
queue that one background task drains in batches (up to ``batch_size`` records, ``max_batch_bytes`` or
``flush_interval_s``). A batch ingest does not acknowledge within ``send_timeout_s`` (down, or slow) is
appended to the on-disk :class:`~candela_proxy.spool.Spool`; while the spool holds anything, new batches
go there too, so logs reach ingest in the order they finished. A second task replays the spool oldest
first, with capped backoff, and deletes each segment once ingest has acknowledged all of it; on start it
replays what a previous process left. Records ingest rejects as invalid are dropped singly (logged).
Nothing is dropped silently: a full queue or a full spool is counted, logged and exported as metrics.

Durability: with a write-ahead log (:mod:`candela_proxy.wal`), :meth:`LogShipper.submit` first appends the
record there (group commit) and returns a future the request path awaits before the client sees the end
of its answer; the record enters the queue once it is on disk, and its WAL segment is deleted once every
record in it is settled (acknowledged, spooled or dropped by a counted bound). A proxy killed with SIGKILL
loses nothing a client was answered for: on start, what the WAL still holds is queued and sent again
(ingest and the writers are idempotent by organization and request id).

A full spool drops the batch that did not fit (counted), or, with ``hold_when_spool_full``, keeps it in
memory (and in the WAL) until the spool has room or ingest takes it; either way :attr:`LogShipper.at_risk`
says so until every log queued behind the one that did not fit has a place too, for the health check and for
refusing new requests. (Clearing it as soon as the replay frees some room would let the backlog refill the
spool and set it again: a proxy that turns healthy and refuses the next request.)

Tracing: each record carries its request's W3C context (``IngestRecord.trace_context``, kept through the
spool since the spool stores the records as they are). Sending a batch is one span whose parent is the
first traced record's request and which links to the other requests (the OpenTelemetry messaging
conventions for batches), so a request alone is one trace from the client to the writer. A batch with no
traced record (the proxy does not trace) makes no span of its own.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path
from typing import NamedTuple

import grpc
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from candela.ingest.v1 import ingest_service_pb2
from candela_proxy import metrics
from candela_proxy.spool import Spool
from candela_proxy.wal import GroupCommit, WriteAheadLog
from candela_runtime.errors import bad_request_violations, rpc_error_status
from candela_runtime.security import service_metadata

logger = logging.getLogger(__name__)
tracer = trace.get_tracer("candela.proxy")

_MAX_BACKOFF_S = 2.0
_DRAIN_EVERY_S = 0.02
_RECORD_INDEX = re.compile(r"^records\[(\d+)\]")
# Statuses that say the batch itself is bad; resending it cannot help.
_PERMANENT = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
_W3C = TraceContextTextMapPropagator()
# A batch span links to at most this many requests besides its parent (span links are kept in memory).
MAX_LINKS = 128
_INGEST = ingest_service_pb2.DESCRIPTOR.services_by_name["IngestService"].methods_by_name["Ingest"]
INGEST_METHOD = f"/{_INGEST.containing_service.full_name}/{_INGEST.name}"
# IngestRequest.records is field 1, length-delimited: its key byte.
_RECORDS_KEY = b"\x0a"


class _Log(NamedTuple):
    """A finished log as queued: the record, its serialized bytes, and the WAL segment holding it (0: none)."""

    record: ingest_service_pb2.IngestRecord
    payload: bytes
    """``record`` serialized once, when it was handed over: the bytes the write-ahead log, the spool and the
    Ingest call carry, so a log is never serialized again (nor copied into an IngestRequest message)."""
    segment: int


def _varint(value: int) -> bytes:
    """``value`` as a protobuf base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def request_bytes(payloads: list[bytes]) -> bytes:
    """The serialized ``IngestRequest`` of already serialized records: each one framed as field 1, which is
    byte for byte what ``IngestRequest(records=...).SerializeToString()`` makes."""
    return b"".join(_RECORDS_KEY + _varint(len(payload)) + payload for payload in payloads)


def batch_trace(batch: list[ingest_service_pb2.IngestRecord]) -> tuple[Context, list[trace.Link]] | None:
    """The parent context and links of the span that ships ``batch``; None when no record is traced.

    The parent is the first traced record's request, each other distinct request is a link.
    """
    seen: set[tuple[int, int]] = set()
    requests: list[trace.SpanContext] = []
    for item in batch:
        if not item.trace_context:
            continue
        span_context = trace.get_current_span(_W3C.extract(item.trace_context)).get_span_context()
        identity = (span_context.trace_id, span_context.span_id)
        if not span_context.is_valid or identity in seen:
            continue
        seen.add(identity)
        requests.append(span_context)
        if len(requests) > MAX_LINKS:
            break
    if not requests:
        return None
    parent = trace.set_span_in_context(trace.NonRecordingSpan(requests[0]), Context())
    return parent, [trace.Link(span_context) for span_context in requests[1:]]


class IngestAway(Exception):
    """Ingest did not acknowledge a batch in time (unreachable, failing or slow)."""


class LogShipper:
    """A bounded queue of finished logs, the task that sends them, and the spool replayer."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        service_token: str,
        queue_size: int,
        batch_size: int,
        max_batch_bytes: int,
        flush_interval_s: float,
        spool_dir: Path,
        spool_max_bytes: int = 1024 * 1024 * 1024,
        send_timeout_s: float = 5.0,
        wal_dir: Path | None = None,
        wal_commit_interval_s: float = 0.0,
        hold_when_spool_full: bool = False,
    ) -> None:
        # Ingest is called with the request already serialized (see request_bytes), so no serializer.
        self._ingest = channel.unary_unary(
            INGEST_METHOD, request_serializer=None, response_deserializer=ingest_service_pb2.IngestResponse.FromString
        )
        self._metadata = service_metadata(service_token)
        self._queue: asyncio.Queue[_Log] = asyncio.Queue(queue_size)
        self._batch_size = batch_size
        self._max_batch_bytes = max_batch_bytes
        self._flush_interval_s = flush_interval_s
        self._send_timeout_s = send_timeout_s
        self._spool = Spool(spool_dir, spool_max_bytes)
        self._spooled = asyncio.Event()
        self._spool_full = False
        self._in_hand = False  # the sender holds a batch taken from the queue and not yet placed
        self._room_freed = False  # the replay deleted a segment since the spool last refused a batch
        self._hold_when_spool_full = hold_when_spool_full
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.sent = 0
        self.dropped = 0
        self.rejected = 0
        self._commits: GroupCommit[tuple[ingest_service_pb2.IngestRecord, bytes]] | None = None
        self._wal: WriteAheadLog | None = None
        self._recovery: asyncio.Task[None] | None = None
        if wal_dir is not None:
            wal = self._wal = WriteAheadLog(wal_dir)
            self._commits = GroupCommit(wal, _payload_of, self._committed, wal_commit_interval_s)
        if not self._spool.is_empty():
            logger.info("log spool holds %d bytes from before; replaying", self._spool.size_bytes)
            self._spooled.set()
        self._export_spool_gauges()

    def submit(self, record: ingest_service_pb2.IngestRecord) -> asyncio.Future[None] | None:
        """Hands over a finished log; never blocks. A full queue drops the record, loudly.

        With the write-ahead log on, returns a future done once the record is on disk (shared by a whole
        group: await it through ``asyncio.shield``); None when there is nothing to wait for.
        """
        encoded = (record, record.SerializeToString())
        if self._commits is None:
            self._enqueue(0, [encoded])
            return None
        return self._commits.add(encoded)

    def _enqueue(self, segment: int, records: list[tuple[ingest_service_pb2.IngestRecord, bytes]]) -> None:
        """Queues records with their bytes (held in WAL ``segment``, 0 for none) for the sender."""
        for record, payload in records:
            try:
                self._queue.put_nowait(_Log(record, payload, segment))
            except asyncio.QueueFull:
                self.dropped += 1
                metrics.LOGS_DROPPED.labels("queue_full").inc()
                logger.error(
                    "log queue full (%d records): dropped log %s (%d dropped so far)",
                    self._queue.maxsize,
                    record.record.request_id,
                    self.dropped,
                )
                self._settle([_Log(record, payload, segment)])

    def _committed(self, segment: int, records: list[tuple[ingest_service_pb2.IngestRecord, bytes]]) -> None:
        """A write-ahead log group is on disk (``segment``), or failed to be (0): queue its records."""
        self._enqueue(segment, records)
        self._export_risk()

    @property
    def at_risk(self) -> str:
        """Why a new log could not be kept right now; "" when it could."""
        if self._spool_full:
            return f"log spool full ({self._spool.size_bytes} of {self._spool.max_bytes} bytes) while ingest is away"
        if self._commits is not None and self._commits.failure:
            return f"write-ahead log failing ({self._commits.failure})"
        return ""

    @property
    def pending(self) -> int:
        """Logs in memory, not yet acknowledged by ingest nor spooled."""
        return self._queue.qsize()

    @property
    def spool_bytes(self) -> int:
        """Bytes waiting in the on-disk spool."""
        return self._spool.size_bytes

    def start(self) -> None:
        """Starts the sender, the spool replayer and the write-ahead log's committer."""
        self._tasks = [
            asyncio.create_task(self._run(), name="log-shipper"),
            asyncio.create_task(self._replay(), name="log-spool-replay"),
        ]
        if self._commits is not None:
            self._commits.start()
        if self._wal is not None and self._wal.leftovers:
            self._recovery = asyncio.create_task(self._resend_leftovers(), name="log-wal-recovery")

    async def stop(self, timeout_s: float) -> None:
        """Sends (or spools) what is queued within ``timeout_s``, then stops both tasks.

        What is still unsettled then stays in the write-ahead log, for the next start to resend.
        """
        if self._recovery is not None:
            self._recovery.cancel()
            await asyncio.gather(self._recovery, return_exceptions=True)
        if self._commits is not None:
            await self._commits.stop()  # the last group enters the queue before the sender may finish
        self._closing = True
        if not self._tasks:
            return
        sender, replayer = self._tasks
        try:
            await asyncio.wait_for(asyncio.shield(sender), timeout_s)
        except TimeoutError:
            sender.cancel()
        replayer.cancel()
        await asyncio.gather(sender, replayer, return_exceptions=True)
        self._spool.close()
        if self._commits is not None:
            await asyncio.to_thread(self._commits.close)
        if self._queue.qsize():
            logger.error("stopping with %d logs neither sent nor spooled", self._queue.qsize())
        if not self._spool.is_empty():
            logger.warning(
                "stopping with %d bytes of logs in the spool; replayed on next start", self._spool.size_bytes
            )

    async def _run(self) -> None:
        while not (self._closing and self._queue.empty()):
            batch = await self._next_batch()
            metrics.LOG_QUEUE_DEPTH.set(self._queue.qsize())
            if not batch:
                continue
            self._in_hand = True
            # Once sent, spooled or dropped (counted), the write-ahead log no longer needs them; a stop
            # past its grace cancels this task before that, and they stay there for the next start.
            if self._spool.is_empty():
                try:
                    await self._send(batch)
                    self._placed()
                    self._settle(batch)
                    continue
                except IngestAway as err:
                    logger.warning("ingest away (%s): spooling %d logs to disk", err, len(batch))
            await self._to_spool(batch)
            self._placed()
            self._settle(batch)

    def _placed(self) -> None:
        """The batch in hand was sent, spooled or dropped (counted)."""
        self._in_hand = False
        self._end_risk_if_over()

    def _end_risk_if_over(self) -> None:
        """Clears "spool full" once the replay has freed room and no log waits for a place behind the refused one.

        Waiting means in hand or queued. An empty spool ends it whatever is queued: the sender then sends
        straight to ingest (the replay emptied it, so ingest is back), and a queue that never empties under
        steady load does not keep the proxy unhealthy.
        """
        if not self._spool_full or self._in_hand:
            return
        if self._spool.is_empty() or (self._room_freed and self._queue.empty()):
            self._spool_full = False
            self._export_risk()

    def _settle(self, batch: list[_Log]) -> None:
        if self._commits is None:
            return
        for log in batch:
            self._commits.settle(log.segment)

    async def _to_spool(self, batch: list[_Log]) -> None:
        """Appends a batch to the spool; when it is full, drops the batch (counted) or, holding, waits for room."""
        payload = request_bytes([log.payload for log in batch])
        backoff = 0.05
        while not await asyncio.to_thread(self._spool.append, payload):
            self._spool_full = True
            self._room_freed = False
            self._export_risk()
            if not self._hold_when_spool_full:
                self.dropped += len(batch)
                metrics.LOGS_DROPPED.labels("spool_full").inc(len(batch))
                logger.error(
                    "log spool full (%d bytes): dropped %d logs (%d dropped so far)",
                    self._spool.max_bytes,
                    len(batch),
                    self.dropped,
                )
                await asyncio.to_thread(self._export_spool_gauges)
                return
            # Held (new requests are refused meanwhile): the spool frees room as it replays, or, once it is
            # empty, ingest may take the batch directly (a batch larger than the whole spool, say).
            if self._spool.is_empty():
                try:
                    await self._send(batch)
                    return
                except IngestAway:
                    pass
            logger.warning("log spool full: holding %d logs until it has room; next try in %.2fs", len(batch), backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_S)
        metrics.LOGS_SPOOLED.inc(len(batch))
        self._spooled.set()
        await asyncio.to_thread(self._export_spool_gauges)

    async def _replay(self) -> None:
        """Sends spooled segments oldest first; deletes each once all of it is acknowledged."""
        backoff = 0.05
        while True:
            await self._spooled.wait()
            segment = await asyncio.to_thread(self._spool.oldest)
            if segment is None:
                self._spooled.clear()
                continue
            batches = await asyncio.to_thread(self._spool.read, segment)
            index = 0
            while index < len(batches):
                request = ingest_service_pb2.IngestRequest.FromString(batches[index])
                try:
                    await self._send([_Log(record, record.SerializeToString(), 0) for record in request.records])
                except IngestAway as err:
                    logger.info("spool replay waiting for ingest (%s); next try in %.2fs", err, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _MAX_BACKOFF_S)
                    continue
                backoff = 0.05
                index += 1
            await asyncio.to_thread(self._spool.delete, segment)
            self._room_freed = True
            self._end_risk_if_over()
            await asyncio.to_thread(self._export_spool_gauges)
            if self._spool.is_empty():
                logger.info("log spool replayed; sending to ingest directly again")

    async def _next_batch(self) -> list[_Log]:
        """Up to ``batch_size`` records (or about ``max_batch_bytes``), waiting at most ``flush_interval_s``.

        Waits once for the first record, then drains what has queued every few milliseconds: one timer
        per batch, not one per record (this task shares the event loop with the request path).
        """
        batch: list[_Log] = []
        if self._queue.empty():
            if self._closing:
                return batch
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), self._flush_interval_s))
            except TimeoutError:
                return batch
        batch_bytes = len(batch[0].payload) if batch else 0
        deadline = time.monotonic() + self._flush_interval_s
        while True:
            while not self._queue.empty() and len(batch) < self._batch_size and batch_bytes < self._max_batch_bytes:
                queued = self._queue.get_nowait()
                batch.append(queued)
                batch_bytes += len(queued.payload)
            if len(batch) >= self._batch_size or batch_bytes >= self._max_batch_bytes or self._closing:
                return batch
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return batch
            await asyncio.sleep(min(remaining, _DRAIN_EVERY_S))

    async def _send(self, batch: list[_Log]) -> None:
        """Sends one batch, in the trace of its first traced request; raises :class:`IngestAway` when ingest
        does not acknowledge it."""
        traced = batch_trace([log.record for log in batch])
        if traced is None:
            await self._call_ingest(batch)
            return
        parent, links = traced
        with tracer.start_as_current_span(
            "send ingest",
            context=parent,
            kind=trace.SpanKind.PRODUCER,
            links=links,
            attributes={"messaging.operation.type": "send", "messaging.batch.message_count": len(batch)},
        ):
            await self._call_ingest(batch)

    async def _call_ingest(self, batch: list[_Log]) -> None:
        """The Ingest call itself (in whatever span is current), dropping records ingest rejects."""
        while batch:
            try:
                await self._ingest(
                    request_bytes([log.payload for log in batch]),
                    metadata=self._metadata,
                    timeout=self._send_timeout_s,
                )
            except grpc.aio.AioRpcError as err:
                if err.code() in _PERMANENT:
                    batch = self._without_rejected(batch, err)
                    continue
                raise IngestAway(err.code().name) from None
            self.sent += len(batch)
            metrics.LOGS_SENT.inc(len(batch))
            return

    async def _resend_leftovers(self) -> None:
        """Sends what a killed predecessor left in the write-ahead log, like any new log.

        Each leftover segment is adopted (it stays on disk until every record in it is acknowledged,
        spooled or dropped by a counted bound) and its records join the queue, waiting for room rather
        than dropping: a leftover larger than the whole spool still reaches ingest. A resend of a record
        ingest took just before the kill is harmless (idempotent by organization and request id).
        """
        assert self._wal is not None
        assert self._commits is not None
        for segment in list(self._wal.leftovers):
            payloads = await asyncio.to_thread(WriteAheadLog.read, segment)
            seq = self._wal.adopt(segment)
            self._commits.adopt(seq, len(payloads))
            if payloads:
                logger.warning("write-ahead log held %d logs of a stopped process; resending them", len(payloads))
            metrics.LOGS_RECOVERED.inc(len(payloads))
            for payload in payloads:
                await self._queue.put(_Log(ingest_service_pb2.IngestRecord.FromString(payload), payload, seq))

    def _export_risk(self) -> None:
        metrics.LOGS_AT_RISK.set(1 if self.at_risk else 0)

    def _export_spool_gauges(self) -> None:
        """Sets the spool's gauges; counting its segments lists a directory, so the loop calls it in a thread."""
        metrics.SPOOL_BYTES.set(self._spool.size_bytes)
        metrics.SPOOL_SEGMENTS.set(self._spool.segment_count())

    def _without_rejected(self, batch: list[_Log], err: grpc.aio.AioRpcError) -> list[_Log]:
        """Drops (loudly) the records ingest named as invalid and keeps the rest; all of them if it named none."""
        status = rpc_error_status(err)
        bad = {
            int(match.group(1))
            for violation in (bad_request_violations(status) if status is not None else [])
            if (match := _RECORD_INDEX.match(violation.field))
        }
        if not bad or err.code() != grpc.StatusCode.INVALID_ARGUMENT:
            bad = set(range(len(batch)))
        for index in sorted(bad):
            logger.error(
                "ingest rejected log %s: %s",
                batch[index].record.record.request_id if index < len(batch) else "?",
                err.details(),
            )
        self.rejected += len(bad)
        metrics.LOGS_REJECTED.inc(len(bad))
        return [record for index, record in enumerate(batch) if index not in bad]


def _payload_of(encoded: tuple[ingest_service_pb2.IngestRecord, bytes]) -> bytes:
    """What the write-ahead log stores of a handed-over log: its bytes, serialized once at submit."""
    return encoded[1]
