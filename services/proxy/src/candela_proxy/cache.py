"""The response cache: answers kept in Redis, keyed by what makes two requests the same.

The key hashes the organization, ``Candela-Cache-Seed``, the method, the upstream URL (path, query and
target), the request body (less the top-level keys ``Candela-Cache-Ignore-Keys`` names) and the headers
that change an answer (``anthropic-version``, ``anthropic-beta``, ``openai-organization``,
``openai-project``). The provider key is not part of it: an organization's callers share answers, as
Helicone's cache does. Each key holds a bucket of up to ``Candela-Cache-Bucket-Max-Size`` answers: until
the bucket is full a request is a miss (and its answer is added); once full a random member is returned,
so a caller can ask for variety. Entries expire after ``Cache-Control: max-age``. Streams are stored
whole once complete and replayed as the same SSE bytes.
"""

from __future__ import annotations

import hashlib
import random
import struct
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from multidict import CIMultiDictProxy

from candela_proxy.headers import CachePolicy
from candela_proxy.redis_store import RedisStore

_VARYING_HEADERS = ("anthropic-version", "anthropic-beta", "openai-organization", "openai-project")
_PREFIX = "candela:cache:"
# Returns the bucket size while the bucket is not full (a miss), else one random member (a hit).
_LOOKUP = """
local n = redis.call('LLEN', KEYS[1])
if n < tonumber(ARGV[1]) then return n end
return redis.call('LINDEX', KEYS[1], tonumber(ARGV[2]) % n)
"""
_STORE = """
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""
_HEADER = struct.Struct(">I")


@dataclass(frozen=True)
class CachedAnswer:
    """One stored answer: enough to replay it byte for byte and to log it."""

    status: int
    content_type: str
    body: bytes
    streamed: bool
    facts: dict[str, Any]
    cost_usd: str | None

    def encode(self) -> bytes:
        """Length-prefixed JSON metadata, then the raw body."""
        meta = orjson.dumps(
            {
                "status": self.status,
                "content_type": self.content_type,
                "streamed": self.streamed,
                "facts": self.facts,
                "cost_usd": self.cost_usd,
            }
        )
        return _HEADER.pack(len(meta)) + meta + self.body

    @classmethod
    def decode(cls, data: bytes) -> CachedAnswer:
        """The inverse of :meth:`encode`."""
        (size,) = _HEADER.unpack_from(data)
        meta = orjson.loads(data[_HEADER.size : _HEADER.size + size])
        return cls(
            status=int(meta["status"]),
            content_type=str(meta["content_type"]),
            body=data[_HEADER.size + size :],
            streamed=bool(meta["streamed"]),
            facts=dict(meta["facts"]),
            cost_usd=meta["cost_usd"],
        )


def cache_key(
    organization_id: str,
    policy: CachePolicy,
    method: str,
    upstream_url: str,
    body: bytes,
    headers: CIMultiDictProxy[str],
) -> str:
    """The Redis key of a request's bucket."""
    digest = hashlib.sha256()
    for part in (organization_id, policy.seed, method, upstream_url):
        digest.update(part.encode())
        digest.update(b"\0")
    for name in _VARYING_HEADERS:
        digest.update(headers.get(name, "").encode())
        digest.update(b"\0")
    digest.update(_without_keys(body, policy.ignore_keys) if policy.ignore_keys else body)
    return _PREFIX + digest.hexdigest()


def _without_keys(body: bytes, keys: tuple[str, ...]) -> bytes:
    """The JSON object ``body`` less the top-level ``keys`` (as Helicone does); any other body as it is."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(document, dict):
        return body
    return orjson.dumps({key: value for key, value in document.items() if key not in keys})


class ResponseCache:
    """Looks answers up and stores them, through :class:`RedisStore` (off while Redis is down)."""

    def __init__(self, store: RedisStore) -> None:
        self._store = store
        self._lookup = store.client.register_script(_LOOKUP)
        self._save = store.client.register_script(_STORE)

    async def lookup(self, key: str, policy: CachePolicy) -> CachedAnswer | None:
        """A stored answer when the bucket is full, else None (a miss; also when Redis is down)."""

        async def run(client: aioredis.Redis) -> Any:
            return await self._lookup(
                keys=[key], args=[policy.bucket_max_size, random.randrange(1 << 30)], client=client
            )

        found = await self._store.call("cache", run)
        if not isinstance(found, bytes):
            return None
        return CachedAnswer.decode(found)

    async def store(self, key: str, policy: CachePolicy, answer: CachedAnswer) -> None:
        """Adds an answer to the key's bucket and restarts its time to live."""

        async def run(client: aioredis.Redis) -> Any:
            return await self._save(
                keys=[key], args=[answer.encode(), policy.bucket_max_size, policy.max_age_s], client=client
            )

        await self._store.call("cache", run)
