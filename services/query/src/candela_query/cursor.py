"""Opaque, signed page cursors: the last row's sort key and request id, bound to the sort and filter.

A cursor is ``base64url(json) . base64url(hmac)``. The HMAC (keyed from the service token) means a
client cannot forge a position, and the digest of the filter and sort inside it means a cursor from one
query is refused by another (INVALID_ARGUMENT) instead of silently returning the wrong page. Pages are
keyset pages (``(sort key, request id)`` strictly after the last row), so rows inserted meanwhile never
shift or repeat what a reader has already seen.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass

MAX_CURSOR_LENGTH = 1024


class CursorError(ValueError):
    """The cursor is malformed, forged, or belongs to another query."""


@dataclass(frozen=True)
class Position:
    """Where the previous page ended: the sort column's value (int, or decimal text) and the request id."""

    sort_value: int | str
    request_id: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class CursorCodec:
    """Signs and checks cursors with a key derived from a secret."""

    def __init__(self, secret: str) -> None:
        self._key = hashlib.sha256(b"candela-query-cursor\0" + secret.encode()).digest()

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:16]

    def encode(self, position: Position, query_digest: str) -> str:
        """The cursor of ``position`` for the query whose digest is ``query_digest``."""
        payload = json.dumps(
            {"v": position.sort_value, "i": position.request_id, "q": query_digest}, separators=(",", ":")
        ).encode()
        return f"{_b64(payload)}.{_b64(self._sign(payload))}"

    def decode(self, cursor: str, query_digest: str) -> Position:
        """The position in ``cursor``; CursorError unless it is intact and from the same query."""
        if len(cursor) > MAX_CURSOR_LENGTH or cursor.count(".") != 1:
            raise CursorError("is not a cursor returned by this API")
        body, signature = cursor.split(".")
        try:
            payload = _unb64(body)
            presented = _unb64(signature)
        except (binascii.Error, ValueError) as error:
            raise CursorError("is not a cursor returned by this API") from error
        if not hmac.compare_digest(presented, self._sign(payload)):
            raise CursorError("is not a cursor returned by this API (bad signature)")
        try:
            data = json.loads(payload)
            sort_value, request_id, digest = data["v"], data["i"], data["q"]
        except (ValueError, KeyError, TypeError) as error:
            raise CursorError("is not a cursor returned by this API") from error
        if digest != query_digest:
            raise CursorError("belongs to a query with another filter or sort; start again without a cursor")
        if not isinstance(sort_value, int | str) or not isinstance(request_id, str):
            raise CursorError("is not a cursor returned by this API")
        return Position(sort_value, request_id)
