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

    async def check(self) -> None:
        """Raises unless the bucket is reachable (readiness)."""
        await asyncio.to_thread(self._client.head_bucket, Bucket=self._bucket)
