"""The bodies bucket: packed objects uploaded with boto3 in worker threads, off the event loop."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ConnectTimeoutError, ReadTimeoutError

from candela_ingest.packing import OBJECT_CONTENT_TYPE, PackedObject
from candela_runtime.errors import Unavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")

PROBE_KEY = "_candela/probe"
"""Where the write probe of a stalled S3 server goes (overwritten each time; retention never looks there)."""


class S3Stalled(Unavailable):
    """S3 ran past botocore's connect or read deadline on every attempt: the server is stalled."""


class S3BodyStore:
    """Puts packed body objects into one bucket; boto3 is blocking, so every call runs in a worker thread."""

    def __init__(
        self,
        *,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        region: str,
        max_concurrency: int,
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 10.0,
        max_attempts: int = 2,
    ) -> None:
        self._bucket = bucket
        # Every PUT is checked end to end by the server, with one hash of the 2 MiB body, not two: over plain
        # http botocore signs the body's SHA-256 (always), so the CRC32 it would add too is dropped (~0.6 ms
        # of CPU per object); over https the body is not signed and the CRC32 is what the server checks.
        checksums = "when_required" if endpoint.lower().startswith("http:") else "when_supported"
        self._executor = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="s3-bodies")
        self._client: Any = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region,
            config=Config(
                s3={"addressing_style": "path"},
                # Bounded, so a stalled server frees the worker thread within about
                # max_attempts x (connect + read timeout) rather than holding it (and the pool) for minutes.
                retries={"max_attempts": max_attempts, "mode": "standard"},
                connect_timeout=connect_timeout_s,
                read_timeout=read_timeout_s,
                max_pool_connections=max_concurrency,
                request_checksum_calculation=checksums,
            ),
        )

    @property
    def bucket(self) -> str:
        """The bucket bodies go to."""
        return self._bucket

    async def _call(self, what: str, function: Callable[..., T], **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(function, **kwargs))
        except (ConnectTimeoutError, ReadTimeoutError) as err:
            raise S3Stalled(f"S3 {what} timed out: {err}") from err
        except (BotoCoreError, ClientError) as err:
            raise Unavailable(f"S3 {what} failed: {err}") from err

    async def put_objects(self, objects: Sequence[PackedObject]) -> None:
        """Uploads ``objects`` concurrently; returns once every one is stored, else raises UNAVAILABLE."""
        await asyncio.gather(*(self._put(packed) for packed in objects))

    async def _put(self, packed: PackedObject) -> None:
        await self._call(
            f"PUT {packed.key}",
            self._client.put_object,
            Bucket=self._bucket,
            Key=packed.key,
            Body=packed.data,
            ContentType=OBJECT_CONTENT_TYPE,
        )

    async def probe_write(self) -> None:
        """Raises UNAVAILABLE unless S3 stores a small object now (``_candela/probe``, outside ``bodies/``): a
        stalled server may still answer reads, e.g. when it has no writable volume left."""
        await self._call("PUT probe", self._client.put_object, Bucket=self._bucket, Key=PROBE_KEY, Body=b"probe")

    async def check(self) -> None:
        """Raises UNAVAILABLE unless the bucket is reachable with our credentials (readiness)."""
        await self._call(f"HEAD bucket {self._bucket}", self._client.head_bucket, Bucket=self._bucket)

    def close(self) -> None:
        """Waits for in-flight uploads, then releases the threads and connections."""
        self._executor.shutdown(wait=True)
        self._client.close()
