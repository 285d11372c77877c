"""The on-disk log spool: where finished logs wait, in order, while ingest is slow or down.

A directory of append-only segment files named by a growing sequence number. Each append is one batch
(a serialized ``IngestRequest``, length-prefixed) and is fsync'd before :meth:`Spool.append` returns, so
an acknowledged append survives a crash. Segments are replayed oldest first and deleted once ingest has
acknowledged every batch in them; a proxy that restarts finds them and replays them. A crash mid-append
leaves a torn tail, which the reader skips (logged). The methods block: call them from a worker thread.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger(__name__)

_LENGTH = struct.Struct(">I")
_SUFFIX = ".seg"


class Spool:
    """Segment files in ``directory``, bounded by ``max_bytes`` in total."""

    def __init__(self, directory: Path, max_bytes: int, segment_max_bytes: int = 4 * 1024 * 1024) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_max_bytes = segment_max_bytes
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._active: BinaryIO | None = None
        self._active_path: Path | None = None
        self._active_size = 0
        existing = self._segments()
        self._next_seq = int(existing[-1].stem) + 1 if existing else 1
        self._bytes = sum(path.stat().st_size for path in existing)

    @property
    def size_bytes(self) -> int:
        """Bytes on disk in all segments."""
        return self._bytes

    def segment_count(self) -> int:
        """Segment files on disk (the one being written included)."""
        return len(self._segments())

    def is_empty(self) -> bool:
        """True when nothing waits for replay."""
        return self._bytes == 0

    def append(self, batch: bytes) -> bool:
        """Appends one batch durably; False (nothing written) when the spool is full."""
        with self._lock:
            if self._bytes + len(batch) + _LENGTH.size > self.max_bytes:
                return False
            if self._active is None or self._active_size >= self.segment_max_bytes:
                self._close_active()
                self._active_path = self.directory / f"{self._next_seq:016d}{_SUFFIX}"
                self._next_seq += 1
                self._active = self._active_path.open("ab")
                self._active_size = 0
            self._active.write(_LENGTH.pack(len(batch)) + batch)
            self._active.flush()
            os.fsync(self._active.fileno())
            self._active_size += len(batch) + _LENGTH.size
            self._bytes += len(batch) + _LENGTH.size
            return True

    def oldest(self) -> Path | None:
        """The oldest segment, closing the one being written if it is the only one left."""
        with self._lock:
            segments = self._segments()
            if not segments:
                return None
            if segments[0] == self._active_path:
                self._close_active()
            return segments[0]

    def read(self, segment: Path) -> list[bytes]:
        """The batches of a closed segment, in order (a torn tail is skipped)."""
        data = segment.read_bytes()
        batches: list[bytes] = []
        offset = 0
        while offset + _LENGTH.size <= len(data):
            (length,) = _LENGTH.unpack_from(data, offset)
            start = offset + _LENGTH.size
            if start + length > len(data):
                break
            batches.append(data[start : start + length])
            offset = start + length
        if offset != len(data):
            logger.error(
                "spool segment %s has a torn tail of %d bytes (crash mid-write); skipped", segment, len(data) - offset
            )
        return batches

    def delete(self, segment: Path) -> None:
        """Removes a segment whose batches ingest has all acknowledged."""
        with self._lock:
            size = segment.stat().st_size
            segment.unlink()
            self._bytes = max(0, self._bytes - size)

    def close(self) -> None:
        """Closes the segment being written (it stays on disk for the next start)."""
        with self._lock:
            self._close_active()

    def _close_active(self) -> None:
        if self._active is not None:
            self._active.close()
        self._active = None
        self._active_path = None
        self._active_size = 0

    def _segments(self) -> list[Path]:
        return sorted(self.directory.glob(f"*{_SUFFIX}"))
