"""Ships finished logs to ingest in batches, off the request path.

The request path only calls :meth:`LogShipper.submit`, which never waits: the record goes into a bounded
queue that one background task drains in batches (up to ``batch_size`` records or ``flush_interval_s``).
A batch that ingest refuses with a retryable status is retried with capped exponential backoff while new
records keep queueing; when the queue is full a record is dropped, and every drop is counted and logged.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import TYPE_CHECKING

import grpc

from candela.ingest.v1 import ingest_service_pb2
from candela_runtime.errors import bad_request_violations, rpc_error_status
from candela_runtime.security import service_metadata

if TYPE_CHECKING:
    from candela.ingest.v1.ingest_service_pb2_grpc import IngestServiceAsyncStub

logger = logging.getLogger(__name__)

_MAX_BACKOFF_S = 5.0
# Statuses that say the batch itself is bad; resending it cannot help.
_RECORD_INDEX = re.compile(r"^records\[(\d+)\]")
_PERMANENT = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


class LogShipper:
    """A bounded queue of finished logs and the task that sends them to ingest."""

    def __init__(
        self,
        stub: IngestServiceAsyncStub,
        service_token: str,
        queue_size: int,
        batch_size: int,
        max_batch_bytes: int,
        flush_interval_s: float,
    ) -> None:
        self._stub = stub
        self._metadata = service_metadata(service_token)
        self._queue: asyncio.Queue[ingest_service_pb2.IngestRecord] = asyncio.Queue(queue_size)
        self._batch_size = batch_size
        self._max_batch_bytes = max_batch_bytes
        self._flush_interval_s = flush_interval_s
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.sent = 0
        self.dropped = 0
        self.rejected = 0

    def submit(self, record: ingest_service_pb2.IngestRecord) -> None:
        """Queues a finished log; never blocks. A full queue drops the record, loudly."""
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self.dropped += 1
            logger.error(
                "log queue full (%d records): dropped log %s (%d dropped so far)",
                self._queue.maxsize,
                record.record.request_id,
                self.dropped,
            )

    @property
    def pending(self) -> int:
        """Logs queued and not yet acknowledged by ingest."""
        return self._queue.qsize()

    def start(self) -> None:
        """Starts the background sender."""
        self._task = asyncio.create_task(self._run(), name="log-shipper")

    async def stop(self, timeout_s: float) -> None:
        """Sends what is queued (for at most ``timeout_s``), then stops the sender."""
        self._closing = True
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        except TimeoutError:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._queue.qsize():
            logger.error("stopping with %d logs not yet sent to ingest", self._queue.qsize())

    async def _run(self) -> None:
        while not (self._closing and self._queue.empty()):
            batch = await self._next_batch()
            if batch:
                await self._send(batch)

    async def _next_batch(self) -> list[ingest_service_pb2.IngestRecord]:
        """Up to ``batch_size`` records (or about ``max_batch_bytes``), waiting at most ``flush_interval_s``."""
        batch: list[ingest_service_pb2.IngestRecord] = []
        deadline: float | None = None
        batch_bytes = 0
        while len(batch) < self._batch_size and batch_bytes < self._max_batch_bytes:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
            elif self._closing:
                break
            else:
                now = time.monotonic()
                timeout = self._flush_interval_s if deadline is None else deadline - now
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), timeout))
                except TimeoutError:
                    if batch:
                        break
                    continue
            batch_bytes += batch[-1].ByteSize()
            if deadline is None:
                deadline = time.monotonic() + self._flush_interval_s
        return batch

    async def _send(self, batch: list[ingest_service_pb2.IngestRecord]) -> None:
        backoff = 0.1
        while batch:
            try:
                await self._stub.Ingest(
                    ingest_service_pb2.IngestRequest(records=batch), metadata=self._metadata, timeout=30.0
                )
            except grpc.aio.AioRpcError as err:
                if err.code() in _PERMANENT:
                    batch = self._without_rejected(batch, err)
                    continue
                logger.warning(
                    "ingest unavailable (%s); retrying %d logs in %.1fs", err.code().name, len(batch), backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
            else:
                self.sent += len(batch)
                return

    def _without_rejected(
        self, batch: list[ingest_service_pb2.IngestRecord], err: grpc.aio.AioRpcError
    ) -> list[ingest_service_pb2.IngestRecord]:
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
                batch[index].record.request_id if index < len(batch) else "?",
                err.details(),
            )
        self.rejected += len(bad)
        return [record for index, record in enumerate(batch) if index not in bad]
