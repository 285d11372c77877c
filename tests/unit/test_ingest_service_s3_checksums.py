"""Every body PUT is checked by the server: a signed SHA-256 over http, a CRC32 over https (one hash, not two)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from candela_ingest.body_store import S3BodyStore
from candela_ingest.packing import PackedObject

pytestmark = pytest.mark.unit

BODY = b"a body" * 1000


class _Captured(Exception):
    """Raised from botocore's before-send hook: the request is inspected, never sent."""

    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__("captured")
        self.headers = headers


def _put_headers(endpoint: str) -> dict[str, str]:
    store = S3BodyStore(
        endpoint=endpoint, access_key="key", secret_key="secret", bucket="bodies", region="us-east-1", max_concurrency=1
    )

    def capture(request: Any, **_: Any) -> None:
        raise _Captured(
            {
                name.lower(): value.decode() if isinstance(value, bytes) else value
                for name, value in request.headers.items()
            }
        )

    client: Any = store._client
    client.meta.events.register("before-send.s3.PutObject", capture)
    packed = PackedObject(organization_id="o", key="bodies/o/2026/01/01/x.bin", data=BODY)
    try:
        with pytest.raises(_Captured) as captured:
            client.put_object(Bucket=store.bucket, Key=packed.key, Body=packed.data)
    finally:
        store.close()
    return captured.value.headers


def test_over_http_the_body_is_signed_and_not_checksummed_again() -> None:
    headers = _put_headers("http://127.0.0.1:1")
    assert headers["x-amz-content-sha256"] == hashlib.sha256(BODY).hexdigest(), "the payload's SHA-256 is signed"
    assert not any(name.startswith("x-amz-checksum-") for name in headers)


def test_over_https_the_body_carries_a_checksum() -> None:
    headers = _put_headers("https://127.0.0.1:1")
    assert "x-amz-checksum-crc32" in headers or "x-amz-trailer" in headers
