"""Deleting an organization's expired body objects (retention), by their day prefix, with boto3 in a thread."""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ConnectTimeoutError, ReadTimeoutError

from candela_ingest.packing import BODIES_PREFIX
from candela_ingest.stalls import StallWatch
from candela_ingest.writer.errors import StoreUnavailable


class S3BodyDeleter:
    """Deletes ``bodies/<org>/<yyyy>/<mm>/<dd>/`` prefixes of days before a cutoff."""

    def __init__(
        self,
        *,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        region: str,
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 10.0,
        max_attempts: int = 2,
        stalls: StallWatch | None = None,
    ) -> None:
        self._bucket = bucket
        self._stalls = stalls if stalls is not None else StallWatch()
        self._client: Any = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region,
            # Every request has a deadline, so a stalled server fails the sweep (retried next interval).
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": max_attempts, "mode": "standard"},
                connect_timeout=connect_timeout_s,
                read_timeout=read_timeout_s,
            ),
        )

    async def delete_days_before(self, organization_id: str, cutoff: date) -> int:
        """Deletes the organization's objects of days before ``cutoff``; returns how many were deleted."""
        try:
            deleted = await asyncio.to_thread(self._delete_days_before, organization_id, cutoff)
        except (ConnectTimeoutError, ReadTimeoutError) as err:
            await self._stalls.timed_out("s3", "retention", str(err))
            raise StoreUnavailable(f"S3 retention of {organization_id} timed out: {err}") from err
        except (BotoCoreError, ClientError) as err:
            raise StoreUnavailable(f"S3 retention of {organization_id} failed: {err}") from err
        await self._stalls.answered("s3")
        return deleted

    async def check(self) -> None:
        """Raises StoreUnavailable unless the bucket answers now (the probe of a stalled S3 server)."""
        try:
            await asyncio.to_thread(self._client.head_bucket, Bucket=self._bucket)
        except (BotoCoreError, ClientError) as err:
            raise StoreUnavailable(f"S3 bucket {self._bucket} does not answer: {err}") from err

    def _children(self, prefix: str) -> list[str]:
        found: list[str] = []
        for page in self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self._bucket, Prefix=prefix, Delimiter="/"
        ):
            found.extend(entry["Prefix"] for entry in page.get("CommonPrefixes", []))
        return found

    def _delete_days_before(self, organization_id: str, cutoff: date) -> int:
        deleted = 0
        for day_prefix in self._expired_days(f"{BODIES_PREFIX}/{organization_id}/", cutoff):
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self._bucket, Prefix=day_prefix):
                keys = [{"Key": entry["Key"]} for entry in page.get("Contents", [])]
                if keys:
                    self._client.delete_objects(Bucket=self._bucket, Delete={"Objects": keys, "Quiet": True})
                    deleted += len(keys)
        return deleted

    def _expired_days(self, root: str, cutoff: date) -> list[str]:
        expired: list[str] = []
        for year in self._children(root):
            for month in self._children(year):
                for day in self._children(month):
                    parts = day.rstrip("/").split("/")[-3:]
                    try:
                        when = date(int(parts[0]), int(parts[1]), int(parts[2]))
                    except ValueError:
                        continue
                    if when < cutoff:
                        expired.append(day)
        return expired

    def close(self) -> None:
        """Releases the HTTP connections."""
        self._client.close()
