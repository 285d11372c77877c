"""The proxy's write-ahead log: a finished record is on disk before its client sees the end of the answer.

Records are appended in groups: every record handed over while the previous fsync ran shares the next
one (group commit), so the fsync rate stays near one per few milliseconds whatever the request rate, and
a request waits about one fsync. Each record is framed as (length, CRC-32, bytes); a crash mid-write
leaves a torn or garbled tail, which the reader detects and skips (logged).

A segment file is deleted once every record in it is *settled*: acknowledged by ingest, written to the
(equally durable) spool, or dropped by a counted bound. A proxy that starts adopts the segments a killed
predecessor left and sends their records like new ones; ingest and the writers are idempotent by
organization and request id, so a record acknowledged just before the kill and resent is stored once.

:class:`WriteAheadLog` does the file work and blocks (called from a worker thread, one call at a time);
:class:`GroupCommit` is the asyncio side: it collects records, runs one write+fsync per group in its own
thread (:class:`DiskThread`), and tracks which segments still hold unsettled records.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import queue
import struct
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Generic, TypeVar

from candela_proxy import metrics

logger = logging.getLogger(__name__)

_FRAME = struct.Struct(">II")  # length, CRC-32 of the bytes
_SUFFIX = ".wal"
# A group commit slower than this releases its requests (their logs travel in memory only) and, until the
# disk answers, new logs bypass the write-ahead log: a stalled disk must not hang every answer.
STALL_S = 2.0

Item = TypeVar("Item")
Result = TypeVar("Result")


class DiskThread:
    """One thread that runs blocking file calls in order, each answered on the event loop as a future.

    The write-ahead log makes a call per group commit (hundreds a second under load). ``asyncio.to_thread``
    costs ~32 us of CPU a call (an executor work item, a concurrent future wrapped into an asyncio one, a
    copied context); a queue to a thread of its own and ``call_soon_threadsafe`` back cost ~19 us (measured
    on uvloop here). The thread is a daemon: a disk that never answers must not keep the process from exiting
    (the stall logic in :class:`GroupCommit` has already released the requests by then).
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._calls: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def run(self, function: Callable[..., Result], *args: Any) -> asyncio.Future[Result]:
        """Queues ``function(*args)``; the future has its result or exception (starts the thread on first use)."""
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
            self._thread.start()
        assert self._loop is not None
        future: asyncio.Future[Result] = self._loop.create_future()
        self._calls.put((function, args, future))
        return future

    def stop(self) -> None:
        """Lets the thread end once the calls already queued are done."""
        if self._thread is not None:
            self._calls.put(None)
            self._thread = None

    def _work(self) -> None:
        loop = self._loop
        assert loop is not None
        while (call := self._calls.get()) is not None:
            function, args, future = call
            answer: functools.partial[None]
            try:
                result = function(*args)
            except Exception as err:  # noqa: BLE001 (not swallowed: relayed to the awaiting task)
                answer = functools.partial(_fail, future, err)
            else:
                answer = functools.partial(_succeed, future, result)
            try:
                loop.call_soon_threadsafe(answer)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return


def _succeed(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[Any], err: BaseException) -> None:
    if not future.done():
        future.set_exception(err)


