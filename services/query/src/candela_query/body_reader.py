"""Reads request and response bodies back from their packed S3 objects with ranged GETs.

A body written since bodies are compressed lives in a zstd frame of its object (``frame_length`` set): the
frame is read whole and decompressed, and the body is a slice of its content. A body written before is a
plain byte range of its object and reads as it always did. A request's two bodies usually share a frame or
sit in adjacent ones, so both come from one GET.
"""

from __future__ import annotations

import asyncio
from typing import Any

import boto3
import zstandard
from botocore.config import Config

from candela_query.row_reads import BodyLocation

# Bytes between two bodies' stored ranges that one GET may read and throw away rather than making a second GET.
MAX_GAP_BYTES = 64 * 1024
MAX_SHARED_FRAME_BYTES = 1024 * 1024
"""What a frame holding more than one body may decompress to (the bound BodyRef's documentation promises;
ingest closes frames at 64 KiB): a frame declaring more content than this and than the body it holds is
refused rather than decompressed."""


class CorruptBodyObject(Exception):
    """A packed object's bytes are not the zstd frame a body's location names (no frame, a frame that does
    not decode, or one whose content is too small or too large for it). Our fault: the caller gets INTERNAL."""


class BodyReader:
    """Ranged reads from the bodies bucket (boto3 and decompression in worker threads, off the event loop)."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str, bucket: str, region: str) -> None:
        self._bucket = bucket
        self._client: Any = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=30,
                max_pool_connections=16,
            ),
        )

    def _get(self, object_key: str, start: int, length: int) -> bytes:
        response = self._client.get_object(
            Bucket=self._bucket, Key=object_key, Range=f"bytes={start}-{start + length - 1}"
        )
        data: bytes = response["Body"].read()
        return data

    def _read_one(self, location: BodyLocation) -> bytes:
        stored = self._get(location.object_key, location.stored_start, location.stored_length)
        return body_from(location, stored, location.stored_start)

    def _read_both(self, first: BodyLocation, second: BodyLocation, covering: BodyLocation) -> tuple[bytes, bytes]:
        return pair_from(
            first, second, self._get(covering.object_key, covering.offset, covering.length), covering.offset
        )

    async def read(self, location: BodyLocation | None) -> bytes:
        """The body at ``location``; empty when there is none."""
        if location is None or location.length == 0:
            return b""
        return await asyncio.to_thread(self._read_one, location)

    async def read_pair(self, first: BodyLocation | None, second: BodyLocation | None) -> tuple[bytes, bytes]:
        """Both bodies of a request; one ranged GET when they sit close together in one object (ingest packs
        a request's bodies one after the other, mostly into one frame), which saves a whole S3 round trip and
        botocore's CPU, and decompresses a frame they share once."""
        if first is None or second is None or (covering := covering_range(first, second)) is None:
            return await asyncio.gather(self.read(first), self.read(second))
        return await asyncio.to_thread(self._read_both, first, second, covering)

    async def check(self) -> None:
        """Raises unless the bucket is reachable (readiness)."""
        await asyncio.to_thread(self._client.head_bucket, Bucket=self._bucket)


def covering_range(first: BodyLocation, second: BodyLocation) -> BodyLocation | None:
    """The one byte range of an object holding both bodies' stored bytes (their frames, or the bodies
    themselves when not compressed), when both are in the same object at most MAX_GAP_BYTES apart."""
    if first.length == 0 or second.length == 0 or first.object_key != second.object_key:
        return None
    first_end = first.stored_start + first.stored_length
    second_end = second.stored_start + second.stored_length
    if max(first.stored_start, second.stored_start) - min(first_end, second_end) > MAX_GAP_BYTES:
        return None
    start = min(first.stored_start, second.stored_start)
    return BodyLocation(first.object_key, start, max(first_end, second_end) - start)


def body_from(location: BodyLocation, data: bytes, data_start: int) -> bytes:
    """The body at ``location`` out of ``data``, the object's bytes from ``data_start`` on (a ranged read
    covering the location's stored range)."""
    if not location.frame_length:
        return data[location.offset - data_start :][: location.length]
    content = frame_content(_stored_bytes(location, data, data_start), location.offset + location.length)
    return _slice(content, location)


def pair_from(first: BodyLocation, second: BodyLocation, data: bytes, data_start: int) -> tuple[bytes, bytes]:
    """Both bodies out of one ranged read covering both (see :func:`body_from`); a frame they share is
    decompressed once."""
    if first.frame_length and (first.frame_offset, first.frame_length) == (second.frame_offset, second.frame_length):
        needed = max(first.offset + first.length, second.offset + second.length)
        content = frame_content(_stored_bytes(first, data, data_start), needed)
        return _slice(content, first), _slice(content, second)
    return body_from(first, data, data_start), body_from(second, data, data_start)


def frame_content(frame: bytes, needed: int) -> bytes:
    """The content of ``frame``, one whole zstd frame of which the first ``needed`` bytes are wanted.

    Decompression is bounded by the size the frame declares, which must cover ``needed`` and be no more
    than one body or :data:`MAX_SHARED_FRAME_BYTES` allow; the frame must decode to exactly that size and
    end exactly where ``frame`` does. Anything else raises :class:`CorruptBodyObject`.
    """
    try:
        declared = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as err:
        raise CorruptBodyObject(f"no zstd frame header: {err}") from err
    if declared < needed or declared > max(needed, MAX_SHARED_FRAME_BYTES):
        # -1 (a frame that does not declare its size, which ingest never writes) is below any body's end.
        raise CorruptBodyObject(f"a zstd frame declares {declared} bytes of content; {needed} are needed")
    try:
        return zstandard.ZstdDecompressor().decompress(frame, allow_extra_data=False)
    except zstandard.ZstdError as err:
        raise CorruptBodyObject(f"a zstd frame of {len(frame)} bytes does not decode: {err}") from err


def _stored_bytes(location: BodyLocation, data: bytes, data_start: int) -> bytes:
    """The bytes of the location's frame out of ``data`` (the object's bytes from ``data_start`` on)."""
    start = location.stored_start - data_start
    stored = data[start : start + location.stored_length]
    if len(stored) != location.stored_length:
        raise CorruptBodyObject(
            f"{location.object_key} ends inside a frame: {len(stored)} of its {location.stored_length} bytes read"
        )
    return stored


def _slice(content: bytes, location: BodyLocation) -> bytes:
    return content[location.offset : location.offset + location.length]
