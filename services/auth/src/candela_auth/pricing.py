"""Per-organization pricing: price overrides and model aliases, their validation, and change notices.

Prices are US dollars per million tokens, read and written as decimal strings and stored as Postgres
numeric: never a float anywhere, so "0.075" stays exactly 0.075.

From the next request on. The proxy caches an organization's pricing (it is needed for every request, and
a fetch per request would cost a round trip, ~1.4 ms). A cache with a lifetime would keep an old price for
that lifetime, so instead every change is pushed: a write commits together with ``pg_notify`` on
:data:`NOTIFY_CHANNEL`, every auth replica LISTENs on it and forwards the organization's id to the proxies
following it (AuthService.FollowPricing), which drop that organization's cached pricing and acknowledge the
notice on the same stream. The replica that made the change also forwards it itself, and answers only once
every proxy following it has acknowledged (:meth:`PricingWatchers.applied`, bounded by
:data:`DELIVERY_TIMEOUT_S`): the change is in force on each proxy before the caller learns it is done, so the
caller's next request is priced the new way, however busy the proxy. (Waiting only until the notice was
sent, as the older WatchPricing does, left a window: a request could overtake the notice into a busy proxy.)
A proxy following another replica hears of it through NOTIFY, a few milliseconds later: the guarantee is
strict where proxies follow the replica that was written to, as in the single-auth stack, and within
milliseconds otherwise. A proxy whose stream breaks drops its whole cache and refetches on demand (the first
notice of a new stream says "anything may have changed"), so a notice missed while disconnected cannot leave
an old price behind.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from genai_prices import Usage, calc_price

from candela.auth.v1 import auth_service_pb2 as pb
from candela_runtime.errors import Violations
from candela_runtime.limits import MAX_MODEL_NAME_LENGTH

logger = logging.getLogger(__name__)

NOTIFY_CHANNEL = "candela_pricing"
"""The Postgres NOTIFY channel that carries the id of an organization whose pricing changed."""
MAX_PRICE_PER_MTOK = Decimal(1_000_000)
MAX_PRICE_FRACTION_DIGITS = 6
"""A millionth of a dollar per million tokens: a token then costs a whole number of 1e-12 dollars, and the
logs keep costs to 12 decimal places (Postgres numeric(30, 12), ClickHouse Decimal), so every cost an
override gives is stored exactly."""
MAX_PROVIDER_LENGTH = 100
_PRICE = re.compile(r"^[0-9]+(\.[0-9]+)?$")
# A provider id ("openai") or a custom target's host[:port] as the proxy logs it ("api.groq.com",
# "127.0.0.1:8000", "[::1]:8000").
_PROVIDER = re.compile(r"^[a-z0-9\[][a-z0-9._:\[\]-]*$")
DELIVERY_TIMEOUT_S = 2.0
"""How long a pricing write waits for the watch streams to send its notice before it answers."""
WATCH_QUEUE_SIZE = 1024
"""Notices a watcher may fall behind by; past that it is sent "anything may have changed" instead."""


def parse_price(violations: Violations, field: str, text: str, *, required: bool = True) -> Decimal | None:
    """A price per million tokens from its decimal string; violations for anything else (a float's
    exponent, a sign, too many digits)."""
    if not text:
        if required:
            violations.add(field, 'is required: US dollars per million tokens as a decimal string, e.g. "2.5"')
        return None
    if not _PRICE.match(text):
        violations.add(field, f'must be a non-negative decimal string such as "2.5" or "0.075", got {text[:40]!r}')
        return None
    try:
        price = Decimal(text)
    except InvalidOperation:  # pragma: no cover - the pattern admits only decimals
        violations.add(field, f"is not a decimal: {text[:40]!r}")
        return None
    fraction = text.partition(".")[2]
    if len(fraction) > MAX_PRICE_FRACTION_DIGITS:
        violations.add(field, f"must have at most {MAX_PRICE_FRACTION_DIGITS} digits after the point")
    elif price > MAX_PRICE_PER_MTOK:
        violations.add(field, f"must be at most {MAX_PRICE_PER_MTOK} dollars per million tokens")
    return price


def check_provider(violations: Violations, field: str, provider: str) -> None:
    """A provider as the proxy logs it: an id or a custom target's host[:port], in lowercase."""
    if not provider:
        violations.add(field, 'is required, e.g. "openai"')
    elif len(provider) > MAX_PROVIDER_LENGTH or not _PROVIDER.match(provider):
        violations.add(
            field,
            f'must be a provider as logged, such as "openai" or "api.groq.com" (lowercase), got {provider[:40]!r}',
        )


def check_model(violations: Violations, field: str, model: str) -> None:
    """A model name the proxy could log."""
    if not model:
        violations.add(field, "is required")
    elif len(model) > MAX_MODEL_NAME_LENGTH:
        violations.add(field, f"must be at most {MAX_MODEL_NAME_LENGTH} characters")
    elif "\x00" in model:
        violations.add(field, "must not contain NUL (U+0000) characters")


@functools.lru_cache(maxsize=1024)
def genai_prices_knows(provider: str, model: str) -> bool:
    """Whether genai-prices has a price for ``model`` at ``provider`` (an alias must point at one)."""
    try:
        calc_price(Usage(input_tokens=0, output_tokens=0), model_ref=model, provider_id=provider)
    except LookupError:
        return False
    return True


def price_text(price: Decimal) -> str:
    """A stored price as its decimal string (as written: "2.50" stays "2.50")."""
    return format(price, "f")


