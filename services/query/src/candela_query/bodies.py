"""Reads request and response bodies back from their packed S3 objects with ranged GETs."""

from __future__ import annotations

import asyncio
from typing import Any

import boto3
from botocore.config import Config

from candela_query.store import BodyLocation


class BodyReader:
    """Ranged reads from the bodies bucket (boto3 in worker threads, off the event loop)."""

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

    def _read(self, location: BodyLocation) -> bytes:
        last = location.offset + location.length - 1
        response = self._client.get_object(
            Bucket=self._bucket, Key=location.object_key, Range=f"bytes={location.offset}-{last}"
        )
        body: bytes = response["Body"].read()
        return body

    async def read(self, location: BodyLocation | None) -> bytes:
        """The body at ``location``; empty when there is none."""
        if location is None or location.length == 0:
            return b""
        return await asyncio.to_thread(self._read, location)

    async def read_pair(self, first: BodyLocation | None, second: BodyLocation | None) -> tuple[bytes, bytes]:
        """Both bodies of a request; one ranged GET when they sit close together in one object (ingest packs
        a request's bodies one after the other), which saves a whole S3 round trip and botocore's CPU."""
        if first is None or second is None or (covering := covering_range(first, second)) is None:
            return await asyncio.gather(self.read(first), self.read(second))
        both = await asyncio.to_thread(self._read, covering)
        return (
            both[first.offset - covering.offset :][: first.length],
            both[second.offset - covering.offset :][: second.length],
        )

    async def check(self) -> None:
        """Raises unless the bucket is reachable (readiness)."""
        await asyncio.to_thread(self._client.head_bucket, Bucket=self._bucket)


# Bytes between two bodies that one GET may read and throw away rather than making a second GET.
MAX_GAP_BYTES = 64 * 1024


def covering_range(first: BodyLocation, second: BodyLocation) -> BodyLocation | None:
    """The one range holding both bodies, when both are in the same object at most MAX_GAP_BYTES apart."""
    if first.length == 0 or second.length == 0 or first.object_key != second.object_key:
        return None
    start = min(first.offset, second.offset)
    end = max(first.offset + first.length, second.offset + second.length)
    if end - start - first.length - second.length > MAX_GAP_BYTES:
        return None
    return BodyLocation(first.object_key, start, end - start)
