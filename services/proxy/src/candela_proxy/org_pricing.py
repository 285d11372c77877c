"""Each organization's own pricing (price overrides and model aliases, set through AuthService), cached.

Why pushed invalidation and not a lifetime. Pricing is needed for every request, so it is cached; a cache
with a lifetime (like the 5 s key cache) would keep charging an old price for that long after a change,
and "from the next request on" would not hold. So the cache lives until AuthService says the organization
changed: :class:`PricingDirectory` holds one stream (AuthService.FollowPricing) that names every
organization whose overrides or aliases changed, on any auth replica (they hear each other through
Postgres NOTIFY), and drops that organization's entry; the next request refetches it (one round trip, two
List calls in parallel), off its answer's path: the fetch starts at admission and is read only when the
log is priced, a bounded wait later (:class:`candela_proxy.record.Recorder`). Each notice is acknowledged
on the same stream once applied, and the auth replica that made a change answers it only after that
acknowledgement, so the caller's next request finds the new price however busy this proxy is. A request
that arrives after the notice never shares a fetch that began before it (:meth:`PricingDirectory.forget`
lets such a fetch finish for those already waiting on it, but not for newcomers).

When the stream is down (auth restarting, a network fault), notices may be missed: the whole cache is
dropped, entries fetched meanwhile live only :data:`UNWATCHED_TTL_S` seconds, and a new stream starts with
"anything may have changed" (which drops everything again). When pricing cannot be fetched at all, the
request is logged unpriced rather than priced without the organization's overrides.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

import grpc

from candela.auth.v1 import auth_service_pb2 as auth_pb
from candela_runtime.security import service_metadata

if TYPE_CHECKING:
    from candela.auth.v1.auth_service_pb2_grpc import AuthServiceAsyncStub

logger = logging.getLogger(__name__)

UNWATCHED_TTL_S = 5.0
"""How long an entry fetched while the watch stream is down is trusted (the key cache's lifetime)."""
WATCHED_TTL_S = 3600.0
"""A bound on an entry's life even while watched, in case a notice is lost in a way nobody saw."""
FETCH_TIMEOUT_S = 5.0
RECONNECT_DELAYS_S = (0.1, 0.5, 1.0, 2.0, 5.0)
MAX_ENTRIES = 100_000
_MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class PriceOverride:
    """An organization's prices for one (provider, model), in US dollars per million tokens."""

    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal
    cache_write_per_mtok: Decimal

    def cost(self, input_tokens: int, cache_read_tokens: int, cache_write_tokens: int, output_tokens: int) -> Decimal:
        """The exact cost; ``input_tokens`` include the cache reads and writes (as logged)."""
        uncached = max(input_tokens - cache_read_tokens - cache_write_tokens, 0)
        micro_total = (
            uncached * self.input_per_mtok
            + cache_read_tokens * self.cached_input_per_mtok
            + cache_write_tokens * self.cache_write_per_mtok
            + output_tokens * self.output_per_mtok
        )
        return micro_total / _MILLION


@dataclass(frozen=True)
class OrganizationPricing:
    """An organization's overrides by (provider, model) and aliases by model name; ``available`` is False
    when they could not be fetched (its requests are then logged unpriced)."""

    overrides: Mapping[tuple[str, str], PriceOverride] = field(default_factory=dict)
    aliases: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    available: bool = True

    @classmethod
    def from_messages(
        cls, overrides: auth_pb.ListPriceOverridesResponse, aliases: auth_pb.ListModelAliasesResponse
    ) -> OrganizationPricing:
        """From AuthService's List answers (prices are decimal strings; unset cache prices are the input's)."""
        table = {}
        for override in overrides.price_overrides:
            input_price = Decimal(override.input_price_per_mtok)
            table[(override.provider, override.model)] = PriceOverride(
                input_per_mtok=input_price,
                output_per_mtok=Decimal(override.output_price_per_mtok),
                cached_input_per_mtok=Decimal(override.cached_input_price_per_mtok)
                if override.HasField("cached_input_price_per_mtok")
                else input_price,
                cache_write_per_mtok=Decimal(override.cache_write_price_per_mtok)
                if override.HasField("cache_write_price_per_mtok")
                else input_price,
            )
        return cls(
            overrides=table,
            aliases={alias.model: (alias.target_provider, alias.target_model) for alias in aliases.model_aliases},
        )


NO_PRICING = OrganizationPricing()
"""An organization without overrides or aliases."""
PRICING_UNAVAILABLE = OrganizationPricing(available=False)
"""What :meth:`PricingDirectory.get` answers when AuthService cannot be asked, and what a log is priced
with when its organization's pricing did not arrive in time (it is then unpriced)."""


class PricingDirectory:
    """Organizations' pricing from AuthService, cached until a FollowPricing notice drops it."""

    def __init__(self, stub: AuthServiceAsyncStub, service_token: str) -> None:
        self._stub = stub
        self._metadata = service_metadata(service_token)
        self._entries: dict[str, tuple[float, OrganizationPricing]] = {}
        self._fetches: dict[str, asyncio.Task[OrganizationPricing]] = {}
        # Bumped by every notice: a fetch that began before one is answered but not kept.
        self._generation = 0
        self._watching = asyncio.Event()
        self._watch_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Starts following AuthService.FollowPricing (owned here; :meth:`close` ends it)."""
        self._watch_task = asyncio.get_running_loop().create_task(self._follow())

    async def close(self) -> None:
        """Stops the watch stream and the fetches under way."""
        for fetch in list(self._fetches.values()):
            fetch.cancel()
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
            self._watch_task = None

    async def until_watching(self) -> None:
        """Returns once the watch stream is up (entries then live until a notice drops them)."""
        await self._watching.wait()

    async def get(self, organization_id: str) -> OrganizationPricing:
        """The organization's pricing, waiting for its fetch if it is not cached (see :meth:`lookup`)."""
        found = self.lookup(organization_id)
        if isinstance(found, OrganizationPricing):
            return found
        return await asyncio.shield(found)

    def lookup(self, organization_id: str) -> OrganizationPricing | asyncio.Task[OrganizationPricing]:
        """The organization's pricing if cached, else its fetch, started now unless one is under way: fetched
        once however many requests ask at a time, in a task of its own, so a request that is cancelled (or
        stops waiting) does not cancel it for the others. A request starts it at admission and reads it only
        for its log, so the fetch runs while the provider answers (see :class:`candela_proxy.record.Recorder`).
        """
        cached = self._entries.get(organization_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        fetch = self._fetches.get(organization_id)
        if fetch is None:
            fetch = asyncio.get_running_loop().create_task(self._fetch(organization_id))
            self._fetches[organization_id] = fetch
            fetch.add_done_callback(lambda done: self._fetch_ended(organization_id, done))
        return fetch

    def forget(self, organization_id: str) -> None:
        """Drops an organization's entry ("" drops them all): what a FollowPricing notice does. A fetch under
        way may have read the old pricing: it is not kept, and a later request starts a fetch of its own."""
        self._generation += 1
        if organization_id:
            self._entries.pop(organization_id, None)
            self._fetches.pop(organization_id, None)
        else:
            self._entries.clear()
            self._fetches.clear()

    def _fetch_ended(self, organization_id: str, fetch: asyncio.Task[OrganizationPricing]) -> None:
        if self._fetches.get(organization_id) is fetch:
            del self._fetches[organization_id]
        # Read here too: the requests that started a fetch may all have stopped waiting for it.
        if not fetch.cancelled() and (error := fetch.exception()) is not None:
            logger.error("fetching the pricing of organization %s failed", organization_id, exc_info=error)

    async def _fetch(self, organization_id: str) -> OrganizationPricing:
        generation = self._generation
        try:
            overrides, aliases = await asyncio.gather(
                self._stub.ListPriceOverrides(
                    auth_pb.ListPriceOverridesRequest(organization_id=organization_id),
                    metadata=self._metadata,
                    timeout=FETCH_TIMEOUT_S,
                ),
                self._stub.ListModelAliases(
                    auth_pb.ListModelAliasesRequest(organization_id=organization_id),
                    metadata=self._metadata,
                    timeout=FETCH_TIMEOUT_S,
                ),
            )
        except grpc.aio.AioRpcError as err:
            logger.warning(
                "cannot fetch the pricing of organization %s (%s): its requests are logged unpriced",
                organization_id,
                err.code().name,
            )
            return PRICING_UNAVAILABLE
        pricing = OrganizationPricing.from_messages(overrides, aliases)
        if generation == self._generation:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            lifetime = WATCHED_TTL_S if self._watching.is_set() else UNWATCHED_TTL_S
            self._entries[organization_id] = (time.monotonic() + lifetime, pricing)
        return pricing

    async def _follow(self) -> None:
        """Follows the notices for ever, reconnecting with backoff; every (re)connection starts afresh."""
        failures = 0
        while True:
            applied: asyncio.Queue[auth_pb.FollowPricingRequest] = asyncio.Queue()
            call = self._stub.FollowPricing(queued(applied), metadata=self._metadata)
            try:
                async for notice in call:
                    # The first notice of each stream is "" (anything may have changed): from then on this
                    # proxy hears of every change, so entries may live long.
                    self.forget(notice.organization_id)
                    self._watching.set()
                    failures = 0
                    applied.put_nowait(auth_pb.FollowPricingRequest(applied_sequence=notice.sequence))
                logger.warning("the pricing watch stream ended; reconnecting")
            except grpc.aio.AioRpcError as err:
                logger.warning("the pricing watch stream failed (%s); reconnecting", err.code().name)
            finally:
                call.cancel()
            self._watching.clear()
            self.forget("")
            await asyncio.sleep(RECONNECT_DELAYS_S[min(failures, len(RECONNECT_DELAYS_S) - 1)])
            failures += 1


async def queued(messages: asyncio.Queue[auth_pb.FollowPricingRequest]) -> AsyncIterator[auth_pb.FollowPricingRequest]:
    """A request stream of what is put on ``messages``, as it is put (never ending: the call's end ends it)."""
    while True:
        yield await messages.get()