def notice_payload(replica_id: str, organization_id: uuid.UUID) -> str:
    """The NOTIFY payload of a change: the replica that made it (which has told its own watchers already)
    and the organization."""
    return f"{replica_id} {organization_id}"


@dataclass(eq=False)
class _Watcher:
    """One stream's queue of (sequence, organization id) notices, and how far its proxy has applied them."""

    queue: asyncio.Queue[tuple[int, str]] = field(default_factory=lambda: asyncio.Queue(WATCH_QUEUE_SIZE))
    applied: int = 0
    _waiting: list[tuple[int, asyncio.Future[None]]] = field(default_factory=list)

    def put(self, sequence: int, organization_id: str) -> None:
        """Queues a notice; one too far behind is told "anything may have changed" instead."""
        if self.queue.full():
            while not self.queue.empty():
                self.queue.get_nowait()
            organization_id = ""
        self.queue.put_nowait((sequence, organization_id))

    def applied_up_to(self, sequence: int) -> None:
        """The proxy has applied every notice up to ``sequence``: releases whoever waits for them."""
        self.applied = max(self.applied, sequence)
        for wanted, future in self._waiting:
            if wanted <= self.applied and not future.done():
                future.set_result(None)
        # Done ones go, released or given up on (a change that stopped waiting cancels its future), so a
        # proxy that never acknowledges does not collect one future per change.
        self._waiting = [(wanted, future) for wanted, future in self._waiting if not future.done()]

    def until_applied(self, sequence: int) -> asyncio.Future[None]:
        """Done once the proxy has applied notice ``sequence`` (or the stream is gone)."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((sequence, future))
        self.applied_up_to(self.applied)
        return future

    def gone(self) -> None:
        """The stream ended: its proxy drops everything it cached, so nobody needs to wait for it."""
        self.applied_up_to(1 << 63)


class PricingWatchers:
    """The pricing streams of this replica (FollowPricing, and the older WatchPricing), each fed the ids of
    organizations whose pricing changed."""

    def __init__(self) -> None:
        self.replica_id = uuid.uuid4().hex
        """This replica's name in the NOTIFY payloads, so it skips the notices of its own changes."""
        self._watchers: set[_Watcher] = set()
        self._sequence = 0

    def notify(self, organization_id: str) -> int:
        """Tells every watcher; returns the notice's sequence (for :meth:`applied`)."""
        self._sequence += 1
        for watcher in self._watchers:
            watcher.put(self._sequence, organization_id)
        return self._sequence

    async def applied(self, sequence: int, timeout_s: float = DELIVERY_TIMEOUT_S) -> None:
        """Waits until every watcher has applied notice ``sequence``: a FollowPricing proxy has said so, a
        WatchPricing stream has sent it. So a change is in force on the proxies before the caller hears it is
        done. A watcher that stalls longer than ``timeout_s`` is logged and not waited for (its proxy
        refetches everything when its stream breaks)."""
        pending = [watcher.until_applied(sequence) for watcher in self._watchers]
        if not pending:
            return
        try:
            await asyncio.wait_for(asyncio.gather(*pending), timeout_s)
        except TimeoutError:
            logger.warning("a pricing watcher did not apply a change notice within %.1f s", timeout_s)

    def on_postgres_notice(self, _connection: object, _pid: int, _channel: str, payload: object) -> None:
        """An asyncpg listener callback for :data:`NOTIFY_CHANNEL`: tells the watchers of changes made through
        other replicas (this replica's own were told as they were made)."""
        replica_id, _, organization_id = str(payload).partition(" ")
        if replica_id != self.replica_id:
            self.notify(organization_id)

    async def follow(
        self, acknowledgements: AsyncIterator[pb.FollowPricingRequest]
    ) -> AsyncIterator[pb.FollowPricingResponse]:
        """One FollowPricing stream: notices out, beginning with "anything may have changed"; the proxy's
        acknowledgements in (read by a task of their own, as they come)."""
        watcher = _Watcher()
        reader = asyncio.get_running_loop().create_task(self._read_acknowledgements(watcher, acknowledgements))
        # A stream cancelled under the reader fails its read: nothing to report, the stream is ending anyway.
        reader.add_done_callback(lambda task: task.cancelled() or task.exception())
        self._watchers.add(watcher)
        try:
            yield pb.FollowPricingResponse(sequence=self._sequence)
            while True:
                sequence, organization_id = await watcher.queue.get()
                yield pb.FollowPricingResponse(organization_id=organization_id, sequence=sequence)
        finally:
            self._watchers.discard(watcher)
            watcher.gone()
            reader.cancel()

    @staticmethod
    async def _read_acknowledgements(
        watcher: _Watcher, acknowledgements: AsyncIterator[pb.FollowPricingRequest]
    ) -> None:
        async for acknowledgement in acknowledgements:
            watcher.applied_up_to(acknowledgement.applied_sequence)

    async def watch(self) -> AsyncIterator[pb.WatchPricingResponse]:
        """One WatchPricing stream (no acknowledgements: a notice counts as applied once sent)."""
        watcher = _Watcher()
        self._watchers.add(watcher)
        try:
            yield pb.WatchPricingResponse()
            while True:
                sequence, organization_id = await watcher.queue.get()
                yield pb.WatchPricingResponse(organization_id=organization_id)
                # gRPC asks for the next message once it has sent this one: now it is delivered.
                watcher.applied_up_to(sequence)
        finally:
            self._watchers.discard(watcher)
            watcher.gone()
