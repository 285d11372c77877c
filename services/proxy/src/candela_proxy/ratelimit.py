"""Rate limits from ``Candela-RateLimit-Policy``, counted in Redis over a sliding window.

The window is approximated the way Cloudflare and Envoy's rate limiters do: two fixed windows, the
previous one weighted by how much of it still overlaps the sliding window. Requests are counted when
admitted; cents are counted when the answer's cost is known, and a request is admitted while the spend so
far is under the quota. Limits are per organization, and within it per user or per property value
(``s=user`` / ``s=<property>``). When Redis is down the limit fails open (logged, counted).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import redis.asyncio as aioredis

from candela_proxy.headers import RateLimitPolicy
from candela_proxy.redis_store import RedisStore

_PREFIX = "candela:rl:"
# KEYS: current window, previous window. ARGV: quota, weight of previous (0..1), cost to add now, ttl.
# Returns {admitted (0/1), used (after this request, as a string), }.
_CHECK = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local previous = tonumber(redis.call('GET', KEYS[2]) or '0')
local used = current + previous * tonumber(ARGV[2])
local quota = tonumber(ARGV[1])
local add = tonumber(ARGV[3])
if used + add > quota or (add == 0 and used >= quota) then
  return {0, tostring(used)}
end
if add > 0 then
  redis.call('INCRBYFLOAT', KEYS[1], add)
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
end
return {1, tostring(used + add)}
"""


@dataclass(frozen=True)
class RateLimitDecision:
    """Whether a request may go on, and what the ``Candela-RateLimit-*`` headers say."""

    admitted: bool
    limit: int
    remaining: int
    reset_s: int
    policy: RateLimitPolicy

    def headers(self) -> dict[str, str]:
        """The response headers (IETF RateLimit fields, prefixed)."""
        return {
            "Candela-RateLimit-Limit": str(self.limit),
            "Candela-RateLimit-Remaining": str(self.remaining),
            "Candela-RateLimit-Reset": str(self.reset_s),
            "Candela-RateLimit-Policy": self.policy.header_value,
        }


class SegmentMissing(ValueError):
    """The policy segments by a user or property the request does not carry."""


def subject(policy: RateLimitPolicy, organization_id: str, user_id: str, properties: dict[str, str]) -> str:
    """Whose quota a request draws on."""
    if policy.segment == "":
        return f"{organization_id}:org"
    if policy.segment == "user":
        if not user_id:
            raise SegmentMissing("the rate-limit policy is per user (s=user) but Candela-User-Id is missing")
        return f"{organization_id}:user:{user_id}"
    value = properties.get(policy.segment)
    if value is None:
        raise SegmentMissing(
            f"the rate-limit policy is per property {policy.segment!r} but Candela-Property-{policy.segment} is missing"
        )
    return f"{organization_id}:prop:{policy.segment}:{value}"


class RateLimiter:
    """Checks and counts requests (or cents) against a policy."""

    def __init__(self, store: RedisStore) -> None:
        self._store = store
        self._check = store.client.register_script(_CHECK)

    async def admit(self, policy: RateLimitPolicy, who: str) -> RateLimitDecision | None:
        """Counts one request (request policies) or checks the spend (cents); None when Redis is down."""
        return await self._run(policy, who, 1.0 if policy.unit == "request" else 0.0)

    async def spend(self, policy: RateLimitPolicy, who: str, cost_usd: Decimal) -> None:
        """Adds an answer's cost to a cents policy's count (admitted already; may overshoot once)."""
        cents = float(cost_usd * 100)
        if policy.unit == "cents" and cents > 0:
            await self._run(policy, who, cents, force=True)

    async def _run(
        self, policy: RateLimitPolicy, who: str, amount: float, force: bool = False
    ) -> RateLimitDecision | None:
        now = time.time()
        window = int(now // policy.window_s)
        elapsed = now - window * policy.window_s
        weight = 1.0 - elapsed / policy.window_s
        base = f"{_PREFIX}{policy.unit}:{policy.window_s}:{who}:"
        quota = math.inf if force else policy.quota

        async def run(client: aioredis.Redis) -> Any:
            return await self._check(
                keys=[f"{base}{window}", f"{base}{window - 1}"],
                args=[quota if quota != math.inf else 1e18, weight, amount, policy.window_s * 2],
                client=client,
            )

        result = await self._store.call("rate_limit", run)
        if result is None:
            return None
        admitted, used = int(result[0]), float(result[1])
        return RateLimitDecision(
            admitted=bool(admitted),
            limit=policy.quota,
            remaining=max(0, math.floor(policy.quota - used)),
            reset_s=max(1, math.ceil(policy.window_s - elapsed)),
            policy=policy,
        )
