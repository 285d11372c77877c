"""Redis for the response cache and rate limits, degrading gracefully when Redis is down.

Every call is time-boxed. A failure is logged (once per outage, not per request), counted in
``candela_proxy_redis_errors`` and makes callers skip Redis for ``retry_after_s``: the cache is off and
rate limits fail open until Redis answers again. The request path never fails because Redis did.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from candela_proxy import metrics

logger = logging.getLogger(__name__)

T = TypeVar("T")


class RedisStore:
    """A Redis client plus the proxy's "is Redis usable right now" circuit breaker."""

    def __init__(self, url: str, timeout_s: float = 0.25, retry_after_s: float = 2.0) -> None:
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, max_connections=256
        )
        self._retry_after_s = retry_after_s
        self._down_until = 0.0
        self._outage_logged = False

    @property
    def available(self) -> bool:
        """False while a recent failure keeps callers away."""
        return time.monotonic() >= self._down_until

    async def call(self, feature: str, operation: Callable[[aioredis.Redis], Awaitable[T]]) -> T | None:
        """Runs ``operation``; None (logged and counted) when Redis is unavailable or fails."""
        if not self.available:
            metrics.REDIS_ERRORS.labels(feature).inc()
            return None
        try:
            result = await operation(self.client)
        except (RedisError, OSError, TimeoutError) as err:
            metrics.REDIS_ERRORS.labels(feature).inc()
            self._down_until = time.monotonic() + self._retry_after_s
            if not self._outage_logged:
                self._outage_logged = True
                logger.error(
                    "redis unavailable (%s: %s): cache off and rate limits failing open until it answers",
                    type(err).__name__,
                    err,
                )
            return None
        if self._outage_logged:
            self._outage_logged = False
            logger.info("redis answers again: cache and rate limits back on")
        return result

    async def close(self) -> None:
        """Closes the connection pool."""
        await self.client.aclose()