class WriteAheadLog:
    """Append-only segment files in ``directory``; a segment rotates at ``segment_max_bytes``."""

    def __init__(self, directory: Path, segment_max_bytes: int = 16 * 1024 * 1024) -> None:
        self.directory = directory
        self.segment_max_bytes = segment_max_bytes
        directory.mkdir(parents=True, exist_ok=True)
        existing = sorted(directory.glob(f"*{_SUFFIX}"))
        self.leftovers: list[Path] = existing
        """Segments a previous process left: their records may never have reached ingest."""
        self._next_seq = int(existing[-1].stem) + 1 if existing else 1
        self._active: BinaryIO | None = None
        self.active_seq = 0
        """The segment being appended to (0: none open)."""
        self.active_bytes = 0
        self.sealed: set[int] = set()
        """Segments of this process no longer appended to, not yet deleted."""

    def write(self, payloads: Sequence[bytes]) -> int:
        """Appends one group of records and fsyncs it; returns the segment that holds them.

        On an error the segment being written is sealed (its tail may be torn), so the next group
        starts a clean one.
        """
        if self._active is None or self.active_bytes >= self.segment_max_bytes:
            self._open_next()
        assert self._active is not None
        data = b"".join(_FRAME.pack(len(payload), zlib.crc32(payload)) + payload for payload in payloads)
        try:
            self._active.write(data)
            self._active.flush()
            os.fdatasync(self._active.fileno())
        except OSError:
            self._seal()
            raise
        self.active_bytes += len(data)
        return self.active_seq

    def collect(self, deletable: Sequence[int], truncate_active: bool) -> None:
        """Deletes sealed segments whose records are all settled; empties the active one if all of it is."""
        for seq in deletable:
            self._path(seq).unlink(missing_ok=True)
            self.sealed.discard(seq)
        if truncate_active and self._active is not None:
            # No fsync: if a crash undid the truncation, the records would only be resent (harmless).
            self._active.truncate(0)
            self.active_bytes = 0

    def close(self, settled: Callable[[int], bool]) -> None:
        """Seals the active segment and deletes every segment whose records are all settled."""
        self._seal()
        self.collect([seq for seq in sorted(self.sealed) if settled(seq)], truncate_active=False)

    @staticmethod
    def read(segment: Path) -> list[bytes]:
        """The records of a segment, in order, up to the first torn or damaged one (logged)."""
        data = segment.read_bytes()
        records: list[bytes] = []
        offset = 0
        while offset + _FRAME.size <= len(data):
            length, checksum = _FRAME.unpack_from(data, offset)
            start = offset + _FRAME.size
            payload = data[start : start + length]
            if len(payload) != length or zlib.crc32(payload) != checksum:
                break
            records.append(payload)
            offset = start + length
        if offset != len(data):
            logger.error(
                "write-ahead log %s ends with %d torn or damaged bytes (crash mid-write); skipped",
                segment,
                len(data) - offset,
            )
        return records

    def adopt(self, segment: Path) -> int:
        """Takes a leftover segment in as one of this process's sealed ones; returns its number."""
        self.leftovers.remove(segment)
        seq = int(segment.stem)
        self.sealed.add(seq)
        return seq

    def _open_next(self) -> None:
        self._seal()
        seq = self._next_seq
        self._next_seq += 1
        self._active = self._path(seq).open("ab")
        self.active_seq = seq
        self.active_bytes = 0
        # The new name must survive a power loss too, not only the bytes written under it.
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def _seal(self) -> None:
        if self._active is not None:
            self._active.close()
            self.sealed.add(self.active_seq)
        self._active = None
        self.active_seq = 0
        self.active_bytes = 0

    def _path(self, seq: int) -> Path:
        return self.directory / f"{seq:016d}{_SUFFIX}"


class GroupCommit(Generic[Item]):
    """Collects records, writes and fsyncs each group in a worker thread, hands them on once durable.

    ``durable(segment, items)`` runs on the event loop after a group's fsync (``segment`` 0 when the
    write failed: the items then travel in memory only); ``serialize`` turns an item into its bytes, in
    the worker thread. ``min_interval_s`` spaces fsyncs (0: the next starts as soon as the last ended).
    """

    def __init__(
        self,
        wal: WriteAheadLog,
        serialize: Callable[[Item], bytes],
        durable: Callable[[int, list[Item]], None],
        min_interval_s: float = 0.0,
    ) -> None:
        self._wal = wal
        self._serialize = serialize
        self._durable = durable
        self._min_interval_s = min_interval_s
        self._items: list[Item] = []
        self._group: asyncio.Future[None] | None = None
        self._wake = asyncio.Event()
        self._unsettled: dict[int, int] = {}
        self._housekeeping = False
        self._closing = False
        self._stalled = False
        self._task: asyncio.Task[None] | None = None
        self._disk = DiskThread("log-wal-disk")
        self.failure = ""
        """Why the last group could not be written ("" when it was)."""

    def add(self, item: Item) -> asyncio.Future[None]:
        """Queues ``item`` for the next group; the future is done once it is durable (or known not to be)."""
        if self._stalled:
            self._durable(0, [item])
            bypassed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            bypassed.set_result(None)
            return bypassed
        self._items.append(item)
        if self._group is None:
            self._group = asyncio.get_running_loop().create_future()
            self._wake.set()
        return self._group

    def settle(self, segment: int, count: int = 1) -> None:
        """``count`` records of ``segment`` no longer need it (acknowledged, spooled or dropped)."""
        if not segment:
            return
        left = self._unsettled[segment] - count
        self._unsettled[segment] = left
        if left == 0:
            self._housekeeping = True
            self._wake.set()

    def adopt(self, segment: int, count: int) -> None:
        """Tracks a segment a previous process left, holding ``count`` records to settle."""
        self._unsettled[segment] = count
        if count == 0:
            self._housekeeping = True
            self._wake.set()

    def start(self) -> None:
        """Starts the committer task."""
        self._task = asyncio.create_task(self._run(), name="log-wal-commit")

    async def stop(self) -> None:
        """Writes what is still collected and ends the committer; segments stay until :meth:`close`."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        self._disk.stop()

    def close(self) -> None:
        """Deletes the segments whose records are all settled (blocking; after :meth:`stop`)."""
        self._disk.stop()
        self._wal.close(lambda seq: self._unsettled.get(seq, 0) == 0)

    async def _run(self) -> None:
        last_commit = 0.0
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._items:
                wait = last_commit + self._min_interval_s - time.monotonic()
                if wait > 0 and not self._closing:
                    await asyncio.sleep(wait)
                last_commit = time.monotonic()
                await self._commit()
            if self._housekeeping:
                await self._collect()
            if self._closing and not self._items:
                return

    async def _commit(self) -> None:
        items, group = self._items, self._group
        self._items, self._group = [], None
        started = time.perf_counter()
        write = self._disk.run(self._write, items)
        if not (await asyncio.wait({write}, timeout=STALL_S))[0]:
            await self._outlast_stall(write, items, group)
            return
        try:
            segment = write.result()
        except Exception as err:
            # Not only OSError: whatever stops a group from being written must still release its
            # requests and hand the records on, or those requests would hang.
            segment = 0
            if not self.failure:
                logger.exception("write-ahead log failing: logs are kept in memory only until it recovers")
            self.failure = f"{type(err).__name__}: {err}"
            metrics.WAL_ERRORS.inc()
        else:
            if self.failure:
                logger.warning("write-ahead log writes again (after: %s)", self.failure)
            self.failure = ""
            self._unsettled[segment] = self._unsettled.get(segment, 0) + len(items)
            metrics.WAL_COMMITS.observe(time.perf_counter() - started)
        self._durable(segment, items)
        # Waiters share the future, so each awaits it shielded; cancelled only if someone did not.
        if group is not None and not group.done():
            group.set_result(None)

    async def _outlast_stall(
        self, write: asyncio.Future[int], items: list[Item], group: asyncio.Future[None] | None
    ) -> None:
        """Releases a stalled group's requests, lets new logs bypass the WAL, and waits for the disk."""
        self._stalled = True
        self.failure = f"fsync stalled for over {STALL_S:g}s"
        logger.error("write-ahead log %s: logs are kept in memory only until the disk answers", self.failure)
        metrics.WAL_ERRORS.inc()
        # What was collected meanwhile goes too: those requests have waited as long.
        items, self._items = items + self._items, []
        if self._group is not None and not self._group.done():
            self._group.set_result(None)
        self._group = None
        self._durable(0, items)
        if group is not None and not group.done():
            group.set_result(None)
        try:
            await write
        except Exception:
            logger.exception("write-ahead log write failed after stalling")
        else:
            # Its records were written but never counted: they are in memory, and their segment may go.
            self.failure = ""
            logger.warning("write-ahead log writes again after a stall")
        finally:
            self._stalled = False

    def _write(self, items: list[Item]) -> int:
        return self._wal.write([self._serialize(item) for item in items])

    async def _collect(self) -> None:
        self._housekeeping = False
        # Only this task writes, so the counts read here cannot grow under the collection.
        deletable = [seq for seq in self._wal.sealed if self._unsettled.get(seq, 0) == 0]
        active = self._wal.active_seq
        truncate = bool(active) and self._unsettled.get(active, 0) == 0 and self._wal.active_bytes > 0
        if not deletable and not truncate:
            return
        try:
            await self._disk.run(self._wal.collect, deletable, truncate)
        except OSError:
            # Left for the next collection; at worst a later start resends records already acknowledged.
            logger.exception("write-ahead log: could not delete settled segments")
            return
        for seq in deletable:
            self._unsettled.pop(seq, None)
